"""How many threads a run computes with: `runtime.threads`, or the CPUs this job was given. Recorded, never guessed.

The count changes a run's numbers in their last bits (float reductions split differently), so it comes
only from what the run is told, never from how busy the machine is: the same seed, config and thread
count give the same metrics alone or beside other runs, and the record says which count ran.
`auto` takes the CPUs this process was given: its CPU affinity (taskset), narrowed by SLURM_CPUS_PER_TASK,
a submitit launcher's `cpus_per_task` or a cgroup CPU quota; OMP_NUM_THREADS, when exported, wins.
Parallel jobs on one machine share its cores by being given fewer each (hydra.launcher.cpus_per_task,
runtime.threads): oversubscribed OpenMP threads run many times slower.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import asdict, dataclass
from pathlib import Path


@dataclass(frozen=True)
class ThreadPlan:
    threads: int
    chosen_by: str  # "runtime.threads", "OMP_NUM_THREADS" or the source of the CPU count
    cpus: int  # CPUs given to this job

    def as_record(self) -> dict[str, int | str]:
        return asdict(self)


def cgroup_cpus(root: str = "/sys/fs/cgroup") -> int | None:
    """Whole CPUs of a cgroup v2 quota (`cpu.max`: "200000 100000" = 2 CPUs), or None without one."""
    with contextlib.suppress(OSError, ValueError):
        quota, period = Path(root, "cpu.max").read_text().split()[:2]
        if quota != "max":
            return max(1, int(quota) // int(period))
    return None


def launcher_cpus() -> int | None:
    """`hydra.launcher.cpus_per_task` inside a job started by the submitit launcher (local or SLURM)."""
    if not os.environ.get("SUBMITIT_EXECUTOR"):
        return None
    with contextlib.suppress(Exception):
        from hydra.core.hydra_config import HydraConfig

        if HydraConfig.initialized():
            value = HydraConfig.get().launcher.get("cpus_per_task")
            return int(value) if value else None
    return None


def allotted_cpus() -> tuple[int, str]:
    """The CPUs this process may use and what says so."""
    try:
        cpus, source = len(os.sched_getaffinity(0)), "CPU affinity"
    except AttributeError:  # not Linux
        cpus, source = os.cpu_count() or 1, "CPU count"
    slurm = os.environ.get("SLURM_CPUS_PER_TASK", "")
    limits = [(int(slurm), "SLURM_CPUS_PER_TASK")] if slurm.isdigit() and int(slurm) > 0 else []
    limits += [(n, "hydra.launcher.cpus_per_task") for n in [launcher_cpus()] if n]
    limits += [(n, "cgroup CPU quota") for n in [cgroup_cpus()] if n is not None]
    for limit, why in limits:
        if limit < cpus:
            cpus, source = limit, why
    return max(1, cpus), source


def check_threads(setting: object) -> None:
    if setting != "auto" and (isinstance(setting, bool) or not str(setting).isdigit() or int(setting) < 1):
        raise ValueError(
            f"runtime.threads={setting!r}: give `auto` (the CPUs this job was given) or a whole number of threads >= 1."
        )


def plan_threads(setting: int | str = "auto") -> ThreadPlan:
    """What this run computes with (torch's intra-op threads), from its config or its allotment."""
    check_threads(setting)
    cpus, source = allotted_cpus()
    if setting != "auto":
        return ThreadPlan(int(setting), "runtime.threads", cpus)
    explicit = os.environ.get("OMP_NUM_THREADS", "")
    if explicit.isdigit() and int(explicit) > 0:
        return ThreadPlan(int(explicit), "OMP_NUM_THREADS", cpus)
    return ThreadPlan(cpus, source, cpus)


def apply_threads(plan: ThreadPlan) -> None:
    import torch

    if torch.get_num_threads() != plan.threads:
        torch.set_num_threads(plan.threads)
