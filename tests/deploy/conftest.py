"""Fixtures: hand-made run folders (see deploy_runs.py), one of them exported once per session."""

from __future__ import annotations

from pathlib import Path

import pytest
from deploy_runs import Nets, tiny_nets, write_distill_run, write_teacher_cache


@pytest.fixture(scope="session")
def nets(mnist_dir: Path) -> Nets:
    return tiny_nets(mnist_dir)


@pytest.fixture
def teacher_cache(tmp_path: Path, nets: Nets, mnist_dir: Path) -> Path:
    return write_teacher_cache(tmp_path / "teachers" / "abc123", nets, mnist_dir)


@pytest.fixture
def distill_run(tmp_path: Path, teacher_cache: Path, nets: Nets, mnist_dir: Path) -> Path:
    return write_distill_run(tmp_path / "run", nets, mnist_dir, teacher_cache / "teacher.safetensors")


@pytest.fixture(scope="session")
def shipped_run(tmp_path_factory: pytest.TempPathFactory, nets: Nets, mnist_dir: Path) -> Path:
    """A distillation run exported once (both formats, --quick timing). Read it; copy it to change it."""
    from kdlab.deploy import export_run
    from kdlab.deploy.speed import QUICK

    root = tmp_path_factory.mktemp("shipped")
    teacher = write_teacher_cache(root / "teachers" / "abc123", nets, mnist_dir)
    run = write_distill_run(root / "run", nets, mnist_dir, teacher / "teacher.safetensors")
    export_run(run, settings=QUICK)
    return run
