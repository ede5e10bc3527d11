"""From jobs to rows: the swept keys, the settings every job shared, one row per setting, the best row.

The swept keys are the override keys whose values differ between jobs (plus any key a record says its
sweep varied), except `seed`, which is what a row averages over: `distill.temperature=1,4,8 seed=0,1,2`
gives three rows of n=3. Only finished jobs are averaged; the others of a setting are named in its row.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from typing import Any

from kdlab.report import formatting
from kdlab.report.load import Job

SEED_KEY = "seed"
UNSET = "(unset)"  # a swept key that some jobs do not override at all
SELECT_METRIC = "val/acc_best"  # what the best row is chosen by: validation, never test


def mean_std(values: list[float]) -> tuple[float, float] | None:
    """Mean and sample std (ddof=1, as the scratch baseline); std 0 when n=1."""
    if not values:
        return None
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


@dataclass
class Row:
    """The finished jobs that share one setting of the swept keys: they differ only in their seed.

    Smoke jobs never share a row with full ones, so a brief run cannot pull a mean down unseen.
    """

    setting: dict[str, str]  # swept key -> value as typed (UNSET where a job leaves it out)
    jobs: list[Job]  # finished jobs, averaged over
    smoke: bool = False
    others: list[Job] = field(default_factory=list)  # jobs of this setting that did not finish

    def value(self, key: str) -> Any:
        """The parsed value of a swept key (int, float, str, ...), as Hydra read it."""
        for job in (*self.jobs, *self.others):
            if key in job.values:
                return job.values[key]
        return None

    def stats(self, metric: str) -> tuple[float, float] | None:
        return mean_std([v for v in (job.metric(metric) for job in self.jobs) if v is not None])

    def mean(self, metric: str) -> float | None:
        stats = self.stats(metric)
        return None if stats is None else stats[0]

    def wall_time(self) -> float | None:
        stats = mean_std([t for t in (job.wall_time for job in self.jobs) if t is not None])
        return None if stats is None else stats[0]

    def label(self, keys: list[str]) -> str:
        """The setting as a reader types it, marked when it is only a smoke run."""
        text = formatting.setting({k: self.value(k) for k in keys}, self.setting, keys)
        return f"{text} (smoke)" if self.smoke else text

    @property
    def params(self) -> int | None:
        counts = [p for p in (job.param("student") for job in (*self.jobs, *self.others)) if p is not None]
        return counts[0] if counts else None

    def notes(self) -> str:
        """What the mean leaves out, by job folder: `smoke; diverged: 6, 7; unfinished: 8`."""
        notes = ["smoke"] if self.smoke else []
        by_state: dict[str, list[str]] = {}
        for job in self.others:
            by_state.setdefault(job.state, []).append(job.name)
        notes += [f"{state}: {', '.join(names)}" for state, names in by_state.items()]
        return "; ".join(notes)


def swept_keys(jobs: list[Job]) -> list[str]:
    """Override keys whose value differs between jobs, or that a record says its sweep varied; not the seed."""
    jobs = [job for job in jobs if job.overrides]
    keys = dict.fromkeys(key for job in jobs for key in job.overrides)
    declared = {key for job in jobs if job.record is not None for key in job.record.swept}
    return [
        k for k in keys if k != SEED_KEY and (k in declared or len({job.overrides.get(k, UNSET) for job in jobs}) > 1)
    ]


def common_settings(jobs: list[Job], keys: list[str]) -> list[str]:
    """The overrides, as typed, that every job shared: `trainer.max_epochs=2` says this was a short sweep."""
    jobs = [job for job in jobs if job.overrides]
    if not jobs:
        return []
    first = jobs[0]
    return [
        first.lines[k]
        for k in first.overrides
        if k not in keys and all(job.lines.get(k) == first.lines[k] for job in jobs[1:])
    ]


def _sort_key(value: Any, typed: str) -> tuple:
    if is_number(value):
        return (0, float(value), "")
    return (1, 0.0, typed)


def group_rows(jobs: list[Job], keys: list[str]) -> list[Row]:
    """One row per distinct setting of `keys` (and smoke or not), sorted by those values, numbers numerically.

    A job that did not finish joins the row of its setting as a note; a setting none of whose jobs
    finished still gets a row, with no numbers, so that it is not silently missing from the table.
    """
    rows: dict[tuple, Row] = {}
    for job in jobs:
        if job.finished:
            setting = tuple(job.overrides.get(k, UNSET) for k in keys)
            row = rows.setdefault((setting, job.smoke), Row(dict(zip(keys, setting, strict=True)), [], job.smoke))
            row.jobs.append(job)
    for job in jobs:
        if not job.finished and job.overrides:
            setting = tuple(job.overrides.get(k, UNSET) for k in keys)
            home = rows.get((setting, False)) or rows.get((setting, True))
            if home is None:
                home = rows[(setting, False)] = Row(dict(zip(keys, setting, strict=True)), [])
            home.others.append(job)
    return sorted(
        rows.values(),
        key=lambda row: (*(_sort_key(row.value(k), row.setting[k]) for k in keys), row.smoke),
    )


def numeric_keys(rows: list[Row], keys: list[str]) -> list[str]:
    return [k for k in keys if rows and all(is_number(row.value(k)) for row in rows)]


def best_by_validation(rows: list[Row]) -> Row | None:
    """The setting to pick: highest mean val/acc_best over full (non-smoke) runs. Test only reports it."""
    scored = [(row.mean(SELECT_METRIC), row) for row in rows if not row.smoke]
    scored = [(mean, row) for mean, row in scored if mean is not None]
    return max(scored, key=lambda pair: pair[0])[1] if scored else None


@dataclass
class Sweep:
    """A sweep folder read and grouped: what the Markdown, the plots and TensorBoard all show."""

    jobs: list[Job]  # every job folder, finished or not, in job-number order
    keys: list[str]  # the swept keys, in the order they were typed
    common: list[str]  # overrides every job shared, as typed
    rows: list[Row]

    @property
    def finished(self) -> list[Job]:
        return [job for job in self.jobs if job.finished]

    @property
    def problems(self) -> list[Job]:
        """Jobs left out of the averages: diverged, failed, interrupted, unfinished."""
        return [job for job in self.jobs if not job.finished]

    @property
    def distilled(self) -> bool:
        return any(job.record is not None and job.record.is_distillation for job in self.jobs)

    @property
    def best(self) -> Row | None:
        return best_by_validation(self.rows)

    def problem_counts(self) -> str:
        """How many jobs ended each way other than finished: `1 diverged, 2 unfinished`."""
        counts: dict[str, int] = {}
        for job in self.problems:
            counts[job.state] = counts.get(job.state, 0) + 1
        return ", ".join(f"{n} {state}" for state, n in counts.items())


def summarise(jobs: list[Job]) -> Sweep:
    keys = swept_keys(jobs)
    return Sweep(jobs, keys, common_settings(jobs, keys), group_rows(jobs, keys))
