"""Threads follow the CPUs a job was given and the kdlab runs already going; idle OpenMP workers soon sleep."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

import kdlab.threads as threads


@pytest.fixture
def fresh(monkeypatch, tmp_path):
    """A process that has not chosen yet, alone in its own registry, with no thread settings in the environment."""
    monkeypatch.setenv(threads.REGISTRY_ENV, str(tmp_path / "runs"))
    for var in ("OMP_NUM_THREADS", "SLURM_CPUS_PER_TASK", "SUBMITIT_EXECUTOR"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(threads, "cgroup_cpus", lambda: None)
    before = torch.get_num_threads()
    threads.reset_for_tests()
    yield tmp_path / "runs"
    threads.reset_for_tests()
    torch.set_num_threads(before)


def test_the_cpus_given_are_the_affinity_narrowed_by_slurm_and_the_launcher(monkeypatch):
    monkeypatch.setattr(threads, "cgroup_cpus", lambda: None)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2, 3, 4, 5}, raising=False)
    monkeypatch.delenv("SLURM_CPUS_PER_TASK", raising=False)
    assert threads.allotted_cpus() == (6, "CPU affinity")
    monkeypatch.setenv("SLURM_CPUS_PER_TASK", "4")
    assert threads.allotted_cpus() == (4, "SLURM_CPUS_PER_TASK")
    assert threads.allotted_cpus(launcher_cpus=2) == (2, "hydra.launcher.cpus_per_task")
    monkeypatch.setattr(threads, "cgroup_cpus", lambda: 1)
    assert threads.allotted_cpus(launcher_cpus=2) == (1, "cgroup CPU quota")


def test_a_cgroup_quota_counts_whole_cpus(tmp_path):
    (tmp_path / "cpu.max").write_text("250000 100000\n")
    assert threads.cgroup_cpus(str(tmp_path)) == 2
    (tmp_path / "cpu.max").write_text("max 100000\n")
    assert threads.cgroup_cpus(str(tmp_path)) is None


def test_a_run_takes_the_cpus_it_was_given_once(fresh, monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2}, raising=False)
    plan = threads.configure_threads()
    assert (plan.threads, plan.chosen_by, plan.cpus, plan.cpus_from, plan.held_by_others) == (
        3,
        "auto",
        3,
        "CPU affinity",
        0,
    )
    assert torch.get_num_threads() == 3
    assert (fresh / f"{os.getpid()}.run").read_text().split()[0] == "3"
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0}, raising=False)
    assert threads.configure_threads() is plan  # never changed mid-process (a teacher trained first, a sweep)
    assert torch.get_num_threads() == 3


def test_threads_held_by_other_live_runs_are_left_to_them(fresh, monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2, 3}, raising=False)
    fresh.mkdir(parents=True)
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        started = threads._start_time(other.pid) or ""
        (fresh / f"{other.pid}.run").write_text(f"3 {started}\n")
        (fresh / "999999999.run").write_text("4 1\n")  # a run that died without cleaning up
        plan = threads.configure_threads()
    finally:
        other.kill()
        other.wait()
    assert (plan.threads, plan.held_by_others) == (1, 3)
    assert not (fresh / "999999999.run").exists()
    assert threads.live_runs(fresh) == {}  # the other run ended: its file goes at the next look


def test_omp_num_threads_and_runtime_threads_win(fresh, monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2, 3}, raising=False)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert (threads.configure_threads().threads, threads.configure_threads().chosen_by) == (1, "OMP_NUM_THREADS")
    threads.reset_for_tests()
    monkeypatch.delenv("OMP_NUM_THREADS")
    assert threads.configure_threads(2).chosen_by == "runtime.threads" and torch.get_num_threads() == 2
    threads.reset_for_tests()
    with pytest.raises(ValueError, match="runtime.threads='many'"):
        threads.configure_threads("many")


def test_idle_openmp_workers_spin_briefly_unless_the_environment_says_otherwise():
    script = "import kdlab.threads, os; print(os.environ.get('GOMP_SPINCOUNT'), os.environ.get('OMP_WAIT_POLICY'))"
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}

    def run(extra: dict[str, str], code: str = script) -> str:
        done = subprocess.run([sys.executable, "-c", code], env={**env, **extra}, capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
        return done.stdout.strip()

    assert run({}) == "20000 None"
    assert run({"OMP_WAIT_POLICY": "PASSIVE"}) == "None PASSIVE"  # the user's choice stands
    assert run({"GOMP_SPINCOUNT": "5"}) == "5 None"
    # too late once torch is loaded: OpenMP has read its policy already; kdlab then leaves it alone
    assert run({}, "import torch, kdlab.threads, os; print(os.environ.get('GOMP_SPINCOUNT'))") == "None"


def test_a_run_records_its_threads(make_cfg, monkeypatch, tmp_path):
    from kdlab.run import train

    monkeypatch.setenv(threads.REGISTRY_ENV, str(tmp_path / "runs"))
    threads.reset_for_tests()
    try:
        record, _ = train(make_cfg("experiment=student_scratch_mlp", "trainer.fast_dev_run=true"))
    finally:
        threads.reset_for_tests()
    runtime = record.code["runtime"]
    assert runtime["threads"] == torch.get_num_threads() >= 1 and runtime["cpus_from"] and runtime["chosen_by"]
