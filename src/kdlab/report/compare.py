"""Which rows are compared seed by seed: each distilled row with its scratch baseline, two settings a user
names (`--compare`), every row with one reference row, ranked (`--rank-against`, a method table), and each
row with its counterpart in another sweep (`--against`).

Smoke rows are paired only with smoke rows, and say so: a one-batch run tells nothing about a full one.
A setting that names no row, or more than one, is refused with the rows there are, before anything is written.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from kdlab.report import formatting as fmt
from kdlab.report.aggregate import Row, Sweep
from kdlab.report.baselines import References
from kdlab.report.load import is_number, parse_overrides
from kdlab.report.paired import Paired, pair

METRIC = "test/acc"  # what is compared; the selection metric never is, it chose the rows


class ComparisonError(ValueError):
    """A `--compare` or `--against` that cannot be answered: which rows there are, and what to type."""


@dataclass(frozen=True)
class Comparison:
    a: str  # the row's label, e.g. "distill.temperature=4"
    b: str  # what it is compared with, e.g. "from scratch" or "distill.temperature=8"
    paired: Paired
    unpaired: tuple[str, ...] = ()  # seeds of A with no run of B (or the other way), left out
    smoke: bool = False
    row: Row | None = field(default=None, compare=False, repr=False)  # A's row, for the table's column

    def line(self) -> str:
        many = len(self.unpaired) > 1
        which = f"seed{'s' if many else ''} {', '.join(self.unpaired)} {'have' if many else 'has'}"
        left_out = f" ({which} no partner, left out)" if self.unpaired else ""
        smoke = " [smoke runs: not a result]" if self.smoke else ""
        return f"{self.a} minus {self.b}, test acc: {self.paired.describe(self.a, self.b)}{left_out}{smoke}"


def seed_accs(row: Row, metric: str = METRIC) -> dict[str, float]:
    """str(seed) -> the metric, for the row's finished jobs (a seed run twice: its later job)."""
    found = {}
    for job in row.jobs:
        value = job.metric(metric)
        if value is not None and job.record is not None:
            found[str(job.record.seed)] = value
    return found


def pair_rows(a: Row, b: Row) -> Paired | None:
    """Row a minus row b seed by seed (None when they share no seed)."""
    return pair(seed_accs(a), seed_accs(b))


def _compared(a: str, b: str, row: Row, theirs: dict[str, float]) -> Comparison | None:
    mine = seed_accs(row)
    paired = pair(mine, theirs)
    if paired is None:
        return None
    unpaired = tuple(sorted(set(mine) ^ set(theirs), key=lambda s: (not s.lstrip("-").isdigit(), len(s), s)))
    return Comparison(a, b, paired, unpaired, row.smoke, row)


def versus_scratch(sweep: Sweep, refs: References) -> list[Comparison]:
    """Each full distilled row minus the scratch run of the same seed (its baseline's `by_seed`)."""
    found = []
    for row in sweep.rows:
        students = {job.record.identity.get("student") for job in row.jobs if job.record and job.record.is_distillation}
        base = refs.baselines.get(next(iter(students))) if len(students) == 1 and not row.smoke else None
        if base is not None and base.by_seed:
            label = row.label(sweep.keys).replace("all jobs", "distilled")
            comparison = _compared(label, "from scratch", row, base.by_seed)
            found += [comparison] if comparison else []
    return found


def _matches(row: Row, wanted: dict[str, object]) -> bool:
    def same(key: str, value: object) -> bool:
        have = row.value(key)
        if is_number(have) and is_number(value):
            return math.isclose(float(have), float(value), rel_tol=1e-12)
        return row.setting.get(key) == str(value) or have == value

    return all(key in row.setting and same(key, value) for key, value in wanted.items())


def pick_row(sweep: Sweep, setting: str, smoke: bool | None = None) -> Row:
    """The one row of `setting` ("key=value key=value", the swept keys' values as typed)."""
    _, _, wanted = parse_overrides(setting.split())
    unknown = [key for key in wanted if key not in sweep.keys]
    rows = [row for row in sweep.rows if row.jobs and _matches(row, wanted) and smoke in (None, row.smoke)]
    if len({row.smoke for row in rows}) > 1:
        rows = [row for row in rows if not row.smoke]  # full runs answer; smoke ones only when there is nothing else
    labels = "; ".join(row.label(sweep.keys) for row in sweep.rows if row.jobs) or "none"
    if unknown or len(rows) != 1:
        why = (
            f"{', '.join(unknown)} {'is' if len(unknown) == 1 else 'are'} not swept here (swept: "
            f"{', '.join(sweep.keys) or 'nothing but the seed'})"
            if unknown
            else f"it matches {len(rows)} rows with finished jobs"
        )
        raise ComparisonError(
            f"Cannot compare the setting `{setting}`: {why}. Name exactly one row by the swept keys' values, as "
            f"typed, several keys separated by spaces in one argument (e.g. --compare 'distill.temperature=4' "
            f"'distill.temperature=8'). The rows with finished jobs are: {labels}."
        )
    return rows[0]


def between_settings(sweep: Sweep, a: str, b: str) -> Comparison:
    """Row `a` minus row `b` of one sweep, seed by seed (smoke with smoke only)."""
    row_a = pick_row(sweep, a)
    row_b = pick_row(sweep, b, smoke=row_a.smoke)
    found = _compared(a, b, row_a, seed_accs(row_b))
    if found is None:
        raise ComparisonError(
            f"`{a}` (seeds {fmt.seeds(list(seed_accs(row_a)))}) and `{b}` (seeds {fmt.seeds(list(seed_accs(row_b)))}) "
            "share no seed, so they cannot be paired: run the missing seeds of one of them."
        )
    return found


def ranked_against(sweep: Sweep, reference: str) -> list[Comparison]:
    """Every other row minus the `reference` row (e.g. "distill=kd"), seed by seed, best first: a method table.

    Rows that share no seed with the reference are refused, naming them: a method left out of a ranking would
    read as a method that lost.
    """
    base = pick_row(sweep, reference)
    theirs = seed_accs(base)
    found, unpaired = [], []
    for row in (r for r in sweep.rows if r.jobs and r is not base and r.smoke == base.smoke):
        label = row.label(sweep.keys)
        comparison = _compared(label, reference, row, theirs)
        found.append(comparison) if comparison else unpaired.append(label)
    if unpaired:
        raise ComparisonError(
            f"{'; '.join(unpaired)} share{'s' if len(unpaired) == 1 else ''} no seed with `{reference}` "
            f"(seeds {fmt.seeds(list(theirs))}), so the ranking cannot place "
            f"{'it' if len(unpaired) == 1 else 'them'}: run the same seeds for every row."
        )
    return sorted(found, key=lambda c: c.paired.mean, reverse=True)


def against_sweep(sweep: Sweep, other: Sweep, other_name: str) -> list[Comparison]:
    """Each row minus its counterpart in `other`: its only row of the same kind (full or smoke), or the row
    that agrees on every key both sweeps swept. A row with no counterpart is refused, naming the choices."""
    shared = [key for key in sweep.keys if key in other.keys]
    found = []
    for row in (row for row in sweep.rows if row.jobs):
        kind = [r for r in other.rows if r.jobs and r.smoke == row.smoke]
        if len(kind) > 1:
            kind = [r for r in kind if shared and all(r.setting[k] == row.setting[k] for k in shared)]
        if len(kind) != 1:
            choices = "; ".join(r.label(other.keys) for r in other.rows if r.jobs) or "none finished"
            raise ComparisonError(
                f"No single row of {other_name} to pair with `{row.label(sweep.keys)}`"
                f"{' (smoke)' if row.smoke else ''}: it has {len(kind)} candidates among its rows ({choices}). "
                "--against pairs each row with the other sweep's only row (a scratch sweep of the same seeds), or "
                f"with the row that agrees on every key both sweeps swept ({', '.join(shared) or 'none here'})."
            )
        label = kind[0].label(other.keys)
        b = other_name if label == "all jobs" else f"{other_name} {label}"
        a = row.label(sweep.keys).replace("all jobs", "this sweep")
        comparison = _compared(a, b, row, seed_accs(kind[0]))
        found += [comparison] if comparison else []
    if not found:
        raise ComparisonError(
            f"No row of this sweep shares a seed with {other_name}: pairing needs the same seeds in both sweeps."
        )
    return found
