"""What a distilled student is judged against: its teacher, and the same student trained from scratch.

The scratch baseline is the one each job's record carries (`baseline`: what the job found when it
ended). Where no job found one, the report says so and gives the command that trains it: the scratch
experiment the distillation experiment builds on, with the sweep's student-recipe overrides.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass

import yaml

from kdlab.config import CONFIG_DIR
from kdlab.report.aggregate import SEED_KEY, is_number, mean_std
from kdlab.report.load import Job

BASELINE_SEEDS = "0,1,2"
# Overrides that say how to distil, where the sweep goes or how brief a run is, not what the student
# learns: left out of the scratch command (its recipe key must match the distilled student's).
NOT_STUDENT_RECIPE = frozenset(
    {
        "experiment",
        SEED_KEY,
        "module",
        "teacher",
        "distill",
        "loss",
        "hparams_search",
        "hydra",
        "name",
        "debug",
        "optimized_metric",
        "ckpt_path",
        "train",
        "test",
        "trainer.fast_dev_run",
    }
)


@dataclass
class Baseline:
    mean: float
    std: float
    runs: int
    seeds: list
    params: int | None  # of the student, for the accuracy-vs-parameters plot


@dataclass
class References:
    teacher_acc: float | None  # mean over the finished jobs
    teacher_params: int | None
    baselines: dict[str, Baseline]  # student recipe key -> the baseline seen by the most runs
    missing: dict[str, str]  # student recipe key of distilled students without one -> the command to train it


def _baseline(job: Job) -> Baseline | None:
    found = job.record.baseline if job.record is not None else None
    if not isinstance(found, dict) or not is_number(found.get("mean")):
        return None
    std, runs = found.get("std"), found.get("runs")
    return Baseline(
        float(found["mean"]),
        float(std) if is_number(std) else 0.0,
        int(runs) if is_number(runs) else 0,
        list(found.get("seeds") or []),
        job.param("student"),
    )


def references(jobs: list[Job]) -> References:
    """Jobs that ended later may have seen more scratch runs, so per student the baseline of the most runs wins."""
    finished = [job for job in jobs if job.finished]
    teacher = mean_std([v for v in (job.metric("test/teacher_acc") for job in finished) if v is not None])
    teacher_params = [p for p in (job.param("teacher") for job in finished) if p is not None]
    distilled = [job for job in jobs if job.record is not None and job.record.is_distillation]
    baselines: dict[str, Baseline] = {}
    for job in distilled:
        base = _baseline(job)
        key = job.student_key or "unknown"
        if base is not None and (key not in baselines or base.runs > baselines[key].runs):
            baselines[key] = base
    missing = {}
    for job in distilled:
        key = job.student_key or "unknown"
        if key not in baselines and key not in missing:
            missing[key] = scratch_command(job)
    teacher_acc = teacher[0] if teacher else None
    return References(teacher_acc, teacher_params[0] if teacher_params else None, baselines, missing)


# -- the command that trains a missing baseline ------------------------------------------------------


def _experiment_defaults(name: str) -> list | None:
    path = CONFIG_DIR / "experiment" / f"{name}.yaml"
    try:
        defaults = (yaml.safe_load(path.read_text()) or {}).get("defaults", [])
    except (OSError, yaml.YAMLError, AttributeError):
        return None
    return defaults if isinstance(defaults, list) else None


def _parents(defaults: list) -> list[str]:
    """Other experiments an experiment builds on: the plain names in its defaults list."""
    return [d for d in defaults if isinstance(d, str) and d != "_self_"]


def _distils(name: str, seen: frozenset = frozenset()) -> bool:
    defaults = _experiment_defaults(name) or []
    if any(isinstance(d, dict) and d.get("override /module") == "distill" for d in defaults):
        return True
    return any(_distils(p, seen | {name}) for p in _parents(defaults) if p not in seen)


def scratch_experiment(name: str) -> str | None:
    """The experiment that trains the student of distillation experiment `name` alone, if it builds on one.

    distill_mlp starts from student_scratch_mlp and only swaps the module: that is its baseline.
    """
    queue, seen = [name], set()
    while queue:
        current = queue.pop(0)
        seen.add(current)
        for parent in _parents(_experiment_defaults(current) or []):
            if parent in seen:
                continue
            if not _distils(parent):
                return parent
            queue.append(parent)
    return None


def _root(key: str) -> str:
    key = key.lstrip("~+")
    return key.split("/")[0].split(".")[0]


def scratch_command(job: Job) -> str:
    """`python train.py -m experiment=<scratch> <the job's student-recipe overrides> seed=0,1,2`."""
    kept = [
        line
        for key, line in job.lines.items()
        if _root(key) not in NOT_STUDENT_RECIPE and key.lstrip("~+") not in NOT_STUDENT_RECIPE
    ]
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
