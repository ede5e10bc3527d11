"""The one-node SLURM test cluster (tests/cluster/slurm_up.sh) and the submitit launcher on it, with the
toy app (tests/cluster/toy_app.py), not kdlab: that a preempted sweep job is requeued into its own job
folder and finds its interrupt checkpoint there. Skipped unless run as root with Debian's slurm-wlm and
munge installed (apt-get install -y --no-install-recommends slurm-wlm munge).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from slurm import HERE, NEEDS_SLURM, requeue_first_job, sh, wait_job

pytestmark = [pytest.mark.slow, NEEDS_SLURM]


def test_batch_job_step_and_array(slurm_env, tmp_path):
    host = sh(slurm_env, "hostname", "-s").strip()
    job = sh(slurm_env, "sbatch", "--parsable", "-o", str(tmp_path / "%j.out"), "--wrap", "hostname -s").strip()
    assert wait_job(slurm_env, job) == "COMPLETED"
    assert (tmp_path / f"{job}.out").read_text().strip() == host

    assert sh(slurm_env, "srun", "-n1", "printenv", "SLURM_STEP_ID").strip() == "0"

    array = sh(
        slurm_env,
        "sbatch",
        "--parsable",
        "--array=0-2",
        "-o",
        str(tmp_path / "a_%a.out"),
        "--wrap",
        "echo $SLURM_ARRAY_TASK_ID",
    ).strip()
    assert wait_job(slurm_env, array) == "COMPLETED"
    assert [(tmp_path / f"a_{i}.out").read_text().strip() for i in range(3)] == ["0", "1", "2"]


def _expected(seed: int, steps: int) -> int:  # the toy app's LCG, uninterrupted
    value = seed + 1
    for step in range(steps):
        value = (value * 1103515245 + 12345 + step) % 2**31
    return value


def _events(folder: Path) -> list[dict]:
    return [json.loads(line) for line in (folder / "events.log").read_text().splitlines()]


def test_requeued_sweep_job_resumes_in_its_own_folder(slurm_env, tmp_path):
    """`scontrol requeue` (what PreemptMode=REQUEUE does): SIGTERM mid-run, the app saves and exits; SLURM
    restarts the same array task with SLURM_RESTART_COUNT=1; submitit replays the same pickled launcher
    call, so Hydra gives it the same job folder, where it finds checkpoints/interrupted.ckpt."""
    steps = 40
    sweep_dir = tmp_path / "sweep"
    sweep = subprocess.Popen(
        [
            sys.executable,
            str(HERE / "toy_app.py"),
            "-m",
            "hydra/launcher=submitit_slurm",
            f"hydra.sweep.dir={sweep_dir}",
            "hydra.launcher.cpus_per_task=1",
            "hydra.launcher.mem_gb=1",
            "hydra.launcher.timeout_min=60",
            f"steps={steps}",
            "step_s=0.25",
            "seed=0,1",
        ],
        env=slurm_env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    progress = sweep_dir / "0" / "progress"
    requeue_first_job(
        slurm_env, sweep, sweep_dir, lambda: progress.is_file() and bool(progress.read_text())
        and int(progress.read_text()) >= 8, timeout=120,
    )  # fmt: skip

    first, stop, again, done = _events(sweep_dir / "0")
    assert [e["event"] for e in (first, stop, again, done)] == ["start", "interrupted", "start", "done"]
    assert "SLURM_RESTART_COUNT" not in first["env"] and again["env"]["SLURM_RESTART_COUNT"] == "1"
    assert again["env"]["SLURM_JOB_ID"] == first["env"]["SLURM_JOB_ID"]  # the same job, requeued
    assert 0 < again["resumed_from"] == stop["step"] < steps
    assert done["value"] == _expected(0, steps)

    untouched = _events(sweep_dir / "1")
    assert [e["event"] for e in untouched] == ["start", "done"] and untouched[-1]["value"] == _expected(1, steps)
