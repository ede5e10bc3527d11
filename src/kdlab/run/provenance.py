"""Where a run came from: the code that ran it, the overrides that made it, and whether it was a smoke run."""

from __future__ import annotations

import subprocess
from functools import cache
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from kdlab.identity import code_versions

# Trainer keys that cut a run short: such a run is a smoke test, whatever its numbers say.
SMOKE_TRAINER_KEYS = ("fast_dev_run", "limit_train_batches", "limit_val_batches", "limit_test_batches", "max_steps")


def smoke_reasons(cfg: DictConfig) -> list[str]:
    """Why this run is a smoke run (empty for a real one): the shortening keys it sets."""
    reasons = []
    for key in SMOKE_TRAINER_KEYS:
        value = OmegaConf.select(cfg, f"trainer.{key}", default=None)
        unset = value is None or value is False or (key == "max_steps" and value == -1)
        full = key.startswith("limit_") and value == 1.0 and isinstance(value, float)
        if not unset and not full:
            reasons.append(f"trainer.{key}={value}")
    return reasons


@cache
def git_state(folder: str) -> dict[str, Any]:
    """The commit of the checkout kdlab runs from, and whether it had uncommitted changes."""
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=folder, capture_output=True, text=True, timeout=5, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=folder,
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return {"git": None}  # an installed wheel: the version numbers say what ran
    return {"git": commit, "dirty": bool(dirty)}


def code_state() -> dict[str, Any]:
    return {**code_versions(), **git_state(str(Path(__file__).resolve().parent))}


def job_overrides() -> tuple[list[str], list[str], list[str]]:
    """(this job's overrides, the keys its sweep varied, the overrides every job of the sweep shared).

    A sweep's own overrides are in `<sweep folder>/multirun.yaml`, written by the launcher before the
    first job; the ones with several values (`a=1,2`) or a search space (Optuna params) were swept.
    """
    from hydra.core.hydra_config import HydraConfig
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.types import RunMode

    if not HydraConfig.initialized():
        return [], [], []
    hydra_cfg = HydraConfig.get()
    task = list(hydra_cfg.overrides.task)
    if hydra_cfg.mode != RunMode.MULTIRUN:
        return task, [], []
    sweep_file = Path(hydra_cfg.sweep.dir) / "multirun.yaml"
    sweep_overrides = list(OmegaConf.load(sweep_file).hydra.overrides.task) if sweep_file.is_file() else task
    parsed = OverridesParser.create().parse_overrides(sweep_overrides)
    swept = [o.get_key_element() for o in parsed if o.is_sweep_override()]
    searched = OmegaConf.select(OmegaConf.create(OmegaConf.to_container(hydra_cfg.sweeper)), "params") or {}
    swept += [key for key in searched if key not in swept]
    fixed = [text for o, text in zip(parsed, sweep_overrides, strict=True) if not o.is_sweep_override()]
    fixed = [text for text in fixed if text.split("=", 1)[0].lstrip("+~") not in swept]
    return task, swept, fixed
