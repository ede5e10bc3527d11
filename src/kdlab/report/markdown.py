"""The report as text: report.md, and the same lines printed by scripts/report.py (minus the images).

Order: what every job shared (so a 2-epoch sweep never reads as a full one), the table, the jobs the
table leaves out and why, then the notes: best setting by validation, baselines, Optuna's best trial.
"""

from __future__ import annotations

import math
from pathlib import Path

import yaml

from kdlab.record import scored_as
from kdlab.report import formatting as fmt
from kdlab.report.aggregate import SEED_KEY, SELECT_METRIC, Sweep
from kdlab.report.baselines import References
from kdlab.report.compare import Comparison, seed_accs
from kdlab.report.load import Job, is_number
from kdlab.report.paired import mean_interval

OPTUNA_FILE = "optimization_results.yaml"  # the best trial, written by kdlab.sweeps.study at the end of a search


def _gain(row, scratch: list[Comparison]) -> str:
    """`+0.10 [-0.04, +0.23]`: the row minus its scratch baseline, seed by seed, in points with its 95% interval."""
    found = next((c.paired for c in scratch if c.row is row), None)
    return fmt.MISSING if found is None else found.points()


def _ensemble_column(jobs: list[Job]) -> str:
    """`ensemble acc (%, mean_probs at T=1)`: how its members were combined for the accuracy, when every
    job's record says the same (the run summary's label); without a T where they differ or do not say."""
    scored = {scored_as(job.record.combine) for job in jobs if job.record is not None and job.record.is_ensemble}
    return f"ensemble acc (%, {scored.pop()})" if len(scored) == 1 and None not in scored else "ensemble acc (%)"


def markdown_table(sweep: Sweep, scratch: list[Comparison] = ()) -> str:
    """One line per row, padded so that the raw text printed to a terminal reads as a table too; with a
    column of each row's paired gain over its scratch baseline where there is one."""
    notes = [row.notes() for row in sweep.rows]
    jobs = [job for row in sweep.rows for job in row.jobs]
    members = 0  # how many ensemble members the jobs scored (0: single teachers); one column each
    while any(job.metric(f"test/member{members}_acc") is not None for job in jobs):
        members += 1
    accs = ["test/teacher_acc", *(f"test/member{i}_acc" for i in range(members)), "test/agreement"]
    header = [*sweep.keys, "n seeds", f"{'student ' if sweep.distilled else ''}test acc (%)", "val acc best (%)"]
    header += ["vs scratch, paired (points, 95% CI)"] if scratch else []
    header += [
        _ensemble_column(jobs) if members else "teacher acc (%)",
        *(f"member {i} acc (%)" for i in range(members)),
    ]
    header += ["agreement (%)", "KL", "params", "median wall time (s)", *(["notes"] if any(notes) else [])]
    body = [
        [*(fmt.short(row.value(k), row.setting[k]) for k in sweep.keys), str(len(row.jobs))]
        + [fmt.mean_std_percent(row.stats(metric)) for metric in ("test/acc", SELECT_METRIC)]
        + ([_gain(row, scratch)] if scratch else [])
        + [fmt.percent(row.mean(metric)) for metric in accs]
        + [fmt.number(row.mean("test/kl")), fmt.count(row.params), fmt.number(row.wall_time(), 1)]
        + ([note] if any(notes) else [])
        for row, note in zip(sweep.rows, notes, strict=True)
    ]
    return "\n".join("| " + " | ".join(line) + " |" for line in fmt.aligned(header, body))


def problem_lines(sweep: Sweep) -> list[str]:
    """One line per job left out of the table, by folder, with how it ended and why."""
    lines = [f"**Not in the averages ({sweep.problem_counts()}):**", ""] if sweep.problems else []
    for job in sweep.problems:
        typed = [job.lines[k] for k in (*sweep.keys, SEED_KEY) if k in job.lines]
        setting = f" ({', '.join(typed)})" if typed else ""
        status = "" if job.record is None or job.record.status == job.state else f" (status {job.record.status})"
        lines.append(
            f"- job folder `{job.name}`{setting}: **{job.state}**{status}: {job.problem or 'no message in its record'}"
        )
    return lines


def _smoke_note(sweep: Sweep) -> str | None:
    smoke = [job for job in sweep.finished if job.smoke]
    if not smoke:
        return None
    why = sorted({reason for job in smoke for reason in job.record.smoke})
    because = f" ({', '.join(why)})" if why else ""
    return (
        f"{len(smoke)} of {len(sweep.finished)} finished jobs are smoke runs{because}: their rows are marked "
        "smoke, are no measure of the method, and are never chosen as best."
    )


def _best_note(sweep: Sweep) -> str | None:
    best = sweep.best
    if best is None and any(row.smoke for row in sweep.rows):
        return "No best setting: only smoke runs have a validation accuracy, and smoke runs are never chosen."
    if best is None or sum(not row.smoke and row.stats(SELECT_METRIC) is not None for row in sweep.rows) < 2:
        return None  # one full setting is no choice
    return (
        f"Best by validation ({SELECT_METRIC}; the test set only reports it): {best.label(sweep.keys)}: "
        f"val acc best {fmt.mean_std_percent(best.stats(SELECT_METRIC))}%, "
        f"test acc {fmt.mean_std_percent(best.stats('test/acc'))}%."
    )


def _optuna_note(sweep_dir: Path, sweep: Sweep) -> str | None:
    """The Optuna search's best trial, and which job folder ran it."""
    path = sweep_dir / OPTUNA_FILE
    if not path.is_file():
        return None
    try:
        result = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as err:
        return f"Optuna results: `{OPTUNA_FILE}` could not be read ({err})."
    if not isinstance(result, dict) or not isinstance(result.get("best_params"), dict):
        return f"Optuna results: see `{OPTUNA_FILE}`."  # not the file kdlab's sweeper writes: leave it to the reader
    params = result["best_params"]

    def ran(job: Job) -> bool:
        return all(
            is_number(job.values.get(k)) and math.isclose(float(job.values[k]), float(v))
            if is_number(v)
            else job.overrides.get(k) == str(v)
            for k, v in params.items()
        )

    folders = [job.name for job in sweep.jobs if ran(job)]
    where = f" (job folder {', '.join(folders)})" if folders else ""
    settings = ", ".join(f"{k}={fmt.short(v, str(v))}" for k, v in params.items())
    value = result.get("best_value")
    value = fmt.number(float(value)) if is_number(value) else str(value)
    return f"Optuna best trial{where}: {settings} with value {value} (from `{OPTUNA_FILE}`)."


def paired_lines(comparisons: list[Comparison]) -> list[str]:
    if not comparisons:
        return []
    return [
        "**Paired comparisons** (test acc, A minus B seed by seed: mean difference in percentage points, its 95% "
        "t-interval over the seeds both have, and n):",
        "",
        *(f"- {comparison.line()}" for comparison in comparisons),
    ]


def _mean_interval_percent(accs: dict[str, float]) -> str:
    mean, half = mean_interval(list(accs.values()))
    return f"{100 * mean:.2f}" + ("" if half is None else f" ± {100 * half:.2f}")


def ranking_lines(
    reference: str, ranked: list[Comparison], reference_accs: dict[str, float], unfinished: list[str] = ()
) -> list[str]:
    """The method table: every row against `reference`, best paired difference first; then the settings none of
    whose jobs finished, by name, so that a method missing from the table is not read as one that lost."""
    if not ranked:
        return []
    head = [
        f"**Ranked against `{reference}`** (test acc: mean ± half-width of its 95% t-interval over the seeds; "
        f"paired: the row minus `{reference}` seed by seed, mean and 95% interval, in points):",
        "",
        f"| rank | setting | test acc % | minus `{reference}` (points, 95% CI) | n | verdict |",
        "|---:|---|---:|---:|---:|---|",
    ]
    body = [
        f"| {rank} | {c.a} | {_mean_interval_percent(seed_accs(c.row))} | {c.paired.points()} | {c.paired.n} "
        f"| {c.paired.verdict(c.a, reference)} |"
        for rank, c in enumerate(ranked, 1)
    ]
    n = len(reference_accs)
    tail = f"| - | {reference} (reference) | {_mean_interval_percent(reference_accs)} | 0 | {n} | |"
    missing = ["", f"Not ranked, no job finished: {'; '.join(unfinished)}."] if unfinished else []
    return [*head, *body, tail, *missing]


def document(
    sweep_dir: Path,
    sweep: Sweep,
    refs: References,
    table: str,
    plots_skipped: str | None,
    comparisons: list[Comparison] = (),
    ranking: list[str] = (),
) -> list[str]:
    """The report's lines, without images: report.md adds them, scripts/report.py prints these."""
    names = [job.record.name for job in sweep.jobs if job.record is not None and job.record.name]
    seeds = [job.record.seed for job in sweep.finished if job.record.seed is not None]
    counts = sweep.problem_counts()
    common = (
        " ".join(f"`{line}`" for line in sweep.common) or "no overrides; each job ran its experiment's own settings."
    )
    summary = (
        f"`{sweep_dir}`: {len(sweep.finished)} of {len(sweep.jobs)} jobs finished{f' ({counts})' if counts else ''}; "
        f"swept: {', '.join(sweep.keys) or 'nothing but the seed'}; seeds: {fmt.seeds(seeds)}. "
        "Accuracies are mean ± sample std over the finished seeds of each row (± 0.00 where n=1); "
        "teacher acc, agreement, KL and wall time are means."
    )
    lines = [f"# Sweep report: {names[0] if names else sweep_dir.name}", "", f"**Common to every job:** {common}", ""]
    lines += [summary, "", table if sweep.rows else "No job finished, so there is nothing to average."]
    problems = problem_lines(sweep)
    lines += ["", *problems] if problems else []
    paired = paired_lines(list(comparisons))
    lines += ["", *paired] if paired else []
    lines += ["", *ranking] if ranking else []
    notes = [note for note in (_smoke_note(sweep), _best_note(sweep)) if note]
    for key, base in refs.baselines.items():
        which = f", seeds {fmt.seeds(base.seeds)}" if base.seeds else ""
        notes.append(
            f"Same student from scratch (student recipe `{key}`): "
            f"{fmt.mean_std_percent((base.mean, base.std))}% test acc over {base.runs} runs{which}."
        )
    for key, command in refs.missing.items():
        notes.append(
            f"No from-scratch baseline found for student recipe `{key}`: no finished full run of this student "
            "trained alone existed when these jobs ended, so nothing here says what distillation adds. Train "
            f"one with the same recipe, then run the sweep again (jobs look it up when they end): `{command}`"
        )
    notes += [note for note in (_optuna_note(sweep_dir, sweep), plots_skipped) if note]
    return lines + (["", *(f"- {note}" for note in notes)] if notes else [])
