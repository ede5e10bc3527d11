"""Paired comparisons over seeds: is setting A better than setting B, or is the difference noise?

Two settings run with the same seeds share each seed's data order, initialisation and validation split,
so their per-seed differences vary far less than either accuracy does. The comparison is therefore the
mean of the per-seed differences d_s = acc_A(s) - acc_B(s) with its 95% t-interval,

    mean(d) ± t_{0.975, n-1} · sd(d) / sqrt(n),

over the seeds both settings finished. An interval that contains 0 reads "no detectable difference":
with n seeds and a seed-to-seed std near 0.08 points, gaps of a tenth of a point cannot be told from noise.
"""

from __future__ import annotations

import functools
import math
import statistics
from dataclasses import dataclass
from typing import Any

CONFIDENCE = 0.95


def _t_pdf(x: float, df: int) -> float:
    log_norm = math.lgamma((df + 1) / 2) - math.lgamma(df / 2) - 0.5 * math.log(df * math.pi)
    return math.exp(log_norm - (df + 1) / 2 * math.log1p(x * x / df))


def _t_cdf_above_half(t: float, df: int, steps: int = 2000) -> float:
    """P(T <= t) - 1/2 for t >= 0: Simpson's rule on the density, smooth on [0, t] (error far below 1e-9)."""
    h = t / steps
    inner = sum((4 if i % 2 else 2) * _t_pdf(i * h, df) for i in range(1, steps))
    return h / 3 * (_t_pdf(0.0, df) + inner + _t_pdf(t, df))


@functools.cache
def t_quantile(df: int, p: float = 0.5 + CONFIDENCE / 2) -> float:
    """The p-quantile (0.5 < p < 1) of Student's t with `df` degrees of freedom: 12.706 for df=1, 2.776 for 4."""
    if df < 1 or not 0.5 < p < 1:
        raise ValueError(f"t_quantile needs df >= 1 and 0.5 < p < 1, got df={df}, p={p}")
    # Newton from 0: the CDF is concave on t >= 0, so every step lands below the root and the steps converge.
    t = 0.0
    for _ in range(200):
        step = (p - 0.5 - _t_cdf_above_half(t, df)) / _t_pdf(t, df)
        t += step
        if step < 1e-12 * max(t, 1.0):
            break
    return t


@dataclass(frozen=True)
class Paired:
    """A minus B over the seeds both have, as fractions (0.001 is a tenth of a point)."""

    diffs: dict[Any, float]  # seed -> acc_A(seed) - acc_B(seed)

    @property
    def n(self) -> int:
        return len(self.diffs)

    @property
    def mean(self) -> float:
        return statistics.fmean(self.diffs.values())

    @property
    def interval(self) -> tuple[float, float] | None:
        """The 95% t-interval of the mean difference; None with one seed (no spread to estimate)."""
        if self.n < 2:
            return None
        half = t_quantile(self.n - 1) * statistics.stdev(self.diffs.values()) / math.sqrt(self.n)
        return self.mean - half, self.mean + half

    def verdict(self, a: str = "A", b: str = "B") -> str:
        interval = self.interval
        if interval is None:
            return "one seed, no interval"
        if interval[0] <= 0 <= interval[1]:
            return "no detectable difference"
        return f"{a} better" if interval[0] > 0 else f"{b} better"

    def points(self) -> str:
        """`+0.10 [-0.04, +0.23]`: the mean difference and its interval, in percentage points.

        A bound that is not zero but rounds to it gets a third decimal (`[+0.005, +0.19]`): "+0.00" would read
        as an interval touching 0 when the verdict says it excludes it.
        """
        interval = self.interval
        bounds = "" if interval is None else f" [{_bound(100 * interval[0])}, {_bound(100 * interval[1])}]"
        return f"{100 * self.mean:+.2f}{bounds}"

    def describe(self, a: str = "A", b: str = "B") -> str:
        """`+0.10 [-0.04, +0.23] points, n=5: no detectable difference`."""
        return f"{self.points()} points, n={self.n}: {self.verdict(a, b)}"


def _bound(points: float) -> str:
    return f"{points:+.3f}" if points != 0 and round(points, 2) == 0 else f"{points:+.2f}"


def mean_interval(values: list[float]) -> tuple[float, float | None]:
    """The mean of `values` and the half-width of its 95% t-interval (None with fewer than two values)."""
    mean = statistics.fmean(values)
    if len(values) < 2:
        return mean, None
    return mean, t_quantile(len(values) - 1) * statistics.stdev(values) / math.sqrt(len(values))


def pair(a: dict[Any, float], b: dict[Any, float]) -> Paired | None:
    """A's accuracy minus B's, seed by seed, over the seeds both have; None when they share none."""
    shared = [seed for seed in a if seed in b]
    return Paired({seed: a[seed] - b[seed] for seed in shared}) if shared else None
