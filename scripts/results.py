"""Regenerate the README's results tables from this code: run their sweeps, then write the tables.

    make results                                  # = python scripts/results.py: every table
    python scripts/results.py --only zoo --only mlp
    python scripts/results.py --list              # each table's sweeps, as commands to type
    python scripts/results.py --tables-only       # no training: the tables from the sweeps already run

Each sweep goes into a fixed folder, `outputs/results/<sweep>/`, run once for every table that shows it,
so running this again continues a stopped sweep (its finished jobs are not run again) and cached teachers
are reused. The tables are written to `outputs/results/RESULTS.md`, each with the commands behind it;
`--readme` also replaces the README's block between `<!-- results:<table> -->` and `<!-- /results:<table> -->`.
Exits non-zero if a sweep fails or a table's sweeps are incomplete: a table is written only from every job it
names.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from kdlab.config import compose_config
from kdlab.report import compare, read_sweep
from kdlab.report.aggregate import Row
from kdlab.report.markdown import ranking_lines
from kdlab.report.paired import mean_interval

REPO = Path(__file__).resolve().parent.parent
SEEDS = "seed=0,1,2,3,4"


@dataclass(frozen=True)
class Sweep:
    name: str  # its folder under outputs/results/: one sweep, whichever tables show it
    label: str  # the table's row
    overrides: tuple[str, ...]  # after `python train.py -m`

    def command(self) -> str:
        return "python train.py -m " + " ".join(self.overrides)


@dataclass(frozen=True)
class Table:
    name: str
    title: str
    sweeps: tuple[Sweep, ...]
    reference: str | None = None  # paired comparisons: every other sweep against this one (a sweep's name)
    against: tuple[tuple[str, str], ...] = ()  # or, per sweep, its own reference: (sweep, reference) pairs
    rank_against: str | None = None  # a method table: the rows of its first sweep ranked against this setting
    # ...and under it, what the reference gains over its second sweep, if any: the student alone, same recipe
    test_images: int | None = None  # counts test errors as well (MNIST: 10,000), to set beside a paper's
    paper: tuple[str, ...] = ()  # the paper's figure for each sweep, in order


MLP_SCRATCH = Sweep("mlp_scratch", "student alone", ("experiment=student_scratch_mlp", SEEDS))
MLP_DISTILL = Sweep("mlp_distill", "student distilled (KD, T=4)", ("experiment=distill_mlp", SEEDS))
DIGITS_SCRATCH = Sweep("digits_scratch", "student alone", ("experiment=student_scratch_digits", SEEDS))
DIGITS_DISTILL = Sweep("digits_distill", "student distilled (KD, T=4)", ("experiment=distill_digits", SEEDS))
TABLES = (
    Table(
        "mlp",
        "The article's pair on MNIST: teacher MLP 784-512-256-10, student MLP 784-256-128-10",
        (MLP_SCRATCH, MLP_DISTILL),
        reference="mlp_scratch",
    ),
    Table(
        "digits",
        "scikit-learn's digits: teacher CNN, student MLP 64-32-10",
        (DIGITS_SCRATCH, DIGITS_DISTILL),
        reference="digits_scratch",
    ),
    Table(
        "flagship",
        "The flagship pair with elastic distortions: teacher MLP 784-512-256-10, student MLP 784-256-128-10, the "
        "teacher scoring the student's distorted view",
        (
            Sweep("flagship_scratch", "student alone", ("experiment=student_scratch_mlp_elastic", SEEDS)),
            Sweep("flagship_distill", "student distilled (KD, T=4)", ("experiment=distill_mlp_elastic", SEEDS)),
        ),
        reference="flagship_scratch",
        test_images=10_000,
    ),
    Table(
        "best",
        "The best student kdlab makes here: MLP 784-256-128-10 distilled from the CNN teacher (target: 99.40%, at "
        "most 60 errors)",
        (
            MLP_SCRATCH,
            Sweep(
                "best_cnn",
                "student distilled from the CNN (KD, T=4)",
                ("experiment=distill_cnn_mlp", SEEDS, "runtime.teacher_cache=on"),
            ),  # fmt: skip
        ),
        reference="mlp_scratch",
        test_images=10_000,
    ),
    Table(
        "hinton",
        "Hinton, Vinyals and Dean (2015) on MNIST: teacher MLP 1200-1200 with dropout and jitter (paper: 67 errors), "
        "student MLP 800-800",
        (
            Sweep("hinton_scratch", "student alone", ("experiment=student_scratch_hinton", "seed=0,1,2")),
            Sweep("hinton_distill", "student distilled, T=20", ("experiment=distill_hinton", "seed=0,1,2")),
        ),
        reference="hinton_scratch",
        test_images=10_000,
        paper=("146 errors", "74 errors"),
    ),
    Table(
        "zoo",
        "Which method works best here? Every preset on the MLP pair, 10 epochs each (experiment=zoo_mlp)",
        (
            Sweep("zoo_mlp", "zoo", ("experiment=zoo_mlp",)),
            Sweep(
                "zoo_scratch10",
                "student alone with the same 10-epoch recipe",
                ("experiment=student_scratch_mlp", "trainer.max_epochs=10", SEEDS),
            ),  # fmt: skip
        ),
        rank_against="distill=kd",
    ),
    Table(
        "fast",
        "Fast presets against the standard recipes (README: Time to a result)",
        (
            Sweep("mlp_teacher_fast", "teacher, fast", ("experiment=train_teacher_mlp_fast", SEEDS)),
            MLP_SCRATCH,
            Sweep("mlp_scratch_fast", "student alone, fast", ("experiment=student_scratch_mlp_fast", SEEDS)),
            MLP_DISTILL,
            Sweep(
                "mlp_distill_fast",
                "student distilled, fast",
                ("experiment=distill_mlp_fast", SEEDS, "runtime.teacher_cache=on"),
            ),  # fmt: skip
            Sweep("digits_scratch", "digits: student alone", DIGITS_SCRATCH.overrides),
            Sweep(
                "digits_scratch_fast", "digits: student alone, fast", ("experiment=student_scratch_digits_fast", SEEDS)
            ),
            Sweep("digits_distill", "digits: student distilled (KD, T=4)", DIGITS_DISTILL.overrides),
            Sweep("digits_distill_fast", "digits: student distilled, fast", ("experiment=distill_digits_fast", SEEDS)),
        ),
        against=(
            ("mlp_scratch_fast", "mlp_scratch"),
            ("mlp_distill_fast", "mlp_distill"),
            ("digits_scratch_fast", "digits_scratch"),
            ("digits_distill_fast", "digits_distill"),
        ),  # fmt: skip
    ),
)


def results_dir() -> Path:
    return Path(compose_config([]).paths.log_dir) / "results"


def sweep_dir(sweep: Sweep) -> Path:
    return results_dir() / sweep.name


def run_sweep(sweep: Sweep) -> int:
    """Run (or continue) one sweep in its fixed folder; its exit code."""
    args = [sys.executable, "train.py", "-m", *sweep.overrides, f"hydra.sweep.dir={sweep_dir(sweep)}"]
    print(" ".join(args[1:]), flush=True)
    return subprocess.run(args, cwd=REPO).returncode


def _accs(row: Row) -> dict[str, float]:
    return compare.seed_accs(row)


def _percent(values: list[float]) -> str:
    mean, half = mean_interval(values)
    return f"{100 * mean:.2f}" + ("" if half is None else f" ± {100 * half:.2f}")


def _only_row(table: Table, sweep: Sweep) -> Row:
    rows = [row for row in read_sweep(sweep_dir(sweep)).rows if row.jobs and not row.smoke]
    if len(rows) != 1 or rows[0].others:
        raise SystemExit(
            f"[{table.name}] {sweep_dir(sweep)} has {len(rows)} rows of finished full runs"
            f"{' and jobs that did not finish' if rows and rows[0].others else ''}; a table is written only from "
            f"every job it names: run `python scripts/results.py --only {table.name}` to finish them."
        )
    return rows[0]


def reference_of(table: Table, sweep: Sweep) -> str | None:
    """The sweep the row is paired with: its own from `against`, else the table's reference (not itself)."""
    reference = dict(table.against).get(sweep.name, table.reference)
    return None if reference == sweep.name else reference


def render(table: Table) -> list[str]:
    """The table's Markdown: each sweep's test accuracy (mean ± 95% interval over its seeds), the teacher's, and
    each sweep's paired difference to the reference sweep; or, for a method table, the ranking."""
    lines = [f"### {table.title}", ""]
    if table.rank_against:
        folder = sweep_dir(table.sweeps[0])
        if unfinished := [job.name for job in read_sweep(folder).problems]:
            raise SystemExit(
                f"[{table.name}] {folder} has jobs that did not finish ({', '.join(unfinished)}); a table is written "
                f"only from every job it names: run `python scripts/results.py --only {table.name}` to finish them."
            )
        ranked = compare.ranked_against(read_sweep(folder), table.rank_against)
        reference_row = compare.pick_row(read_sweep(folder), table.rank_against)
        lines += ranking_lines(table.rank_against, ranked, _accs(reference_row))[2:]  # without its preamble
        for alone in table.sweeps[1:]:
            row = _only_row(table, alone)
            diff = compare.pair_rows(reference_row, row)
            gain = "-" if diff is None else diff.points()
            lines += ["", f"The {alone.label}: {_percent(list(_accs(row).values()))}% (n={len(_accs(row))}); "
                      f"`{table.rank_against}` minus it, paired: {gain} points."]  # fmt: skip
    else:
        rows = {sweep.name: _only_row(table, sweep) for sweep in table.sweeps}
        labels = {sweep.name: sweep.label for sweep in table.sweeps}
        paired = ""
        if table.against:
            paired = " | minus its standard recipe, paired (points, 95% CI)"
        elif table.reference:
            paired = f" | minus {labels[table.reference]}, paired (points, 95% CI)"
        errors = " | test errors (95% CI)" if table.test_images else ""
        paper = " | paper" if table.paper else ""
        lines += [f"| run | test acc % (95% CI){errors} | n | teacher test acc % | median wall time per run{paired}"
                  f"{paper} |"]  # fmt: skip
        lines += ["|---|---:|" + ("---:|" if errors else "") + "---:|---:|---:|" + ("---:|" if paired else "")
                  + ("---:|" if paper else "")]  # fmt: skip
        for i, sweep in enumerate(table.sweeps):
            row = rows[sweep.name]
            accs = _accs(row)
            teacher = row.mean("test/teacher_acc")
            teacher = "-" if teacher is None else f"{100 * teacher:.2f}"
            if teacher != "-" and table.test_images:
                teacher += f" ({round((1 - row.mean('test/teacher_acc')) * table.test_images)} errors)"
            wall = row.wall_time()
            cells = ""
            if table.test_images:
                mean, half = mean_interval([(1 - acc) * table.test_images for acc in accs.values()])
                cells += f" | {mean:.1f}" + ("" if half is None else f" ± {half:.1f}")
            cells += f" | {len(accs)} | {teacher} | {'-' if wall is None else f'{wall:.0f} s'}"
            if paired:
                reference = reference_of(table, sweep)
                diff = None if reference is None else compare.pair_rows(row, rows[reference])
                cells += " | -" if diff is None else f" | {diff.points()}"
            cells += f" | {table.paper[i]}" if table.paper else ""
            lines.append(f"| {sweep.label} | {_percent(list(accs.values()))}{cells} |")
    lines += ["", "Commands:", "", "```bash", *(s.command() for s in table.sweeps), "```", ""]
    if table.rank_against:
        lines[-2:-2] = [f"python scripts/report.py <sweep> --rank-against {table.rank_against}"]
    return lines


def replace_block(text: str, name: str, block: list[str]) -> str:
    """The README with the lines between `<!-- results:name -->` and `<!-- /results:name -->` replaced."""
    start, end = f"<!-- results:{name} -->", f"<!-- /results:{name} -->"
    if start not in text or end not in text:
        return text
    head, rest = text.split(start, 1)
    _, tail = rest.split(end, 1)
    return head + start + "\n" + "\n".join(block) + "\n" + end + tail


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", action="append", choices=[t.name for t in TABLES], help="this table (repeatable)")
    parser.add_argument("--list", action="store_true", help="print each table's sweeps as commands and stop")
    parser.add_argument("--tables-only", action="store_true", help="write the tables from sweeps already run")
    parser.add_argument("--readme", action="store_true", help="also replace the README's results blocks")
    args = parser.parse_args(argv)
    tables = [t for t in TABLES if not args.only or t.name in args.only]
    if args.list:
        for table in tables:
            print(f"{table.name}: {table.title}")
            for sweep in table.sweeps:
                print(f"  {sweep.command()} hydra.sweep.dir={sweep_dir(sweep)}")
        return 0
    if not args.tables_only:
        for sweep in {sweep.name: sweep for table in tables for sweep in table.sweeps}.values():  # one folder, once
            if (code := run_sweep(sweep)) != 0:
                print(f"error: {sweep.command()} exited {code}; fix it, then run this again (finished jobs are kept).",
                      file=sys.stderr)  # fmt: skip
                return code
    blocks = {table.name: render(table) for table in tables}
    out = results_dir() / "RESULTS.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(line for block in blocks.values() for line in block))
    print("\n".join(line for block in blocks.values() for line in block))
    print(f"wrote {out}")
    if args.readme:
        readme = REPO / "README.md"
        text = readme.read_text()
        for name, block in blocks.items():
            text = replace_block(text, name, block)
        readme.write_text(text)
        print(f"updated {readme}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
