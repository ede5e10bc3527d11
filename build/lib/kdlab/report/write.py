"""Putting a report together: read the sweep, write report.md, the PNGs and tensorboard/."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kdlab.report import markdown, plots
from kdlab.report.aggregate import Row, Sweep, summarise
from kdlab.report.baselines import References, references
from kdlab.report.load import Job, load_jobs
from kdlab.report.optuna_best import optuna_summary
from kdlab.report.tensorboard_export import write_tensorboard

REPORT_FILE = "report.md"
TENSORBOARD_DIR = "tensorboard"


@dataclass
class Report:
    sweep_dir: Path
    sweep: Sweep
    refs: References
    table: str  # the Markdown table alone
    text: str  # what scripts/report.py prints: report.md without the images
    files: list[Path] = field(default_factory=list)  # everything written: report.md, the PNGs, tensorboard/
    plots_skipped: str | None = None  # why there are no PNGs, when there are none
    figures: dict[str, Any] = field(default_factory=dict)  # name -> matplotlib Figure, as saved

    @property
    def jobs(self) -> list[Job]:
        return self.sweep.jobs

    @property
    def keys(self) -> list[str]:
        return self.sweep.keys

    @property
    def common(self) -> list[str]:
        return self.sweep.common

    @property
    def rows(self) -> list[Row]:
        return self.sweep.rows

    @property
    def problems(self) -> list[Job]:
        return self.sweep.problems


def _title(sweep: Sweep, sweep_dir: Path) -> str:
    names = [job.record.name for job in sweep.jobs if job.record is not None and job.record.name]
    return names[0] if names else sweep_dir.name


def write_report(sweep_dir: str | Path, out_dir: str | Path | None = None) -> Report:
    """Read the sweep, write report.md, the PNGs and tensorboard/ into `out_dir` (default: the sweep folder).

    Jobs that diverged, failed, were interrupted or never finished are listed, not averaged; only a
    folder with no run record at all is an error (FileNotFoundError).
    """
    sweep_dir = Path(sweep_dir)
    sweep = summarise(load_jobs(sweep_dir))
    out = Path(out_dir) if out_dir is not None else sweep_dir
    out.mkdir(parents=True, exist_ok=True)
    refs = references(sweep.jobs)

    skipped = plots.unavailable()
    figures = {} if skipped else plots.figures(sweep, refs)
    pngs = {name: out / f"{name}.png" for name in figures}
    for name, fig in figures.items():
        fig.savefig(pngs[name], dpi=110)
    write_tensorboard(out / TENSORBOARD_DIR, pngs, sweep)
    files = [*pngs.values(), out / TENSORBOARD_DIR]

    table = markdown.markdown_table(*markdown.table_rows(sweep))
    extra = [note for note in (optuna_summary(sweep_dir, sweep.jobs), skipped) if note]
    lines = markdown.document(_title(sweep, sweep_dir), str(sweep_dir), sweep, refs, table, extra)
    images = [f"![{name}]({name}.png)" for name in figures]
    (out / REPORT_FILE).write_text("\n".join([*lines, "", *images, ""]) if images else "\n".join([*lines, ""]))
    files.insert(0, out / REPORT_FILE)
    return Report(sweep_dir, sweep, refs, table, "\n".join(lines), files, skipped, figures)
