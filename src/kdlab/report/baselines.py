"""What a distilled student is judged against: its teacher, and the same student trained from scratch.

A distillation run looks up its scratch baseline when it ends (`scratch_baseline`) and keeps it in its
record; the report quotes those. Where no job found one, the report says so and gives the command that
trains it: the scratch experiment the distillation experiment builds on, with the sweep's student-recipe
overrides.
"""

from __future__ import annotations

import os
import shlex
from dataclasses import dataclass
from typing import Any

import yaml

from kdlab.config import CONFIG_DIR
from kdlab.record import RunRecord, find_records
from kdlab.report.aggregate import SEED_KEY, mean_std
from kdlab.report.load import Job, is_number

BASELINE_SEEDS = "0,1,2"
# Overrides that say how to distil, where the sweep goes or how brief a run is, not what the student
# learns: left out of the scratch command (its recipe key must match the distilled student's).
NOT_STUDENT_RECIPE = frozenset(
    ("experiment", SEED_KEY, "module", "teacher", "distill", "loss", "hparams_search", "hydra", "name", "debug")
    + ("optimized_metric", "ckpt_path", "train", "test", "trainer.fast_dev_run")
)


def scratch_baseline(log_dir: str | os.PathLike, student_key: str) -> dict[str, Any] | None:
    """Test accuracy of the same student trained from scratch: mean and sample std, one run per seed, and each
    seed's accuracy (`by_seed`, keyed by the seed as text, as JSON keys are), so that a distilled run can be
    compared with the scratch run of its own seed.

    Only healthy, full, trained runs count (no smoke runs, no evaluations, nothing diverged), and a
    seed run twice counts once (its latest run), so repeating a seed cannot shrink the std.
    """
    records = [r for _, r in find_records(log_dir) if isinstance(r, RunRecord) and r.counts_as_baseline()]
    latest: dict[Any, RunRecord] = {}
    for record in sorted(records, key=lambda r: r.finished_at, reverse=True):  # each seed's latest run only
        if record.identity.get("student") == student_key:
            latest.setdefault(record.seed, record)
    if not latest:
        return None
    seeds = sorted(latest, key=lambda s: (s is None, s))
    mean, std = mean_std([latest[seed].metrics["test/acc"] for seed in seeds])
    by_seed = {str(seed): latest[seed].metrics["test/acc"] for seed in seeds}
    return {"mean": mean, "std": std, "runs": len(latest), "seeds": seeds, "by_seed": by_seed}


@dataclass
class Baseline:
    mean: float
    std: float
    runs: int
    seeds: list
    params: int | None  # of the student, for the accuracy-vs-parameters plot
    by_seed: dict[str, float]  # str(seed) -> test acc: what a distilled run of that seed is paired with


@dataclass
class References:
    teacher_acc: float | None  # mean over the finished jobs
    teacher_params: int | None
    baselines: dict[str, Baseline]  # student recipe key -> the baseline seen by the most runs
    missing: dict[str, str]  # student recipe key of distilled students without one -> the command to train it


def references(jobs: list[Job]) -> References:
    """Jobs that ended later may have seen more scratch runs, so per student the baseline of the most runs wins."""
    finished = [job for job in jobs if job.finished]
    teacher = mean_std([v for v in (job.metric("test/teacher_acc") for job in finished) if v is not None])
    teacher_params = next((p for p in (job.param("teacher") for job in finished) if p is not None), None)
    baselines: dict[str, Baseline] = {}
    missing: dict[str, str] = {}
    distilled = [job for job in jobs if job.record is not None and job.record.is_distillation]
    for job in distilled:
        found, key = job.record.baseline, job.record.identity.get("student") or "unknown"
        if not (isinstance(found, dict) and is_number(found.get("mean"))):
            continue
        runs = int(found["runs"]) if is_number(found.get("runs")) else 0
        std = float(found["std"]) if is_number(found.get("std")) else 0.0
        if key not in baselines or runs > baselines[key].runs:
            seeds = list(found.get("seeds") or [])
            by_seed = found.get("by_seed") if isinstance(found.get("by_seed"), dict) else {}
            by_seed = {str(seed): float(acc) for seed, acc in by_seed.items() if is_number(acc)}
            baselines[key] = Baseline(float(found["mean"]), std, runs, seeds, job.param("student"), by_seed)
    for job in distilled:
        key = job.record.identity.get("student") or "unknown"
        if key not in baselines and key not in missing:
            missing[key] = scratch_command(job)
    return References(teacher[0] if teacher else None, teacher_params, baselines, missing)


# -- the command that trains a missing baseline ------------------------------------------------------


def _defaults(experiment: str) -> list:
    try:
        defaults = yaml.safe_load((CONFIG_DIR / "experiment" / f"{experiment}.yaml").read_text()) or {}
        defaults = defaults.get("defaults", [])
    except (OSError, yaml.YAMLError, AttributeError):
        return []
    return defaults if isinstance(defaults, list) else []


def _ancestors(experiment: str) -> list[str]:
    """The experiments it builds on (the plain names in its defaults list), nearest first, each once."""
    found = [experiment]
    for current in found:  # grows while it is walked: breadth first
        found += [d for d in _defaults(current) if isinstance(d, str) and d != "_self_" and d not in found]
    return found[1:]


def _distils(experiment: str) -> bool:
    return any(
        isinstance(d, dict) and d.get("override /module") == "distill"
        for name in (experiment, *_ancestors(experiment))
        for d in _defaults(name)
    )


def scratch_experiment(name: str) -> str | None:
    """The experiment that trains the student of distillation experiment `name` alone, if it builds on one.

    distill_mlp starts from student_scratch_mlp and only swaps the module: that is its baseline.
    """
    return next((parent for parent in _ancestors(name) if not _distils(parent)), None)


def scratch_command(job: Job) -> str:
    """`python train.py -m experiment=<scratch> <the job's student-recipe overrides> seed=0,1,2`."""
    stripped = ((key.lstrip("~+"), line) for key, line in job.lines.items())  # `~distill` is no recipe either
    kept = [line for key, line in stripped if not {key, key.split("/")[0].split(".")[0]} & NOT_STUDENT_RECIPE]
    experiment = job.overrides.get("experiment")
    scratch = scratch_experiment(experiment) if experiment else None
    if scratch is not None:
        head = [f"experiment={scratch}"]
    elif experiment:  # the experiment itself, with the student trained alone: same recipe, no teacher
        head = [f"experiment={experiment}", "module=teacher", "~teacher", "~distill"]
    else:
        head = []
    words = ["python", "train.py", "-m", *head, *kept, f"{SEED_KEY}={BASELINE_SEEDS}"]
    return " ".join(shlex.quote(word) for word in words)
