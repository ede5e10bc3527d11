"""How numbers and settings read in the sweep report, a run's summary and the run listing: one place, so they agree.

Every function takes None (a diverged job's null, a metric a run did not log) and prints "-".
"""

from __future__ import annotations

import math
from typing import Any

MISSING = "-"


def number(value: float | None, decimals: int = 4) -> str:
    """Fixed point where that keeps two significant digits, else scientific: 0.1234, but 5.0e-05, not 0.0001."""
    if value is None or not math.isfinite(value):
        return MISSING
    if value != 0 and abs(value) < 10 ** (1 - decimals):  # 4 decimals: below 0.001 only 1 digit would show
        return f"{value:.1e}"
    return f"{value:.{decimals}f}"


def percent(value: float | None, unit: str = "") -> str:
    """A fraction as a percentage with 2 decimals: 0.9812 -> 98.12, and a std of 0.00085 -> 0.09 (not 8.5e-02)."""
    return MISSING if value is None or not math.isfinite(value) else f"{100 * value:.2f}{unit}"


def mean_std_percent(stats: tuple[float, float] | None) -> str:
    """Mean ± sample std of a fraction, in percent: "95.60 ± 0.56"."""
    return MISSING if stats is None else f"{percent(stats[0])} ± {percent(stats[1])}"


def count(value: int | None) -> str:
    return MISSING if value is None else f"{value:,}"


def short(value: Any, typed: str) -> str:
    """Swept values as typed, except Optuna's long floats: 0.6347391263798 -> 0.6347."""
    return f"{value:.4g}" if isinstance(value, float) and math.isfinite(value) else typed


def seeds(values: list[Any]) -> str:
    """The distinct seeds, numbers in numeric order: "0, 1, 2, 10"."""
    ordered = sorted(set(values), key=lambda v: (0, v, "") if isinstance(v, int) else (1, 0, str(v)))
    return ", ".join(str(v) for v in ordered) or MISSING


def aligned(header: list[str], body: list[list[str]]) -> list[list[str]]:
    """The header, a rule of dashes and the body, every cell padded to its column's width: a table in plain text."""
    widths = [max(len(cell) for cell in column) for column in zip(header, *body, strict=True)]
    return [
        [c.ljust(w) for c, w in zip(line, widths, strict=True)] for line in (header, ["-" * w for w in widths], *body)
    ]
