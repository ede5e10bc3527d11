"""Helpers for the tests on the one-node SLURM cluster of slurm_up.sh: whether it can run, commands, job states."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
STATE = Path(os.environ.get("KDLAB_SLURM_DIR", "/tmp/kdlab-slurm"))
NEEDED = ("munged", "slurmctld", "slurmd", "sbatch", "srun", "scontrol", "sinfo")

NEEDS_SLURM = pytest.mark.skipif(
    os.geteuid() != 0 or not all(shutil.which(exe) for exe in NEEDED),
    reason="needs root and slurm-wlm + munge (apt-get install slurm-wlm munge; .ci/run does it)",
)


def _alive(pidfile: Path) -> bool:
    try:
        os.kill(int(pidfile.read_text()), 0)
    except (OSError, ValueError):
        return False
    return True


def sh(env: dict, *cmd: str, timeout: float = 120) -> str:
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"{cmd}: {done.stdout}{done.stderr}"
    return done.stdout


def wait_job(env: dict, job: str, timeout: float = 120) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        out = sh(env, "scontrol", "show", "job", "-o", job)
        states = {part.split("=", 1)[1] for part in out.split() if part.startswith("JobState=")}
        if states and states <= {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "OUT_OF_MEMORY", "NODE_FAIL"}:
            return " ".join(sorted(states))
        time.sleep(0.5)
    raise AssertionError(f"job {job} not finished after {timeout}s")


def requeue_first_job(env: dict, sweep: subprocess.Popen, sweep_dir: Path, ready, timeout: float,
                      settle_s: float = 0.0) -> str:  # fmt: skip
    """Requeue job 0 of a running submitit sweep once `ready()` holds, as PreemptMode=REQUEUE would; return
    the sweep's output. A sweep that ends or stalls before then fails the test, and nothing is left queued."""
    task = None
    try:
        deadline = time.monotonic() + timeout
        while not ready():
            assert sweep.poll() is None and time.monotonic() < deadline, sweep.communicate()[0][-3000:]
            time.sleep(0.1)
        time.sleep(settle_s)
        (task,) = [d.name for d in (sweep_dir / ".submitit").glob("*_0")]
        sh(env, "scontrol", "requeue", task)
        out, _ = sweep.communicate(timeout=3 * timeout)
    finally:
        if sweep.poll() is None:
            sweep.kill()
            if task:
                subprocess.run(["scancel", task.split("_")[0]], env=env)
    assert sweep.returncode == 0, out[-3000:]
    return out
