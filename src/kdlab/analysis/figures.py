"""The analysis figures, drawn on matplotlib's Agg canvas (no display, no pyplot global state).

matplotlib is imported only when a figure is drawn, so the numbers never depend on it: without it
`require_matplotlib` raises ImportError with the install hint and the caller skips the PNGs.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

PLOTS_HINT = "pip install 'kdlab[plots]'"


def require_matplotlib() -> tuple[Any, Any]:
    """(Figure, FigureCanvasAgg), or ImportError saying how to get them."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as err:
        raise ImportError(f"matplotlib is not installed ({err}); {PLOTS_HINT} draws the analysis figures") from err
    return Figure, FigureCanvasAgg


def _figure(width: float, height: float):
    Figure, FigureCanvasAgg = require_matplotlib()
    fig = Figure(figsize=(width, height), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def rgb_array(fig) -> np.ndarray:
    """The rendered figure as an [H, W, 3] uint8 array (TensorBoard's `add_image(..., dataformats="HWC")`)."""
    fig.canvas.draw()
    return np.asarray(fig.canvas.buffer_rgba())[..., :3].copy()


def save_png(rgb: np.ndarray, path: Path) -> Path:
    """Write an `rgb_array` as PNG (no second render of the figure)."""
    from matplotlib.image import imsave

    path.parent.mkdir(parents=True, exist_ok=True)
    imsave(path, rgb)
    return path


def percent(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.2f}%"


def confusion_figure(counts: list[list[int]], title: str):
    """Counts in each cell, colour by the share of the true class (rows sum to 1), so errors stand out."""
    table = np.asarray(counts, dtype=np.int64)
    n = len(table)
    rows = table.sum(axis=1, keepdims=True)
    share = np.divide(table, rows, out=np.zeros(table.shape), where=rows > 0)
    fig = _figure(0.5 * n + 2.0, 0.5 * n + 1.2)
    ax = fig.add_subplot()
    image = ax.imshow(share, cmap="Blues", vmin=0.0, vmax=1.0)
    fig.colorbar(image, ax=ax, label="share of the true class", shrink=0.8)
    for i in range(n):
        for j in range(n):
            if table[i, j]:
                colour = "white" if share[i, j] > 0.5 else "black"
                ax.text(j, i, str(table[i, j]), ha="center", va="center", fontsize=7, color=colour)
    ax.set(xticks=range(n), yticks=range(n), xlabel="predicted class", ylabel="true class", title=title)
    return fig


def reliability_figure(models: dict[str, dict[str, Any]], n_bins: int):
    """One panel per model: accuracy per confidence bin against the diagonal of perfect calibration.

    `models` maps a name ("student", "teacher") to its `model_summary` (keys "reliability", "ece").
    """
    fig = _figure(4.0 * len(models), 4.2)
    width = 1.0 / n_bins
    centres = (np.arange(n_bins) + 0.5) * width
    for k, (name, summary) in enumerate(models.items()):
        ax = fig.add_subplot(1, len(models), k + 1)
        table = summary["reliability"]
        acc = np.array([np.nan if a is None else a for a in table["accuracy"]])
        conf = np.array([np.nan if c is None else c for c in table["confidence"]])
        filled = ~np.isnan(acc)
        x, acc, gap = centres[filled], acc[filled], (conf - acc)[filled]
        ax.bar(x, acc, width=width, color="tab:blue", alpha=0.8, edgecolor="black", linewidth=0.5, label="accuracy")
        # From accuracy to the bin's mean confidence: above the blue bar = overconfident, inside it = under.
        ax.bar(x, gap, bottom=acc, width=width, fill=False, hatch="//", edgecolor="tab:red", linewidth=0.5,
               label="gap to mean confidence")  # fmt: skip
        ax.plot([0, 1], [0, 1], "--", color="gray", linewidth=1, label="perfect calibration")
        ax.set(xlim=(0, 1), ylim=(0, 1), aspect="equal", xlabel="top-1 confidence", ylabel="accuracy")
        ax.set_title(f"{name}: ECE {percent(summary['ece'])} ({n_bins} bins)")
        ax.legend(loc="upper left", fontsize=7)
    return fig


def disagreement_figure(images: np.ndarray, student: list[int], teacher: list[int], labels: list[int], total: int):
    """A grid of [K, C, H, W] uint8 test images, each titled with both predictions and the label.

    Three channels are drawn in colour (as RGB); any other count in grey, from the first channel only.
    One mosaic image on one axes with K text labels: 64 subplots would take ~10 s to lay out and draw.
    """
    images = images.reshape(len(images), -1, *images.shape[-2:])  # [K, H, W] (one channel) is read as [K, 1, H, W]
    colour = images.shape[1] == 3
    count, (h, w) = len(images), images.shape[-2:]
    cols = min(8, count)
    rows = math.ceil(count / cols)
    cell_h, cell_w, band = h + 12, w + 4, 12  # pixels: a title band above each image, a gap beside it
    mosaic = np.full((rows * cell_h, cols * cell_w, 3 if colour else 1), 255, dtype=np.uint8)  # white between
    for k in range(count):
        top, left = (k // cols) * cell_h + band, (k % cols) * cell_w + 2
        mosaic[top : top + h, left : left + w] = (images[k] if colour else images[k, :1]).transpose(1, 2, 0)
    fig = _figure(1.1 * cols, 1.25 * rows + 0.3)
    fig.set_layout_engine(None)
    ax = fig.add_axes((0.0, 0.0, 1.0, 1.0 - 0.3 / (1.25 * rows + 0.3)))
    ax.imshow(mosaic if colour else mosaic[..., 0], cmap=None if colour else "gray", vmin=0, vmax=255,
              interpolation="nearest")  # fmt: skip
    for k in range(count):
        x, y = (k % cols) * cell_w + cell_w / 2, (k // cols) * cell_h + band - 2
        ax.text(x, y, f"S:{student[k]} T:{teacher[k]} (y={labels[k]})", ha="center", va="bottom", fontsize=7)
    ax.set_axis_off()
    shown = "" if colour or images.shape[1] == 1 else f", channel 0 of {images.shape[1]}"
    fig.suptitle(f"student vs teacher: {count} of {total} disagreements{shown}", fontsize=9, y=0.995, va="top")
    return fig
