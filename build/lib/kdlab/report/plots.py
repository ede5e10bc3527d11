"""The sweep as PNG plots: test accuracy against each numeric swept key, and against parameter count.

matplotlib is imported inside the functions only: without it the report still writes report.md and
says how to get the plots. Each plot's subtitle carries the settings every job shared and the jobs
it leaves out, so a figure copied on its own still says what it shows.
"""

from __future__ import annotations

import math
import textwrap
from typing import TYPE_CHECKING, Any

from kdlab.report.aggregate import Row, Sweep, numeric_keys
from kdlab.report.baselines import References

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

INSTALL = "pip install 'kdlab[plots]'"
LABEL_GAP_PT = 11.0  # vertical room per point label: an x-small line (8.3 pt font, ~10 pt high) plus air
LABEL_ROOM_IN = LABEL_GAP_PT / 72  # figure height each label needs, in inches


def unavailable() -> str | None:
    """Why plots cannot be drawn here (matplotlib missing), or None when they can."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return (
            f"Plots skipped: matplotlib is not installed. Install it with `{INSTALL}` (or `pip install "
            "matplotlib`) and run `python scripts/report.py <sweep folder>` again for the PNGs."
        )
    return None


def subtitle(sweep: Sweep) -> str:
    """What every point shares and what is missing: `common: trainer.max_epochs=2`, `not shown: 1 diverged`."""
    parts = [f"common: {', '.join(sweep.common) or 'no overrides'}"]
    if sweep.problems:
        names = [job.name for job in sweep.problems]
        listed = ", ".join(names[:10]) + (f" and {len(names) - 10} more" if len(names) > 10 else "")
        parts.append(f"not shown: {sweep.problem_counts()} (job folders {listed})")
    if any(row.smoke for row in sweep.rows):
        parts.append("points marked (smoke) are smoke runs")
    return "\n".join(textwrap.fill(part, 100) for part in parts)


def _new_figure(title: str, note: str, height: float = 4.2) -> tuple[Figure, Axes]:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.4, height), layout="constrained")
    FigureCanvasAgg(fig)  # the Agg canvas: renders PNGs without a display or pyplot's global state
    ax = fig.add_subplot()
    fig.suptitle(title)
    ax.set_title(note, fontsize="x-small", loc="left")
    return fig, ax


def _draw_references(ax: Axes, refs: References) -> None:
    if refs.teacher_acc is not None:
        ax.axhline(
            100 * refs.teacher_acc, color="black", linestyle="--", label=f"teacher {100 * refs.teacher_acc:.2f}%"
        )
    for i, (key, base) in enumerate(refs.baselines.items()):
        label = f"from scratch ({base.runs} runs{'' if len(refs.baselines) == 1 else ', ' + key})"
        color = f"C{7 + i % 3}"
        ax.axhspan(100 * (base.mean - base.std), 100 * (base.mean + base.std), color=color, alpha=0.25, linewidth=0)
        ax.axhline(100 * base.mean, color=color, linewidth=1, label=label)


def plot_accuracy_vs(key: str, sweep: Sweep, refs: References, note: str) -> Figure | None:
    """Test accuracy against one numeric swept key, error bars = std over seeds.

    With other swept keys, one line per setting of them; where every setting occurs once (an Optuna
    search samples each value once) the points are not joined: a line would suggest a trend.
    """
    measured = [row for row in sweep.rows if row.stats("test/acc") is not None]
    if not measured:
        return None
    fig, ax = _new_figure(f"Student test accuracy vs {key}", note)
    others = [k for k in sweep.keys if k != key]
    series: dict[str, list[Row]] = {}
    for row in measured:
        label = row.label(others) if others else ("(smoke)" if row.smoke else "")
        series.setdefault(label, []).append(row)
    joined = all(len(members) > 1 for members in series.values()) and len(series) <= 10
    if not joined:  # loose points; smoke runs still apart, so the subtitle's "(smoke)" holds here too
        series = {"": [r for r in measured if not r.smoke], "(smoke)": [r for r in measured if r.smoke]}
        series = {label: members for label, members in series.items() if members}
    for label, members in series.items():
        members = sorted(members, key=lambda r: float(r.value(key)))
        stats = [r.stats("test/acc") for r in members]
        ax.errorbar(
            [float(r.value(key)) for r in members],
            [100 * m for m, _ in stats],
            yerr=[100 * s for _, s in stats],
            marker="o",
            capsize=3,
            linestyle="-" if joined else "none",
            label=label or "student (mean ± std over seeds)",
        )
    _draw_references(ax, refs)
    ax.set_xlabel(key)
    ax.set_ylabel("test accuracy (%)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    return fig


def spread(wanted: list[float], gap: float, lo: float = 0.02, hi: float = 0.98) -> list[float]:
    """Heights for labels, each as near its wanted height as it can be while all stay `gap` apart.

    Heights are axes fractions; labels of points that coincide fan out instead of printing over each other.
    """
    order = sorted(range(len(wanted)), key=wanted.__getitem__)
    placed: list[float] = []
    for i in order:  # upwards: each at its point, or just above the previous label
        placed.append(max(wanted[i], lo, placed[-1] + gap if placed else lo))
    above = hi
    for j in reversed(range(len(placed))):  # then back down from the top, if the stack ran over it
        placed[j] = min(placed[j], above)
        above = placed[j] - gap
    heights = [0.0] * len(wanted)
    for i, height in zip(order, placed, strict=True):
        heights[i] = height
    return heights


def _limits(values: list[float], log: bool, margin: float) -> tuple[float, float]:
    lo, hi = min(values), max(values)
    if log:
        lo, hi = math.log10(lo), math.log10(hi)
    pad = margin * (hi - lo) if hi > lo else 0.3 if log else 1.0
    lo, hi = lo - pad, hi + pad
    return (10**lo, 10**hi) if log else (lo, hi)


def plot_accuracy_vs_params(sweep: Sweep, refs: References, note: str) -> Figure | None:
    """Where the students sit between the teacher and training the same net from scratch.

    Every setting's point carries its label; labels fan out in a column beside their points, joined to
    them by a thin line, because a sweep over distillation settings puts every student at the same x.
    """
    measured = [(row, row.stats("test/acc")) for row in sweep.rows if row.params is not None]
    measured = [(row, stats) for row, stats in measured if stats is not None]
    scratch = [base for base in refs.baselines.values() if base.params is not None]
    teacher = refs.teacher_acc is not None and refs.teacher_params is not None
    if not (measured or scratch or teacher):
        return None
    fig, ax = _new_figure(
        "Accuracy vs parameter count", note, height=max(4.2, 2.2 + LABEL_ROOM_IN * len(measured) * 1.1)
    )
    xs: list[float] = []
    ys: list[float] = []
    if teacher:
        ax.plot([refs.teacher_params], [100 * refs.teacher_acc], "s", color="black", markersize=8, label="teacher")
        xs.append(refs.teacher_params)
        ys.append(100 * refs.teacher_acc)
    for i, base in enumerate(scratch):
        ax.errorbar(
            [base.params],
            [100 * base.mean],
            yerr=[100 * base.std],
            fmt="D",
            color=f"C{7 + i % 3}",
            capsize=3,
            label=f"from scratch ({base.runs} runs)",
        )
        xs.append(base.params)
        ys += [100 * (base.mean - base.std), 100 * (base.mean + base.std)]
    if measured:
        ax.errorbar(
            [row.params for row, _ in measured],
            [100 * m for _, (m, _) in measured],
            yerr=[100 * s for _, (_, s) in measured],
            fmt="o",
            alpha=0.6,
            capsize=3,
            label=f"{'distilled' if sweep.distilled else 'trained'} (each setting, labelled)",
        )
        xs += [row.params for row, _ in measured]
        ys += [100 * (m + sign * s) for _, (m, s) in measured for sign in (-1, 1)]
    best = sweep.best
    if best is not None and best.params is not None and best.stats("test/acc") is not None:
        ax.plot(
            [best.params],
            [100 * best.stats("test/acc")[0]],
            "*",
            color="C3",
            markersize=14,
            label="best by val acc",  # its setting is the label beside it
        )
    ax.set_xscale("log")
    ax.set_xlim(*_limits(xs, log=True, margin=0.25))  # fixed limits: the labels are placed against them
    ax.set_ylim(*_limits(ys, log=False, margin=0.15))
    ax.set_xlabel("parameters")
    ax.set_ylabel("test accuracy (%)")
    ax.grid(alpha=0.3, which="both")
    fig.legend(loc="outside lower center", ncols=2, fontsize="small")
    _label_points(fig, ax, [(row.label(sweep.keys), row.params, 100 * stats[0]) for row, stats in measured])
    return fig


def _label_points(fig: Figure, ax: Axes, points: list[tuple[str, float, float]]) -> None:
    """Each label beside its point (right of it, or left in the right half), fanned out to stay readable."""
    if not points:
        return
    fig.draw_without_rendering()  # settle the layout, so the axes' height in points is known
    to_axes = ax.transAxes.inverted()
    frac = [to_axes.transform(ax.transData.transform((x, y))) for _, x, y in points]
    axes_height_pt = ax.get_position().height * fig.get_figheight() * 72
    heights = spread([float(f[1]) for f in frac], gap=LABEL_GAP_PT / axes_height_pt)
    for (label, x, y), (fx, _), height in zip(points, frac, heights, strict=True):
        right = fx < 0.6
        ax.annotate(
            label,
            xy=(x, y),
            xytext=(fx + (0.06 if right else -0.06), height),
            textcoords="axes fraction",
            ha="left" if right else "right",
            va="center",
            fontsize="x-small",
            arrowprops={"arrowstyle": "-", "color": "0.5", "linewidth": 0.5, "shrinkB": 3},
        )


def safe_name(key: str) -> str:
    return "".join(c if c.isalnum() or c in "._-" else "_" for c in key)


def figures(sweep: Sweep, refs: References) -> dict[str, Any]:
    """name -> Figure: `acc_vs_<key>` per numeric swept key, and `acc_vs_params`; plots with no point are left out."""
    note = subtitle(sweep)
    keys = numeric_keys(sweep.rows, sweep.keys)
    drawn = {f"acc_vs_{safe_name(k)}": plot_accuracy_vs(k, sweep, refs, note) for k in keys}
    drawn["acc_vs_params"] = plot_accuracy_vs_params(sweep, refs, note)
    return {name: fig for name, fig in drawn.items() if fig is not None}
