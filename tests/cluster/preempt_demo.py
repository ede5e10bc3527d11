"""Preempt one job of a 2-job toy sweep on the test cluster and show what happens (evidence, not a test).

    python tests/cluster/preempt_demo.py --mode requeue   # scontrol requeue <A>_0 (= PreemptMode=REQUEUE)
    python tests/cluster/preempt_demo.py --mode usr2      # scancel --signal=USR2 <A>_0 (submitit's own)
    python tests/cluster/preempt_demo.py --mode term      # scancel --signal=TERM <A>_0
    python tests/cluster/preempt_demo.py --mode interrupt # submitit's SlurmJob._interrupt: TERM, then USR2
    python tests/cluster/preempt_demo.py --mode usr2-full # the same signals with --full: the batch shell too
    python tests/cluster/preempt_demo.py --mode term-full
    Any further arguments are Hydra overrides for the sweep, e.g. hydra.launcher.timeout_min=60 (submitit takes
    any USR2 as a time-out, not a preemption, when timeout_min <= 10).

Needs the cluster up (tests/cluster/slurm_up.sh) and hydra-submitit-launcher. Prints each job's events.log.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def expected(seed: int, steps: int) -> int:
    value = seed + 1
    for step in range(steps):
        value = (value * 1103515245 + 12345 + step) % 2**31
    return value


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument(
        "--mode", choices=["requeue", "usr2", "term", "interrupt", "usr2-full", "term-full", "none"], default="requeue"
    )
    p.add_argument("--root", default="/tmp/toy-demo")
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--step-s", type=float, default=0.25)
    p.add_argument("--at-step", type=int, default=10)
    p.add_argument("--timeout", type=float, default=240)
    p.add_argument("extra", nargs="*", help="more overrides for the sweep")
    a = p.parse_args()

    root = Path(a.root) / a.mode
    env = {**os.environ, "TOY_ROOT": str(root)}
    cmd = [
        sys.executable,
        str(HERE / "toy_app.py"),
        "-m",
        "hydra/launcher=submitit_slurm",
        "hydra.launcher.partition=debug",
        "hydra.launcher.cpus_per_task=1",
        "hydra.launcher.mem_gb=1",
        "hydra.launcher.timeout_min=10",
        f"steps={a.steps}",
        f"step_s={a.step_s}",
        "seed=0,1",
        *a.extra,
    ]
    t0 = time.time()
    before = set(root.glob("multirun/*"))
    sweep = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    sweep_dir = None
    while sweep_dir is None and time.time() - t0 < 60:
        new = set(root.glob("multirun/*")) - before
        sweep_dir = next(iter(new), None)
        time.sleep(0.2)
    assert sweep_dir is not None, "no sweep folder"
    progress = sweep_dir / "0" / "progress"
    while time.time() - t0 < 120:
        if progress.exists() and progress.read_text() and int(progress.read_text()) >= a.at_step:
            break
        time.sleep(0.1)
    array_id = next(d.name.split("_")[0] for d in (sweep_dir / ".submitit").glob("*_0"))
    target = f"{array_id}_0"
    actions = {
        "requeue": [["scontrol", "requeue", target]],
        "usr2": [["scancel", "--signal=USR2", target]],
        "term": [["scancel", "--signal=TERM", target]],
        "interrupt": [["scancel", target, "--signal", "SIGTERM"], ["scancel", target, "--signal", "USR2"]],
        "usr2-full": [["scancel", "--full", "--signal=USR2", target]],
        "term-full": [["scancel", "--full", "--signal=TERM", target]],
        "none": [],
    }[a.mode]
    print(f"[{time.time() - t0:6.1f}s] job 0 at step {progress.read_text()}: {actions}", flush=True)
    for action in actions:
        subprocess.run(action, check=True)
    states = []
    while sweep.poll() is None and time.time() - t0 < a.timeout:
        s = subprocess.run(["squeue", "-h", "-j", array_id, "-o", "%i %T %r"], capture_output=True, text=True)
        line = " | ".join(s.stdout.split("\n")[:-1])
        if not states or states[-1][1] != line:
            states.append((round(time.time() - t0, 1), line))
        time.sleep(0.5)
    if sweep.poll() is None:
        print(f"sweep still running after {a.timeout}s: killing the launcher (its jobs stay queued)")
        sweep.kill()
    out = sweep.communicate()[0]
    print(f"[{time.time() - t0:6.1f}s] sweep rc={sweep.returncode}")
    for t, line in states:
        print(f"  squeue @{t}s: {line}")
    print(
        "  launcher output (tail, no sacct lines):\n    "
        + "\n    ".join(
            [x for x in out.strip().splitlines() if "sacct" not in x and "accounting storage" not in x][-8:]
        )
    )
    for job in ("0", "1"):
        print(f"== job {job}: expected value {expected(int(job), a.steps)}")
        log = sweep_dir / job / "events.log"
        for line in log.read_text().splitlines() if log.exists() else []:
            e = json.loads(line)
            e["t"] = round(e["t"] - t0, 1)
            e.pop("handlers", None) if e["event"] != "start" or job == "1" else None
            print("  ", json.dumps(e))
    for d in sorted((sweep_dir / ".submitit").glob(f"{array_id}_0")):
        for f in sorted(d.glob("*_log.*")):
            print(f"-- {f.name} (tail)")
            print("    " + "\n    ".join(f.read_text(errors="replace").strip().splitlines()[-12:]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
