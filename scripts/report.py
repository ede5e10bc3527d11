"""Summarise a sweep: `python scripts/report.py outputs/<name>/multirun/<time> [--out DIR]`.

Writes report.md and PNG plots and prints the report: the settings every job shared, the table, the jobs
that diverged, failed or did not finish, by folder, and the paired comparisons: every distilled setting
against the same student from scratch, seed by seed, with the 95% interval of the difference.

    --compare 'distill.temperature=4' 'distill.temperature=8'   two settings of this sweep, seed by seed
    --against outputs/student_scratch_mlp/multirun/<time>       each row against another sweep's (same seeds)
    --rank-against 'distill=kd'       a method table: every row minus that row seed by seed, best first

It writes no TensorBoard events, so that `tensorboard --logdir outputs` lists each job once. The logic lives
in kdlab.report; this file only parses arguments.
"""

import argparse
import sys

from kdlab.report import ComparisonError, write_report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sweep_dir", help="a Hydra sweep folder, e.g. outputs/distill_mlp/multirun/<time>")
    parser.add_argument("--out", default=None, help="where to write the report (default: the sweep folder)")
    parser.add_argument(
        "--compare",
        nargs=2,
        action="append",
        metavar=("A", "B"),
        help="pair two settings of this sweep seed by seed, each as its swept keys' values "
        "('distill.temperature=4'; several keys separated by spaces in one argument); repeatable",
    )
    parser.add_argument(
        "--against",
        action="append",
        metavar="SWEEP_DIR",
        help="pair each row with its counterpart in another sweep of the same seeds (e.g. a scratch sweep); repeatable",
    )
    parser.add_argument(
        "--rank-against",
        metavar="SETTING",
        help="rank every row of this sweep by its paired difference to this row ('distill=kd'): a method table",
    )
    args = parser.parse_args(argv)
    try:
        report = write_report(args.sweep_dir, args.out, args.compare, args.against, args.rank_against)
    except FileNotFoundError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    except ComparisonError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(report.text)
    print("\nwrote " + ", ".join(str(path) for path in report.files))
    return 0


if __name__ == "__main__":
    sys.exit(main())
