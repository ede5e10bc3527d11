"""How many threads a run computes with: runtime.threads, else OMP_NUM_THREADS, else the CPUs it was given;
never a count that depends on what else runs on the machine."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

import kdlab.run.threads as threads
from kdlab.run.threads import ThreadPlan, plan_threads

pytestmark = pytest.mark.unit


@pytest.fixture
def given(monkeypatch):
    """`given(cpus)`: this process may run on `cpus` CPUs; no SLURM, launcher, cgroup or OMP setting."""
    for var in ("OMP_NUM_THREADS", "SLURM_CPUS_PER_TASK", "SUBMITIT_EXECUTOR"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(threads, "cgroup_cpus", lambda: None)

    def give(cpus: int) -> None:
        monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(cpus)), raising=False)

    return give


def test_runtime_threads_wins_over_everything(given, monkeypatch):
    given(6)
    monkeypatch.setenv("OMP_NUM_THREADS", "4")
    monkeypatch.setenv("SLURM_CPUS_PER_TASK", "2")
    assert plan_threads(3) == ThreadPlan(3, "runtime.threads", 2)
    assert plan_threads("5") == ThreadPlan(5, "runtime.threads", 2)  # more than given: the user's choice stands


def test_omp_num_threads_comes_next(given, monkeypatch):
    given(6)
    monkeypatch.setenv("OMP_NUM_THREADS", "4")
    assert plan_threads("auto") == ThreadPlan(4, "OMP_NUM_THREADS", 6)
    monkeypatch.setenv("OMP_NUM_THREADS", "0")  # not a count: ignored
    assert plan_threads() == ThreadPlan(6, "CPU affinity", 6)


def test_auto_takes_the_cpus_given_by_affinity_slurm_or_a_cgroup_quota(given, monkeypatch):
    given(6)
    assert plan_threads() == ThreadPlan(6, "CPU affinity", 6)
    monkeypatch.setenv("SLURM_CPUS_PER_TASK", "4")
    assert plan_threads() == ThreadPlan(4, "SLURM_CPUS_PER_TASK", 4)
    monkeypatch.setattr(threads, "cgroup_cpus", lambda: 3)
    assert plan_threads() == ThreadPlan(3, "cgroup CPU quota", 3)
    monkeypatch.setenv("SLURM_CPUS_PER_TASK", "16")  # more than the affinity allows: the affinity stands
    monkeypatch.setattr(threads, "cgroup_cpus", lambda: None)
    assert plan_threads() == ThreadPlan(6, "CPU affinity", 6)


def test_a_cgroup_quota_counts_whole_cpus(tmp_path):
    (tmp_path / "cpu.max").write_text("250000 100000\n")
    assert threads.cgroup_cpus(str(tmp_path)) == 2
    (tmp_path / "cpu.max").write_text("50000 100000\n")  # half a CPU is still one
    assert threads.cgroup_cpus(str(tmp_path)) == 1
    (tmp_path / "cpu.max").write_text("max 100000\n")
    assert threads.cgroup_cpus(str(tmp_path)) is None
    assert threads.cgroup_cpus(str(tmp_path / "none")) is None


def test_the_count_never_depends_on_other_live_kdlab_runs(given, monkeypatch, tmp_path):
    """Two runs of one config give the same numbers alone or side by side: the count is the same in both cases."""
    given(4)
    alone = plan_threads()
    # Another live kdlab run: a pid file in the run registry older kdlab kept (our parent process, alive), and
    # a run folder claimed by a live run.
    registry = tmp_path / "registry"
    registry.mkdir()
    parent = os.getppid()
    started = Path(f"/proc/{parent}/stat").read_text().rsplit(")", 1)[1].split()[19]
    (registry / f"{parent}.run").write_text(f"3 {started}\n")
    monkeypatch.setenv("KDLAB_RUN_REGISTRY", str(registry))
    from kdlab.run.folder import claim

    other = claim(tmp_path / "other_run")
    try:
        beside = plan_threads()
    finally:
        other.release()
    assert alone == beside == ThreadPlan(4, "CPU affinity", 4)


@pytest.mark.parametrize("setting", [0, -1, "many", True, 1.5, ""])
def test_a_wrong_setting_is_refused_with_the_choices(setting):
    with pytest.raises(ValueError, match=r"runtime\.threads=.*`auto`.*whole number of threads >= 1"):
        plan_threads(setting)


def test_the_plan_is_recorded_as_plain_values():
    assert ThreadPlan(2, "runtime.threads", 8).as_record() == {"threads": 2, "chosen_by": "runtime.threads", "cpus": 8}
