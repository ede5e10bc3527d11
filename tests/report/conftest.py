"""Fixtures of hand-made sweep folders (see sweep_builders.py); no training."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from sweep_builders import COMMON, GRID, KL, TEST_ACC, VAL_ACC, distill_record, write_job

from kdlab.record import RunRecord


@pytest.fixture
def make_job() -> Callable[[Path, list[str], RunRecord | None], Path]:
    return write_job


@pytest.fixture
def grid_sweep(tmp_path: Path) -> Path:
    """2 temperatures x 3 seeds, all finished, plus job 6 (temperature 4) that never wrote its record."""
    sweep = tmp_path / "multirun" / "2026-01-01_00-00-00"
    for job, (temp, seed) in enumerate(GRID):
        # jobs end out of order under a parallel launcher: the first three saw 2 scratch runs,
        # the last three only 1; the report must quote the baseline of the most runs
        seen = {"mean": 0.94, "std": 0.004, "runs": 2, "seeds": [0, 1]}
        baseline = seen if job < 3 else {"mean": 0.938, "std": 0.0, "runs": 1, "seeds": [0]}
        overrides = [*COMMON, f"distill.temperature={temp}", f"seed={seed}"]
        record = distill_record(overrides, seed, TEST_ACC[job], VAL_ACC[job], KL[job], baseline=baseline)
        write_job(sweep / str(job), overrides, record)
    write_job(sweep / "6", [*COMMON, "distill.temperature=4", "seed=0"], None)  # crashed
    return sweep


@pytest.fixture
def troubled_sweep(tmp_path: Path) -> Path:
    """A short sweep (`trainer.max_epochs=2`) where things went wrong, and no scratch baseline anywhere.

    0, 1: temperature 1, fine, with a KL of 5e-05 (YAML 1.1 reads `5e-05` as a string)
    2:    temperature 8, diverged: every metric NaN, written as null
    3:    temperature 8, fine
    4:    temperature 4, never wrote its record (killed)
    """
    sweep = tmp_path / "short"
    common = ["experiment=distill_mlp", "trainer.max_epochs=2"]
    jobs = [  # temperature, seed, test acc, val acc, KL
        (1, 0, 0.95, 0.955, 5e-05),
        (1, 1, 0.96, 0.965, 5e-05),
        (8, 0, 0.5, 0.5, 0.1),
        (8, 1, 0.93, 0.94, 0.25),
    ]
    for job, (temp, seed, test_acc, val_acc, kl) in enumerate(jobs):
        overrides = [*common, f"distill.temperature={temp}", f"seed={seed}"]
        record = distill_record(overrides, seed, test_acc, val_acc, kl, fixed=common)
        if job == 2:
            record.status = "diverged"
            record.message = "train/loss became NaN at epoch 0, step 17"
            record.metrics = {key: float("nan") for key in record.metrics}  # written as null
        write_job(sweep / str(job), overrides, record)
    write_job(sweep / "4", [*common, "distill.temperature=4", "seed=0"], None)
    return sweep
