"""The one-node SLURM cluster of tests/cluster/slurm_up.sh, started for the slow tests here."""

from __future__ import annotations

import os
import subprocess

import pytest
from slurm import HERE, STATE, _alive


@pytest.fixture(scope="module")
def slurm_env():
    """The cluster up (left as found: stopped afterwards only if this fixture started it), and the
    environment its clients need: SLURM_CONF, and tests/cluster/bin first on PATH for submitit's sacct."""
    was_up = _alive(STATE / "run" / "slurmctld.pid")
    up = subprocess.run([HERE / "slurm_up.sh", STATE], capture_output=True, text=True, timeout=120)
    assert up.returncode == 0, up.stdout + up.stderr
    env = {
        **os.environ,
        "SLURM_CONF": str(STATE / "slurm.conf"),
        "PATH": f"{HERE / 'bin'}{os.pathsep}{os.environ['PATH']}",
        "OMP_NUM_THREADS": "1",
        "HYDRA_FULL_ERROR": "1",
    }
    yield env
    if not was_up:
        subprocess.run([HERE / "slurm_down.sh", STATE], capture_output=True, timeout=180)
