"""From jobs to rows: the swept keys, the settings every job shared, one row per setting, the best row.

The swept keys are the override keys whose values differ between jobs (plus any key a record says its
sweep varied), except `seed`, which is what a row averages over: `distill.temperature=1,4,8 seed=0,1,2`
gives three rows of n=3. Only finished jobs are averaged; the others of a setting are named in its row.
"""

from __future__ import annotations

import math
import statistics
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from kdlab.report import formatting as fmt
from kdlab.report.load import Job, is_number

SEED_KEY = "seed"
UNSET = "(unset)"  # a swept key that some jobs do not override at all
SELECT_METRIC = "val/acc_best"  # what the best row is chosen by: validation, never test


def mean_std(values: list[float]) -> tuple[float, float] | None:
    """Mean and sample std (ddof=1); std 0 when n=1."""
    if not values:
        return None
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


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
        return next((job.values[key] for job in (*self.jobs, *self.others) if key in job.values), None)

    def stats(self, metric: str) -> tuple[float, float] | None:
        return mean_std([v for v in (job.metric(metric) for job in self.jobs) if v is not None])

    def mean(self, metric: str) -> float | None:
        return (self.stats(metric) or (None,))[0]

    def wall_times(self) -> list[float]:
        """Each finished job's wall time in seconds, where its record has a usable one."""
        times = [job.record.wall_time_s for job in self.jobs]
        return [float(t) for t in times if is_number(t) and math.isfinite(t) and t > 0]

    def wall_time(self) -> float | None:
        """What one run of this setting takes: the median job, so a job that trained the sweep's teacher (or
        built its output cache) for all the others is not averaged into every run's cost."""
        times = self.wall_times()
        return statistics.median(times) if times else None

    def label(self, keys: list[str]) -> str:
        """`distill.temperature=4, distill.losses.kd.weight=0.9 (smoke)`, or "all jobs" when nothing was swept."""
        text = ", ".join(f"{k}={fmt.short(self.value(k), self.setting[k])}" for k in keys) or "all jobs"
        return f"{text} (smoke)" if self.smoke else text

    @property
    def params(self) -> int | None:
        return next((p for p in (job.param("student") for job in (*self.jobs, *self.others)) if p is not None), None)

    def notes(self) -> str:
        """What the mean leaves out, by job folder: `smoke; diverged: 6, 7; unfinished: 8`."""
        by_state: dict[str, list[str]] = {}
        for job in self.others:
            by_state.setdefault(job.state, []).append(job.name)
        return "; ".join([*(["smoke"] if self.smoke else []), *(f"{s}: {', '.join(n)}" for s, n in by_state.items())])


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
    return [line for k, line in first.lines.items() if k not in keys and all(j.lines.get(k) == line for j in jobs)]


def group_rows(jobs: list[Job], keys: list[str]) -> list[Row]:
    """One row per distinct setting of `keys` (and smoke or not), sorted by those values, numbers numerically.

    A job that did not finish joins the row of its setting as a note; a setting none of whose jobs
    finished still gets a row, with no numbers, so that it is not silently missing from the table.
    """
    rows: dict[tuple, Row] = {}
    for job in sorted(jobs, key=lambda job: not job.finished):  # finished first: they make the rows
        setting = tuple(job.overrides.get(k, UNSET) for k in keys)
        new = Row(dict(zip(keys, setting, strict=True)), [], job.smoke)
        if job.finished:
            rows.setdefault((setting, job.smoke), new).jobs.append(job)
        elif job.overrides:  # a note in its setting's row, full or smoke; a row of its own if there is none
            home = rows.get((setting, False)) or rows.get((setting, True)) or rows.setdefault((setting, False), new)
            home.others.append(job)

    def order(row: Row) -> tuple:
        values = [(row.value(k), row.setting[k]) for k in keys]
        return (*((0, float(v), "") if is_number(v) else (1, 0.0, typed) for v, typed in values), row.smoke)

    return sorted(rows.values(), key=order)


@dataclass
class Sweep:
    """A sweep folder read and grouped: what the Markdown and the plots show."""

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
        """The setting to pick: highest mean val/acc_best over full (non-smoke) runs. Test only reports it."""
        scored = [(row.mean(SELECT_METRIC), row) for row in self.rows if not row.smoke]
        scored = [pair for pair in scored if pair[0] is not None]
        return max(scored, key=lambda pair: pair[0])[1] if scored else None

    def problem_counts(self) -> str:
        """How many jobs ended each way other than finished: `1 diverged, 2 unfinished`."""
        return ", ".join(f"{n} {state}" for state, n in Counter(job.state for job in self.problems).items())

    @property
    def numeric_keys(self) -> list[str]:
        return [k for k in self.keys if self.rows and all(is_number(row.value(k)) for row in self.rows)]
