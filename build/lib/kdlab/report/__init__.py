"""Sweep reports: one row per swept setting, averaged over seeds, as Markdown, PNG plots and TensorBoard.

A sweep folder (`outputs/<name>/multirun/<time>/`) holds one folder per job with its run record
(`metrics.json`, read through `kdlab.record.RunRecord`) and Hydra's `.hydra/overrides.yaml`. Jobs
that diverged, failed, were interrupted or never finished are listed by folder, never averaged.
An Optuna sweep is a sweep folder too, plus the sweeper's `optimization_results.yaml`.

    load       job folders -> Job (record, overrides, how it ended)
    aggregate  jobs -> swept keys, common settings, rows (mean ± std over seeds), best by validation
    baselines  the teacher and from-scratch references, and how to train a missing baseline
    markdown   report.md and the printed text       plots  the PNGs (matplotlib, imported lazily)
    tensorboard_export, optuna_best, formatting     write  write_report(), the entry point
"""

from kdlab.report.aggregate import Row, Sweep, best_by_validation, common_settings, mean_std, swept_keys
from kdlab.report.load import Job, load_jobs
from kdlab.report.write import REPORT_FILE, TENSORBOARD_DIR, Report, write_report

__all__ = [
    "REPORT_FILE",
    "TENSORBOARD_DIR",
    "Job",
    "Report",
    "Row",
    "Sweep",
    "best_by_validation",
    "common_settings",
    "load_jobs",
    "mean_std",
    "swept_keys",
    "write_report",
]
