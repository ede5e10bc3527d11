"""Sweep reports: one row per swept setting, averaged over seeds, as Markdown and PNG plots.

A sweep folder (`outputs/<name>/multirun/<time>/`) holds one folder per job with its run record
(`metrics.json`, read through `kdlab.record.RunRecord`) and Hydra's `.hydra/overrides.yaml`. Jobs
that diverged, failed, were interrupted or never finished are listed by folder, never averaged.
An Optuna sweep is a sweep folder too, plus the sweeper's `optimization_results.yaml`.

    load        job folders -> Job (record, overrides, how it ended)
    aggregate   jobs -> swept keys, common settings, rows (mean ± std over seeds), best by validation
    baselines   the teacher and from-scratch references, and how to train a missing baseline
    markdown    report.md and the printed text          plots  the PNGs (matplotlib, imported lazily)
    formatting  how numbers read (in run summaries and the run listing too)

The report writes no TensorBoard events: `tensorboard --logdir outputs` read a report's copy of the
jobs as one more run, whose HPARAMS table took over the jobs' own.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kdlab.report import markdown, plots
from kdlab.report.aggregate import Sweep, common_settings, group_rows, swept_keys
from kdlab.report.baselines import references
from kdlab.report.load import load_jobs

__all__ = ["Report", "load_jobs", "swept_keys", "write_report"]

REPORT_FILE = "report.md"


@dataclass
class Report(Sweep):
    """The sweep as reported (its jobs, keys, common settings, rows), and what was written."""

    table: str = ""  # the Markdown table alone
    text: str = ""  # what scripts/report.py prints: report.md without the images
    files: list[Path] = field(default_factory=list)  # everything written: report.md and the PNGs
    figures: dict[str, Any] = field(default_factory=dict)  # name -> matplotlib Figure, as saved


def write_report(sweep_dir: str | Path, out_dir: str | Path | None = None) -> Report:
    """Read the sweep, write report.md and the PNGs into `out_dir` (default: the sweep folder).

    Jobs that diverged, failed, were interrupted or never finished are listed, not averaged; only a
    folder with no run record at all is an error (FileNotFoundError).
    """
    sweep_dir = Path(sweep_dir)
    jobs = load_jobs(sweep_dir)
    keys = swept_keys(jobs)
    sweep = Sweep(jobs, keys, common_settings(jobs, keys), group_rows(jobs, keys))
    out = Path(out_dir) if out_dir is not None else sweep_dir
    out.mkdir(parents=True, exist_ok=True)
    refs = references(jobs)
    skipped = plots.unavailable()
    figures = {} if skipped else plots.figures(sweep, refs)
    for name, fig in figures.items():
        fig.savefig(out / f"{name}.png", dpi=110)
    table = markdown.markdown_table(sweep)
    lines = markdown.document(sweep_dir, sweep, refs, table, skipped)
    images = [f"![{name}]({name}.png)" for name in figures]
    (out / REPORT_FILE).write_text("\n".join([*lines, *(["", *images] if images else []), ""]))
    files = [out / REPORT_FILE, *(out / f"{name}.png" for name in figures)]
    return Report(jobs, keys, sweep.common, sweep.rows, table, "\n".join(lines), files, figures)
