"""Sweep reports: one row per swept setting, averaged over seeds, as Markdown, PNG plots and TensorBoard.

A sweep folder (`outputs/<name>/multirun/<time>/`) holds one folder per job with `metrics.json` and
`.hydra/overrides.yaml`. The swept keys are the overrides whose values differ between jobs, except
`seed`, which is what gets averaged over: `distill.temperature=1,4,8 seed=0,1,2` gives three rows of
n=3. An Optuna sweep is a sweep folder too (one job per trial, every trial its own row), plus the
sweeper's `optimization_results.yaml`, whose best trial the report quotes.
"""

from __future__ import annotations

import math
import shutil
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from hydra.core.override_parser.overrides_parser import OverridesParser
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from kdlab.summary import METRICS_FILE

SEED_KEY = "seed"
REPORT_FILE = "report.md"
TENSORBOARD_DIR = "tensorboard"
OPTUNA_FILE = "optimization_results.yaml"  # written by hydra-optuna-sweeper at the end of a search
UNSET = "(unset)"  # a swept key that some jobs do not override at all


@dataclass
class Job:
    """One finished job: its folder, its metrics.json, and its overrides as typed and as parsed."""

    name: str  # the folder relative to the sweep folder, e.g. "3"
    metrics: dict[str, Any]
    overrides: dict[str, str]  # key -> value as typed, e.g. "distill.temperature" -> "4"
    values: dict[str, Any]  # key -> the value Hydra parsed from it (int, float, str, list, ...)


@dataclass
class Row:
    """The jobs that share one setting of the swept keys: they differ only in their seed."""

    setting: dict[str, str]  # swept key -> value as typed (UNSET where a job leaves it out)
    jobs: list[Job]

    def value(self, key: str) -> Any:
        return self.jobs[0].values.get(key)

    def stats(self, metric: str) -> tuple[float, float] | None:
        """Mean and sample std (ddof=1, as the scratch baseline) over the jobs; std 0 when n=1."""
        return mean_std([job.metrics[metric] for job in self.jobs if metric in job.metrics])


@dataclass
class Report:
    sweep_dir: Path
    jobs: list[Job]
    keys: list[str]  # the swept keys, in the order they were typed
    rows: list[Row]
    table: str  # the Markdown table, also printed by scripts/report.py
    files: list[Path]  # everything written: report.md, the PNGs, the TensorBoard folder


def mean_std(values: list[float]) -> tuple[float, float] | None:
    if not values:
        return None
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


# -- reading the sweep ------------------------------------------------------------------------------


def _folder_order(rel: Path) -> tuple:
    """Job folders in numeric order: 2 before 10."""
    return tuple((0, int(p), "") if p.isdigit() else (1, 0, p) for p in rel.parts)


def _parse_overrides(lines: list[str]) -> tuple[dict[str, str], dict[str, Any]]:
    typed, values = {}, {}
    for override in OverridesParser.create().parse_overrides(lines):
        key = override.get_key_element()  # keeps ~ and + prefixes: deleting a key is its own setting
        typed[key] = override.get_value_element_as_str()
        values[key] = override.value()
    return typed, values


def load_jobs(sweep_dir: str | Path) -> list[Job]:
    """Every job under `sweep_dir` that finished, i.e. wrote metrics.json, in job-number order."""
    sweep_dir = Path(sweep_dir)
    if not sweep_dir.is_dir():
        raise FileNotFoundError(f"Sweep folder {sweep_dir} does not exist or is not a folder.")
    paths = sorted(sweep_dir.rglob(METRICS_FILE), key=lambda p: _folder_order(p.parent.relative_to(sweep_dir)))
    if not paths:
        raise FileNotFoundError(
            f"No {METRICS_FILE} under {sweep_dir} (searched {sweep_dir}/**/{METRICS_FILE}). A job writes it "
            "when it finishes, so the sweep may still be running or its jobs failed: look at the job folders' "
            "*.log files (and .submitit/*/*.err for the submitit launchers), or check the path is a sweep "
            "folder such as outputs/<name>/multirun/<time>."
        )
    jobs = []
    for path in paths:
        metrics = yaml.safe_load(path.read_text())  # JSON is YAML; one parser for both files
        hydra_overrides = path.parent / ".hydra" / "overrides.yaml"
        lines = yaml.safe_load(hydra_overrides.read_text()) if hydra_overrides.is_file() else None
        typed, values = _parse_overrides(lines if lines is not None else metrics.get("overrides", []))
        jobs.append(Job(path.parent.relative_to(sweep_dir).as_posix(), metrics, typed, values))
    return jobs


def unfinished_jobs(sweep_dir: Path, jobs: list[Job]) -> list[str]:
    """Job folders Hydra started (they have .hydra/) that have no metrics.json: failed or running."""
    started = {
        p.parent.parent.relative_to(sweep_dir) for p in sweep_dir.rglob("overrides.yaml") if p.parent.name == ".hydra"
    }
    started = {rel for rel in started if rel.parts}  # not the sweep folder itself
    finished = {job.name for job in jobs}
    return [rel.as_posix() for rel in sorted(started, key=_folder_order) if rel.as_posix() not in finished]


def swept_keys(jobs: list[Job]) -> list[str]:
    """Override keys whose value differs between jobs, except the seed that is averaged over."""
    keys = dict.fromkeys(key for job in jobs for key in job.overrides)
    return [k for k in keys if k != SEED_KEY and len({job.overrides.get(k, UNSET) for job in jobs}) > 1]


def _sort_key(value: Any, typed: str) -> tuple:
    if _is_number(value):
        return (0, float(value), "")
    return (1, 0.0, typed)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def group_rows(jobs: list[Job], keys: list[str]) -> list[Row]:
    """One row per distinct setting of `keys`, sorted by those values (numbers numerically)."""
    groups: dict[tuple[str, ...], list[Job]] = {}
    for job in jobs:
        groups.setdefault(tuple(job.overrides.get(k, UNSET) for k in keys), []).append(job)
    rows = [Row(dict(zip(keys, setting, strict=True)), members) for setting, members in groups.items()]
    return sorted(rows, key=lambda row: tuple(_sort_key(row.value(k), row.setting[k]) for k in keys))


def numeric_keys(rows: list[Row], keys: list[str]) -> list[str]:
    return [k for k in keys if all(_is_number(row.value(k)) for row in rows)]


def scratch_baselines(jobs: list[Job]) -> dict[str, dict[str, Any]]:
    """Per student recipe, the from-scratch baseline the distillation jobs found when they finished.

    Jobs that finished later may have seen more scratch runs, so the one that saw the most wins.
    """
    found: dict[str, dict[str, Any]] = {}
    for job in jobs:
        m = job.metrics
        if "scratch/acc_mean" in m and m.get("scratch/runs", 0) > found.get(m["student_key"], {}).get("runs", 0):
            found[m["student_key"]] = {
                "mean": m["scratch/acc_mean"],
                "std": m["scratch/acc_std"],
                "runs": m["scratch/runs"],
                "params": m["params/student"],
            }
    return found


def _metric_mean(jobs: list[Job], metric: str) -> float | None:
    stats = mean_std([job.metrics[metric] for job in jobs if metric in job.metrics])
    return None if stats is None else stats[0]


def best_by_validation(rows: list[Row]) -> Row | None:
    """The setting to pick: highest mean val/acc_best. The test set only reports it."""
    scored = [(row.stats("val/acc_best"), row) for row in rows]
    scored = [(stats[0], row) for stats, row in scored if stats is not None]
    return max(scored, key=lambda pair: pair[0])[1] if scored else None


# -- the Markdown table -----------------------------------------------------------------------------


def _short(value: Any, typed: str) -> str:
    """Swept values as typed, except Optuna's long floats: 0.6347391263798 -> 0.6347."""
    return f"{value:.4g}" if isinstance(value, float) else typed


def _pct(stats: tuple[float, float] | None) -> str:
    return "-" if stats is None else f"{100 * stats[0]:.2f} ± {100 * stats[1]:.2f}"


def _mean_cell(row: Row, metric: str, fmt: str, scale: float = 1.0) -> str:
    stats = row.stats(metric)
    return "-" if stats is None else format(scale * stats[0], fmt)


def table_rows(rows: list[Row], keys: list[str]) -> tuple[list[str], list[list[str]]]:
    distilled = any(job.metrics.get("module") == "DistillationModule" for row in rows for job in row.jobs)
    header = [
        *keys,
        "n seeds",
        f"{'student ' if distilled else ''}test acc (%)",
        "val acc best (%)",
        "teacher acc (%)",
        "agreement (%)",
        "KL",
        "params",
        "wall time (s)",
    ]
    body = []
    for row in rows:
        params = row.jobs[0].metrics.get("params/student")
        body.append(
            [
                *(_short(row.value(k), row.setting[k]) for k in keys),
                str(len(row.jobs)),
                _pct(row.stats("test/acc")),
                _pct(row.stats("val/acc_best")),
                _mean_cell(row, "test/teacher_acc", ".2f", 100),
                _mean_cell(row, "test/agreement", ".2f", 100),
                _mean_cell(row, "test/kl", ".4f"),
                "-" if params is None else f"{params:,}",
                _mean_cell(row, "wall_time_s", ".1f"),
            ]
        )
    return header, body


def markdown_table(header: list[str], body: list[list[str]]) -> str:
    """Padded so that the raw text printed to a terminal reads as a table too."""
    widths = [max(len(cell) for cell in column) for column in zip(header, *body, strict=True)]
    lines = [header, ["-" * w for w in widths], *body]
    return "\n".join("| " + " | ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)) + " |" for line in lines)


def _setting_text(row: Row, keys: list[str]) -> str:
    return ", ".join(f"{k}={_short(row.value(k), row.setting[k])}" for k in keys) or "all jobs"


def optuna_summary(sweep_dir: Path, jobs: list[Job]) -> str | None:
    """The Optuna sweeper's best trial, and which job folder ran it."""
    path = sweep_dir / OPTUNA_FILE
    if not path.is_file():
        return None
    result = yaml.safe_load(path.read_text())
    if "best_params" not in result:  # a multi-objective study has a Pareto front instead
        return f"Optuna results: see `{OPTUNA_FILE}`."
    params = result["best_params"]

    def ran_it(job: Job) -> bool:
        return all(
            _is_number(job.values.get(k)) and math.isclose(float(job.values[k]), float(v))
            if _is_number(v)
            else job.overrides.get(k) == str(v)
            for k, v in params.items()
        )

    folders = [job.name for job in jobs if ran_it(job)]
    where = f" (job folder {', '.join(folders)})" if folders else ""
    settings = ", ".join(f"{k}={_short(v, str(v))}" for k, v in params.items())
    return f"Optuna best trial{where}: {settings} with value {result['best_value']:.4f} (from `{OPTUNA_FILE}`)."


# -- plots ------------------------------------------------------------------------------------------


@dataclass
class References:
    """The lines a student is judged against: its teacher and the same net trained from scratch."""

    teacher_acc: float | None
    teacher_params: int | None
    scratch: dict[str, dict[str, Any]]  # student_key -> mean, std, runs, params


def _references(jobs: list[Job]) -> References:
    params = [job.metrics["params/teacher"] for job in jobs if "params/teacher" in job.metrics]
    return References(_metric_mean(jobs, "test/teacher_acc"), params[0] if params else None, scratch_baselines(jobs))


def _draw_references(ax, refs: References) -> None:
    if refs.teacher_acc is not None:
        ax.axhline(
            100 * refs.teacher_acc, color="black", linestyle="--", label=f"teacher {100 * refs.teacher_acc:.2f}%"
        )
    for i, (key, base) in enumerate(refs.scratch.items()):
        label = f"from scratch ({base['runs']} runs{'' if len(refs.scratch) == 1 else ', ' + key})"
        lo, hi = 100 * (base["mean"] - base["std"]), 100 * (base["mean"] + base["std"])
        color = f"C{7 + i % 3}"
        ax.axhspan(lo, hi, color=color, alpha=0.25, linewidth=0)
        ax.axhline(100 * base["mean"], color=color, linewidth=1, label=label)


def _new_figure() -> tuple[Figure, Any]:
    fig = Figure(figsize=(6.4, 4.2), layout="constrained")
    FigureCanvasAgg(fig)  # the Agg canvas: renders PNGs without a display or pyplot's global state
    return fig, fig.add_subplot()


def plot_accuracy_vs(key: str, rows: list[Row], keys: list[str], refs: References) -> Figure:
    """Test accuracy against one numeric swept key, error bars = std over seeds.

    With other swept keys, one line per setting of them; where every setting occurs once (an Optuna
    search samples each value once) the points are not joined: a line would suggest a trend.
    """
    fig, ax = _new_figure()
    others = [k for k in keys if k != key]
    series: dict[str, list[Row]] = {}
    for row in rows:
        series.setdefault(_setting_text(row, others) if others else "", []).append(row)
    joined = all(len(members) > 1 for members in series.values()) and len(series) <= 10
    if not joined:
        series = {"": rows}
    for label, members in series.items():
        members = sorted(members, key=lambda r: float(r.value(key)))
        stats = [r.stats("test/acc") or (math.nan, 0.0) for r in members]
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
    ax.set_title(f"Student test accuracy vs {key}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    return fig


def plot_accuracy_vs_params(rows: list[Row], keys: list[str], refs: References) -> Figure:
    """Where the students sit between the teacher and training the same net from scratch."""
    fig, ax = _new_figure()
    if refs.teacher_acc is not None and refs.teacher_params is not None:
        ax.plot([refs.teacher_params], [100 * refs.teacher_acc], "s", color="black", markersize=8, label="teacher")
    for i, base in enumerate(refs.scratch.values()):
        ax.errorbar(
            [base["params"]],
            [100 * base["mean"]],
            yerr=[100 * base["std"]],
            fmt="D",
            color=f"C{7 + i % 3}",
            capsize=3,
            label=f"from scratch ({base['runs']} runs)",
        )
    measured = [(row, row.stats("test/acc")) for row in rows if "params/student" in row.jobs[0].metrics]
    measured = [(row, stats) for row, stats in measured if stats is not None]
    distilled = any(row.jobs[0].metrics.get("module") == "DistillationModule" for row, _ in measured)
    ax.errorbar(
        [row.jobs[0].metrics["params/student"] for row, _ in measured],
        [100 * m for _, (m, _) in measured],
        yerr=[100 * s for _, (_, s) in measured],
        fmt="o",
        alpha=0.6,
        capsize=3,
        label=f"{'distilled' if distilled else 'trained'} (each setting)",
    )
    best = best_by_validation(rows)
    if best is not None and best.stats("test/acc") is not None:
        ax.plot(
            [best.jobs[0].metrics["params/student"]],
            [100 * best.stats("test/acc")[0]],
            "*",
            color="C3",
            markersize=14,
            label=f"best by val acc: {_setting_text(best, keys)}",
        )
    ax.set_xscale("log")
    ax.margins(x=0.2)  # keep the end points off the frame
    ax.set_xlabel("parameters")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title("Accuracy vs parameter count")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize="small")
    return fig


# -- TensorBoard ------------------------------------------------------------------------------------


def _hparam(value: Any) -> int | float | str | bool:
    """TensorBoard's hparams take scalars and strings only."""
    return value if isinstance(value, (int, float, str, bool)) else str(value)


def write_tensorboard(folder: Path, figures: dict[str, Figure], jobs: list[Job], keys: list[str]) -> None:
    """The plots as images, and one hparams entry per job so that the HPARAMS tab compares the sweep.

    The folder belongs to the report and is rewritten on each call, so entries never pile up.
    """
    from torch.utils.tensorboard import SummaryWriter  # imports torch: only when writing

    shutil.rmtree(folder, ignore_errors=True)
    with SummaryWriter(log_dir=str(folder)) as writer:
        for tag, fig in figures.items():
            writer.add_figure(f"sweep/{tag}", fig, close=False)
        for job in jobs:
            hparams = {k: _hparam(job.values.get(k, UNSET)) for k in keys}
            hparams[SEED_KEY] = _hparam(job.metrics.get(SEED_KEY))
            metrics = {
                f"hp/{k.replace('/', '_')}": float(job.metrics[k])
                for k in ("test/acc", "val/acc_best", "test/agreement", "test/kl")
                if k in job.metrics
            }
            writer.add_hparams(hparams, metrics, run_name=job.name)


# -- putting it together ----------------------------------------------------------------------------


def _safe_name(key: str) -> str:
    return "".join(c if c.isalnum() or c in "._-" else "_" for c in key)


def write_report(sweep_dir: str | Path, out_dir: str | Path | None = None) -> Report:
    """Read the sweep, write report.md, the PNGs and tensorboard/ into `out_dir` (the sweep folder)."""
    sweep_dir = Path(sweep_dir)
    jobs = load_jobs(sweep_dir)
    out = Path(out_dir) if out_dir is not None else sweep_dir
    out.mkdir(parents=True, exist_ok=True)
    keys = swept_keys(jobs)
    rows = group_rows(jobs, keys)
    refs = _references(jobs)

    figures = {f"acc_vs_{_safe_name(k)}": plot_accuracy_vs(k, rows, keys, refs) for k in numeric_keys(rows, keys)}
    figures["acc_vs_params"] = plot_accuracy_vs_params(rows, keys, refs)
    files = []
    for name, fig in figures.items():
        fig.savefig(out / f"{name}.png", dpi=110)
        files.append(out / f"{name}.png")
    write_tensorboard(out / TENSORBOARD_DIR, figures, jobs, keys)
    files.append(out / TENSORBOARD_DIR)

    header, body = table_rows(rows, keys)
    table = markdown_table(header, body)
    lines = [
        f"# Sweep report: {jobs[0].metrics.get('name', sweep_dir.name)}",
        "",
        f"`{sweep_dir}`: {len(jobs)} finished jobs; swept: {', '.join(keys) or 'nothing but the seed'}. "
        "Accuracies are mean ± sample std over the seeds of each row (± 0.00 where n=1); "
        "teacher acc, agreement, KL and wall time are means.",
    ]
    missing = unfinished_jobs(sweep_dir, jobs)
    if missing:
        lines += ["", f"**No metrics.json (failed or still running):** job folders {', '.join(missing)}."]
    lines += ["", table, ""]
    notes = []  # a Markdown list: one line each
    best = best_by_validation(rows)
    if best is not None and len(rows) > 1:
        notes.append(
            f"Best by validation: {_setting_text(best, keys)}: val acc best {_pct(best.stats('val/acc_best'))}%, "
            f"test acc {_pct(best.stats('test/acc'))}%."
        )
    for key, base in refs.scratch.items():
        notes.append(
            f"Same student from scratch (recipe {key}): {100 * base['mean']:.2f} ± {100 * base['std']:.2f}% "
            f"test acc over {base['runs']} runs."
        )
    optuna = optuna_summary(sweep_dir, jobs)
    if optuna:
        notes.append(optuna)
    lines += [f"- {note}" for note in notes]
    lines += ["", *(f"![{name}]({name}.png)" for name in figures), ""]
    (out / REPORT_FILE).write_text("\n".join(lines))
    files.insert(0, out / REPORT_FILE)
    return Report(sweep_dir, jobs, keys, rows, table, files)
