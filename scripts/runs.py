"""List what you have: `python scripts/runs.py [outputs]` for runs, `--teachers` for the cached teachers.

One line per run (name, status, student and teacher test accuracy, key overrides, folder), read from
the run records; the logic lives in kdlab.listing.
"""

import argparse
import os
import sys
from pathlib import Path

from kdlab.listing import render, run_rows, teacher_rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    default = str(Path(os.environ.get("KDLAB_ROOT", ".")) / "outputs")  # where train.py puts them (conf/paths)
    parser.add_argument("outputs", nargs="?", default=default, help=f"the outputs folder (default: {default})")
    parser.add_argument("--teachers", action="store_true", help="list the cached teachers instead of the runs")
    args = parser.parse_args(argv)
    root = Path(args.outputs)
    if not root.is_dir():
        print(
            f"error: {root} is not a folder; give the outputs folder of your runs (default: outputs)", file=sys.stderr
        )
        return 1
    header, rows = teacher_rows(root / "teachers") if args.teachers else run_rows(root)
    if not rows:
        print(f"No {'cached teachers' if args.teachers else 'runs'} under {root}.")
        return 0
    print(render(header, rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
