"""The sweep as PNG plots: test accuracy against each numeric swept key, and against parameter count.

matplotlib is imported inside the functions only: without it the report still writes report.md and
says how to get the plots. Each plot's subtitle carries the settings every job shared and the jobs
it leaves out, so a figure copied on its own still says what it shows.
"""

from __future__ import annotations

import math
import textwrap
from typing import TYPE_CHECKING, Any

from kdlab.report.aggregate import Row, Sweep
from kdlab.report.baselines import References

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

LABEL_GAP_PT = 11.0  # vertical room per point label: an x-small line (8.3 pt font, ~10 pt high) plus air
LABEL_STYLE = {  # beside the point, joined to it by a thin grey line
    "textcoords": "axes fraction",
    "va": "center",
    "fontsize": "x-small",
    "arrowprops": {"arrowstyle": "-", "color": "0.5", "linewidth": 0.5, "shrinkB": 3},
}


def unavailable() -> str | None:
    """Why plots cannot be drawn here (matplotlib missing), or None when they can."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return (
            "Plots skipped: matplotlib is not installed. Install it with `pip install 'kdlab[plots]'` (or `pip install "
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


def _errorbars(ax: Axes, xs: list[float], stats: list[tuple[float, float]], **style: Any) -> None:
    """Means ± sample stds of fractions, in percent."""
    ax.errorbar(xs, [100 * m for m, _ in stats], yerr=[100 * s for _, s in stats], capsize=3, **style)


def _draw_references(ax: Axes, refs: References) -> None:
    if refs.teacher_acc is not None:
        teacher = 100 * refs.teacher_acc
        ax.axhline(teacher, color="black", linestyle="--", label=f"teacher {teacher:.2f}%")
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
        series.setdefault(row.label(others) if others else ("(smoke)" if row.smoke else ""), []).append(row)
    joined = all(len(members) > 1 for members in series.values()) and len(series) <= 10
    if not joined:  # loose points; smoke runs still apart, so the subtitle's "(smoke)" holds here too
        series = {"": [r for r in measured if not r.smoke], "(smoke)": [r for r in measured if r.smoke]}
    for label, members in series.items():
        members = sorted(members, key=lambda r: float(r.value(key)))
        xs, stats = [float(r.value(key)) for r in members], [r.stats("test/acc") for r in members]
        label = label or "student (mean ± std over seeds)"
        if members:
            _errorbars(ax, xs, stats, marker="o", linestyle="-" if joined else "none", label=label)
    _draw_references(ax, refs)
    ax.set(xlabel=key, ylabel="test accuracy (%)")
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
    heights = dict(zip(order, placed, strict=True))
    return [heights[i] for i in range(len(wanted))]


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
    height = max(4.2, 2.2 + LABEL_GAP_PT / 72 * len(measured) * 1.1)  # inches: room for every label
    fig, ax = _new_figure("Accuracy vs parameter count", note, height=height)
    if teacher:
        ax.plot([refs.teacher_params], [100 * refs.teacher_acc], "s", color="black", markersize=8, label="teacher")
    for i, base in enumerate(scratch):
        style = {"fmt": "D", "color": f"C{7 + i % 3}", "label": f"from scratch ({base.runs} runs)"}
        _errorbars(ax, [base.params], [(base.mean, base.std)], **style)
    if measured:
        label = f"{'distilled' if sweep.distilled else 'trained'} (each setting, labelled)"
        _errorbars(ax, [row.params for row, _ in measured], [s for _, s in measured], fmt="o", alpha=0.6, label=label)
    best = sweep.best
    if best is not None and best.params is not None and best.stats("test/acc") is not None:  # labelled: its setting
        ax.plot([best.params], [100 * best.mean("test/acc")], "*", color="C3", markersize=14, label="best by val acc")
    # fixed limits around every point and error bar: the labels are placed against them
    bars = [(base.params, base.mean, base.std) for base in scratch] + [(row.params, *stats) for row, stats in measured]
    xs = [x for x, _, _ in bars] + ([refs.teacher_params] if teacher else [])
    ys = [100 * (m + sign * s) for _, m, s in bars for sign in (-1, 1)] + ([100 * refs.teacher_acc] if teacher else [])
    ax.set(xscale="log", xlabel="parameters", ylabel="test accuracy (%)")
    ax.set_xlim(*_limits(xs, log=True, margin=0.25))
    ax.set_ylim(*_limits(ys, log=False, margin=0.15))
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
        xytext = (fx + (0.06 if right else -0.06), height)
        ax.annotate(label, xy=(x, y), xytext=xytext, ha="left" if right else "right", **LABEL_STYLE)


def figures(sweep: Sweep, refs: References) -> dict[str, Any]:
    """name -> Figure: `acc_vs_<key>` per numeric swept key, and `acc_vs_params`; plots with no point are left out."""
    note = subtitle(sweep)
    drawn = {
        "acc_vs_" + "".join(c if c.isalnum() or c in "._-" else "_" for c in k): plot_accuracy_vs(k, sweep, refs, note)
        for k in sweep.numeric_keys
    }
    drawn["acc_vs_params"] = plot_accuracy_vs_params(sweep, refs, note)
    return {name: fig for name, fig in drawn.items() if fig is not None}
