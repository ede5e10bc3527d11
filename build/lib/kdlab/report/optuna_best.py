"""The Optuna sweeper's best trial (its `optimization_results.yaml`), and which job folder ran it."""

from __future__ import annotations

import math
from pathlib import Path

import yaml

from kdlab.report import formatting as fmt
from kdlab.report.aggregate import is_number
from kdlab.report.load import Job

OPTUNA_FILE = "optimization_results.yaml"  # written by hydra-optuna-sweeper at the end of a search


def _ran(job: Job, params: dict) -> bool:
    return all(
        is_number(job.values.get(k)) and math.isclose(float(job.values[k]), float(v))
        if is_number(v)
        else job.overrides.get(k) == str(v)
        for k, v in params.items()
    )


def optuna_summary(sweep_dir: Path, jobs: list[Job]) -> str | None:
    path = sweep_dir / OPTUNA_FILE
    if not path.is_file():
        return None
    try:
        result = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as err:
        return f"Optuna results: `{OPTUNA_FILE}` could not be read ({err})."
    if not isinstance(result, dict) or not isinstance(result.get("best_params"), dict):
        return f"Optuna results: see `{OPTUNA_FILE}`."  # a multi-objective study has a Pareto front instead
    params = result["best_params"]
    folders = [job.name for job in jobs if _ran(job, params)]
    where = f" (job folder {', '.join(folders)})" if folders else ""
    settings = ", ".join(f"{k}={fmt.short(v, str(v))}" for k, v in params.items())
    value = result.get("best_value")
    value = fmt.number(float(value)) if is_number(value) else str(value)
    return f"Optuna best trial{where}: {settings} with value {value} (from `{OPTUNA_FILE}`)."
