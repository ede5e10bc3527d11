"""Error analysis of a finished run: `python scripts/evaluate.py <run folder> [--data-dir DIR]`.

Re-runs the test pass from the folder's saved weights and configs (the student, and the teacher or
each ensemble member, combined at T=1 as training scored them) and writes per-class accuracy, calibration (ECE) and
student-teacher disagreements into its metrics.json (`analysis`), the figures into
<run folder>/analysis/ and, if the run logged to TensorBoard, into tensorboard/.
The logic lives in kdlab.analysis.evaluate; this file only parses arguments.
"""

import argparse
import sys

from kdlab.analysis.evaluate import evaluate_run
from kdlab.record import scored_as
from kdlab.runfolder import RunFolderError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", help="a run folder holding metrics.json, e.g. outputs/distill_mlp/runs/<time>")
    parser.add_argument("--data-dir", default=None, help="where the dataset's files are now (default: the run's)")
    parser.add_argument("--accelerator", default="cpu", help="Lightning accelerator: cpu (default), gpu, auto")
    parser.add_argument("--batch-size", type=int, default=1000, help="test images per batch")
    args = parser.parse_args(argv)
    try:
        record = evaluate_run(args.run_dir, args.data_dir, args.accelerator, args.batch_size)
    except RunFolderError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    analysis = record.analysis
    line = f"student: acc {analysis['student']['acc']:.4f}, ECE {analysis['student']['ece']:.4f}"
    if "teacher" in analysis:
        members = analysis.get("members", [])
        teacher = f"ensemble of {len(members)} ({scored_as(record.combine)})" if members else "teacher"
        line += f"; {teacher}: acc {analysis['teacher']['acc']:.4f}, ECE {analysis['teacher']['ece']:.4f}"
        if members:
            line += " (members: acc " + ", ".join(f"{m['acc']:.4f}" for m in members) + ")"
        line += f"; {analysis['disagreements']} disagreements"
    print(line)
    print("wrote " + ", ".join(["metrics.json", *analysis["files"]]) + f" in {args.run_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
