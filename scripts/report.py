"""Summarise a sweep: `python scripts/report.py outputs/<name>/multirun/<time> [--out DIR]`.

Writes report.md and PNG plots and prints the report: the settings every job shared, the table, and
the jobs that diverged, failed or did not finish, by folder. It writes no TensorBoard events, so that
`tensorboard --logdir outputs` lists each job once. The logic lives in kdlab.report; this file only
parses arguments.
"""

import argparse
import sys

from kdlab.report import write_report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sweep_dir", help="a Hydra sweep folder, e.g. outputs/distill_mlp/multirun/<time>")
    parser.add_argument("--out", default=None, help="where to write the report (default: the sweep folder)")
    args = parser.parse_args(argv)
    try:
        report = write_report(args.sweep_dir, args.out)
    except FileNotFoundError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(report.text)
    print("\nwrote " + ", ".join(str(path) for path in report.files))
    return 0


if __name__ == "__main__":
    sys.exit(main())
