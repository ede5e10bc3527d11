"""The report as text: report.md, and the same lines printed by scripts/report.py (minus the images).

Order: what every job shared (so a 2-epoch sweep never reads as a full one), the table, the jobs the
table leaves out and why, then the notes: best setting by validation, baselines, Optuna's best trial.
"""

from __future__ import annotations

from kdlab.report import formatting as fmt
from kdlab.report.aggregate import SEED_KEY, SELECT_METRIC, Sweep
from kdlab.report.baselines import References
from kdlab.report.load import Job


def member_count(sweep: Sweep) -> int:
    """How many ensemble members the sweep's jobs scored (0: single teachers); one column each."""
    jobs = [job for row in sweep.rows for job in row.jobs]
    count = 0
    while any(job.metric(f"test/member{count}_acc") is not None for job in jobs):
        count += 1
    return count


def table_rows(sweep: Sweep) -> tuple[list[str], list[list[str]]]:
    notes = [row.notes() for row in sweep.rows]
    members = range(member_count(sweep))
    header = [
        *sweep.keys,
        "n seeds",
        f"{'student ' if sweep.distilled else ''}test acc (%)",
        "val acc best (%)",
        "ensemble acc (%)" if members else "teacher acc (%)",
        *(f"member {i} acc (%)" for i in members),
        "agreement (%)",
        "KL",
        "params",
        "wall time (s)",
        *(["notes"] if any(notes) else []),
    ]
    body = []
    for row, note in zip(sweep.rows, notes, strict=True):
        body.append(
            [
                *(fmt.short(row.value(k), row.setting[k]) for k in sweep.keys),
                str(len(row.jobs)),
                fmt.mean_std_percent(row.stats("test/acc")),
                fmt.mean_std_percent(row.stats(SELECT_METRIC)),
                fmt.percent(row.mean("test/teacher_acc")),
                *(fmt.percent(row.mean(f"test/member{i}_acc")) for i in members),
                fmt.percent(row.mean("test/agreement")),
                fmt.number(row.mean("test/kl")),
                fmt.count(row.params),
                fmt.number(row.wall_time(), 1),
                *([note] if any(notes) else []),
            ]
        )
    return header, body


def markdown_table(header: list[str], body: list[list[str]]) -> str:
    """Padded so that the raw text printed to a terminal reads as a table too."""
    widths = [max(len(cell) for cell in column) for column in zip(header, *body, strict=True)]
    lines = [header, ["-" * w for w in widths], *body]
    return "\n".join("| " + " | ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)) + " |" for line in lines)


def common_line(common: list[str]) -> str:
    if not common:
        return "**Common to every job:** no overrides; each job ran its experiment's own settings."
    return "**Common to every job:** " + " ".join(f"`{line}`" for line in common)


def _job_setting(job: Job, keys: list[str]) -> str:
    lines = [job.lines[k] for k in (*keys, SEED_KEY) if k in job.lines]
    return f" ({', '.join(lines)})" if lines else ""


def problem_lines(sweep: Sweep) -> list[str]:
    """One line per job left out of the table, by folder, with how it ended and why."""
    if not sweep.problems:
        return []
    lines = [f"**Not in the averages ({sweep.problem_counts()}):**", ""]
    for job in sweep.problems:
        status = "" if job.record is None or job.record.status == job.state else f" (status {job.record.status})"
        lines.append(
            f"- job folder `{job.name}`{_job_setting(job, sweep.keys)}: **{job.state}**{status}: "
            f"{job.problem or 'no message in its record'}"
        )
    return lines


def _smoke_line(sweep: Sweep) -> str | None:
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
    full = [row for row in sweep.rows if not row.smoke and row.stats(SELECT_METRIC) is not None]
    best = sweep.best
    if best is None:
        if any(row.smoke for row in sweep.rows):
            return "No best setting: only smoke runs have a validation accuracy, and smoke runs are never chosen."
        return None
    if len(full) < 2:
        return None
    return (
        f"Best by validation ({SELECT_METRIC}; the test set only reports it): {best.label(sweep.keys)}: "
        f"val acc best {fmt.mean_std_percent(best.stats(SELECT_METRIC))}%, "
        f"test acc {fmt.mean_std_percent(best.stats('test/acc'))}%."
    )


def notes(sweep: Sweep, refs: References, extra: list[str]) -> list[str]:
    notes = [note for note in (_smoke_line(sweep), _best_note(sweep)) if note]
    for key, base in refs.baselines.items():
        seeds = f", seeds {fmt.seeds(base.seeds)}" if base.seeds else ""
        notes.append(
            f"Same student from scratch (student recipe `{key}`): "
            f"{fmt.mean_std_percent((base.mean, base.std))}% test acc over {base.runs} runs{seeds}."
        )
    for key, command in refs.missing.items():
        notes.append(
            f"No from-scratch baseline found for student recipe `{key}`: no finished full run of this student "
            "trained alone existed when these jobs ended, so nothing here says what distillation adds. Train "
            f"one with the same recipe, then run the sweep again (jobs look it up when they end): `{command}`"
        )
    return notes + extra


def document(title: str, where: str, sweep: Sweep, refs: References, table: str, extra: list[str]) -> list[str]:
    """The report's lines, without images: report.md adds them, scripts/report.py prints these."""
    seeds = [job.record.seed for job in sweep.finished if job.record.seed is not None]
    counts = sweep.problem_counts()
    summary = (
        f"`{where}`: {len(sweep.finished)} of {len(sweep.jobs)} jobs finished{f' ({counts})' if counts else ''}; "
        f"swept: {', '.join(sweep.keys) or 'nothing but the seed'}; seeds: {fmt.seeds(seeds)}. "
        "Accuracies are mean ± sample std over the finished seeds of each row (± 0.00 where n=1); "
        "teacher acc, agreement, KL and wall time are means."
    )
    lines = [f"# Sweep report: {title}", "", common_line(sweep.common), "", summary, ""]
    lines += [table] if sweep.rows else ["No job finished, so there is nothing to average."]
    problems = problem_lines(sweep)
    lines += ["", *problems] if problems else []
    listed = notes(sweep, refs, extra)
    lines += ["", *(f"- {note}" for note in listed)] if listed else []
    return lines
