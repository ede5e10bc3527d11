"""Sweep reports: one row per swept setting, averaged over seeds, as Markdown and PNG plots.

A sweep folder (`outputs/<name>/multirun/<time>/`) holds one folder per job with its run record
(`metrics.json`, read through `kdlab.record.RunRecord`) and Hydra's `.hydra/overrides.yaml`. Jobs
that diverged, failed, were interrupted or never finished are listed by folder, never averaged.
An Optuna sweep is a sweep folder too, plus the sweeper's `optimization_results.yaml`.

    load        job folders -> Job (record, overrides, how it ended)
    aggregate   jobs -> swept keys, common settings, rows (mean ± std over seeds), best by validation
    baselines   the teacher and from-scratch references, and how to train a missing baseline
    paired      the paired difference over seeds and its t-interval     compare  which rows are paired
    markdown    report.md and the printed text          plots  the PNGs (matplotlib, imported lazily)
    formatting  how numbers read (in run summaries and the run listing too)

The report writes no TensorBoard events: `tensorboard --logdir outputs` read a report's copy of the
jobs as one more run, whose HPARAMS table took over the jobs' own.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kdlab.report import compare, markdown, plots
from kdlab.report.aggregate import Sweep, common_settings, group_rows, swept_keys
from kdlab.report.baselines import references
from kdlab.report.compare import ComparisonError
from kdlab.report.load import load_jobs

__all__ = ["ComparisonError", "Report", "load_jobs", "read_sweep", "swept_keys", "write_report"]

REPORT_FILE = "report.md"


@dataclass
class Report(Sweep):
    """The sweep as reported (its jobs, keys, common settings, rows), and what was written."""

    table: str = ""  # the Markdown table alone
    text: str = ""  # what scripts/report.py prints: report.md without the images
    files: list[Path] = field(default_factory=list)  # everything written: report.md and the PNGs
    figures: dict[str, Any] = field(default_factory=dict)  # name -> matplotlib Figure, as saved


def read_sweep(sweep_dir: str | Path) -> Sweep:
    """A sweep folder's jobs, swept keys, common settings and rows (FileNotFoundError if it has no record)."""
    jobs = load_jobs(sweep_dir)
    keys = swept_keys(jobs)
    return Sweep(jobs, keys, common_settings(jobs, keys), group_rows(jobs, keys))


def write_report(
    sweep_dir: str | Path,
    out_dir: str | Path | None = None,
    compare_settings: list[tuple[str, str]] | None = None,
    against: list[str | Path] | None = None,
    rank_against: str | None = None,
) -> Report:
    """Read the sweep, write report.md and the PNGs into `out_dir` (default: the sweep folder).

    Every distilled row is paired seed by seed with its scratch baseline; `compare_settings` adds pairs of
    rows by setting ("distill.temperature=4", "distill.temperature=8"), `against` pairs each row with its
    counterpart in other sweep folders; `rank_against` ("distill=kd") ranks every row by its paired difference
    to that row (a method table). Jobs that diverged, failed, were interrupted or never finished are
    listed, not averaged. A folder with no run record is a FileNotFoundError, a comparison that names no
    single row a ComparisonError: both raised before anything is written.
    """
    sweep_dir = Path(sweep_dir)
    sweep = read_sweep(sweep_dir)
    jobs, keys = sweep.jobs, sweep.keys
    refs = references(jobs)
    scratch = compare.versus_scratch(sweep, refs)
    comparisons = [*scratch]
    comparisons += [compare.between_settings(sweep, a, b) for a, b in compare_settings or []]
    for other in against or []:
        comparisons += compare.against_sweep(sweep, read_sweep(other), f"`{other}`")
    ranking = []
    if rank_against:
        ranked = compare.ranked_against(sweep, rank_against)
        reference = compare.seed_accs(compare.pick_row(sweep, rank_against))
        unfinished = [row.label(keys) for row in sweep.rows if not row.jobs and row.others]
        ranking = markdown.ranking_lines(rank_against, ranked, reference, unfinished)
    out = Path(out_dir) if out_dir is not None else sweep_dir
    out.mkdir(parents=True, exist_ok=True)
    skipped = plots.unavailable()
    figures = {} if skipped else plots.figures(sweep, refs)
    for name, fig in figures.items():
        fig.savefig(out / f"{name}.png", dpi=110)
    table = markdown.markdown_table(sweep, scratch)
    lines = markdown.document(sweep_dir, sweep, refs, table, skipped, comparisons, ranking)
    images = [f"![{name}]({name}.png)" for name in figures]
    (out / REPORT_FILE).write_text("\n".join([*lines, *(["", *images] if images else []), ""]))
    files = [out / REPORT_FILE, *(out / f"{name}.png" for name in figures)]
    return Report(jobs, keys, sweep.common, sweep.rows, table, "\n".join(lines), files, figures)
