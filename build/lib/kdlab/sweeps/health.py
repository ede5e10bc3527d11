"""After all jobs of a sweep ran: exit non-zero if any did not finish healthy (schedulers read exit codes)."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, NamedTuple

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from kdlab.record import RECORD_FILE, RecordError, RunRecord

log = logging.getLogger(__name__)


class JobHealth(NamedTuple):
    folder: Path
    healthy: bool
    status: str  # "ok", "failed: <message>", "no metrics.json ...", ...


class SweepFailed(SystemExit):
    """A SystemExit, not an Exception: Hydra turns a callback's exceptions into warnings (exit 0).

    Raised with the report as its message, Python prints it to stderr and exits with status 1.
    """


def job_health(folder: Path) -> JobHealth:
    """Healthy = its run record says it finished (`ok` or `smoke`); no record or an unreadable one is not."""
    if not (folder / RECORD_FILE).is_file():
        return JobHealth(folder, False, f"no {RECORD_FILE}: the job stopped before writing its run record")
    try:
        record = RunRecord.read(folder)
    except RecordError as err:
        return JobHealth(folder, False, f"unreadable {RECORD_FILE}: {err}")
    status = record.status if record.message is None else f"{record.status}: {record.message}"
    return JobHealth(folder, record.finished, status)


def job_folders(sweep_dir: Path, output_subdir: str | None) -> list[Path]:
    """The folders Hydra started a job in: each holds `<output_subdir>/hydra.yaml` (`.hydra/` by default).

    With `hydra.output_subdir=null` Hydra marks nothing; then the folders with a run record count.
    """
    if output_subdir is None:
        found = {p.parent for p in sweep_dir.rglob(RECORD_FILE)}
    else:
        depth = len(Path(output_subdir).parts)  # .hydra/hydra.yaml -> the job folder is 2 levels up
        found = {p.parents[depth] for p in sweep_dir.rglob("hydra.yaml") if p.parent.match(output_subdir)}
    return sorted(found, key=lambda p: [(0, int(s), "") if s.isdigit() else (1, 0, s) for s in p.parts])


def _stamp(folder: Path, output_subdir: str | None) -> tuple[int, int] | None:
    """When Hydra last (re)started a job in this folder: it rewrites hydra.yaml at every start."""
    marker = folder / (output_subdir or "") / ("hydra.yaml" if output_subdir is not None else RECORD_FILE)
    try:
        stat = os.stat(marker)
    except FileNotFoundError:
        return None
    return stat.st_mtime_ns, stat.st_ino


class SweepHealth(Callback):
    """Configured under `hydra.callbacks`; works for every launcher (it reads job folders, not job returns).

    At the end of a multirun it reads every job folder this sweep started (or restarted) and, if
    one did not finish healthy, exits with status 1 listing them. Folders an earlier run of the
    same sweep folder left untouched (a resumed Optuna search numbers its jobs after them) are
    only warned about: they were reported when they ran, and a resume that completes the study
    should exit 0.
    """

    def __init__(self) -> None:
        self._before: dict[Path, tuple[int, int] | None] = {}

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir, subdir = Path(config.hydra.sweep.dir), config.hydra.output_subdir
        self._before = {folder: _stamp(folder, subdir) for folder in job_folders(sweep_dir, subdir)}

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir, subdir = Path(config.hydra.sweep.dir), config.hydra.output_subdir
        folders = job_folders(sweep_dir, subdir) if sweep_dir.is_dir() else []
        ran = [f for f in folders if f not in self._before or self._before[f] != _stamp(f, subdir)]
        earlier = [job_health(f) for f in folders if f not in ran]
        for job in earlier:
            if not job.healthy:
                log.warning("Job %s, from an earlier run of this sweep, did not finish: %s", job.folder, job.status)
        bad = [job for job in map(job_health, ran) if not job.healthy]
        if bad:
            raise SweepFailed(unhealthy_report(sweep_dir, len(ran), bad))
        log.info("All %d jobs of the sweep %s finished healthy.", len(ran), sweep_dir)


def unhealthy_report(sweep_dir: Path, n_jobs: int, bad: list[JobHealth]) -> str:
    lines = [f"Sweep {sweep_dir}: {len(bad)} of {n_jobs} jobs did not finish healthy (all jobs ran):"]
    lines += [f"  job {job.folder.relative_to(sweep_dir)} ({job.folder}): {job.status}" for job in bad]
    lines.append(
        "Each job's log is <job folder>/*.log (with hydra/launcher=local also <sweep>/.submitit/<id>/); "
        "re-run one alone with the overrides in <job folder>/.hydra/overrides.yaml."
    )
    return "\n".join(lines)
