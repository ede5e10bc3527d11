"""How many threads a run computes with: the CPUs it was given, shared with the kdlab runs already going.

Parallel torch processes on a few cores crawled (measured on 2 cores: two runs side by side ~6x
slower each, three ~70x), for two reasons:
1. every process starts one intra-op thread per core, so N processes run N x cores threads;
2. OpenMP's idle workers spin (busy-wait) between parallel regions, so one process's waiting
   thread holds the core another process needs.

Threads: `runtime.threads=auto` takes the CPUs this job was given (the process's CPU affinity,
narrowed by SLURM_CPUS_PER_TASK, a submitit launcher's `cpus_per_task` or a cgroup CPU quota),
minus the threads other live kdlab runs on this machine hold (one small file per run under the
temp folder), and at least 1. OMP_NUM_THREADS, when set, wins. The count is chosen once per
process, at the start of its first run, and never changes: a run's numbers are reproducible for a
given thread count, which its record keeps (`record.code["runtime"]`).

Waiting: importing this module sets GOMP_SPINCOUNT=20000: an idle OpenMP worker spins ~20k
iterations (tens of microseconds) for more work, then sleeps, where libgomp's default spins 300k
(about a millisecond, so between a training step's parallel ops it never sleeps and holds a core
another process needs). Measured on 2 cores, two student_scratch_mlp runs started together took
4.9x the time of one after the other with libgomp's default and no thread plan, 0.8x with both
(0.5x with OMP_WAIT_POLICY=PASSIVE, which sleeps at once but made a run alone ~11% slower; 20k
spins ran alone as fast as the default). An OMP_WAIT_POLICY or GOMP_SPINCOUNT in the environment
is left alone. libgomp reads them once, when torch loads it, so this module must be imported before
torch: kdlab.run imports it first.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import sys
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

SPIN_COUNT = "20000"  # spins of an idle OpenMP worker before it sleeps (libgomp's default: 300000)
_TORCH_FIRST = "torch" in sys.modules  # imported before us: OpenMP has read its wait policy already
if not _TORCH_FIRST and "OMP_WAIT_POLICY" not in os.environ:
    os.environ.setdefault("GOMP_SPINCOUNT", SPIN_COUNT)

log = logging.getLogger(__name__)

REGISTRY_ENV = "KDLAB_RUN_REGISTRY"  # where live runs leave their pid files (default: <tmp>/kdlab-runs-<uid>)


@dataclass(frozen=True)
class ThreadPlan:
    """What this process computes with, and why."""

    threads: int
    chosen_by: str  # "auto" (CPUs given minus those held by others), "OMP_NUM_THREADS" or "runtime.threads"
    cpus: int  # CPUs given to this job
    cpus_from: str  # what says so: "CPU affinity", "SLURM_CPUS_PER_TASK", "hydra.launcher.cpus_per_task", ...
    held_by_others: int  # threads of other live kdlab runs on this machine at the start
    wait_policy: str  # how idle OpenMP workers wait: OMP_WAIT_POLICY=..., GOMP_SPINCOUNT=..., or libgomp's default

    def as_record(self) -> dict[str, int | str | None]:
        return asdict(self)

    def describe(self) -> str:
        policy = f"idle OpenMP workers wait by {self.wait_policy}"
        others = f", {self.held_by_others} held by other kdlab runs" if self.held_by_others else ""
        how = "" if self.chosen_by == "auto" else f" ({self.chosen_by})"
        return f"{self.threads} torch thread(s){how}: {self.cpus} CPU(s) given ({self.cpus_from}){others}; {policy}"


_PLAN: ThreadPlan | None = None


def allotted_cpus(launcher_cpus: int | None = None) -> tuple[int, str]:
    """The CPUs this process may use and what says so: affinity, SLURM, the launcher's cpus_per_task, a cgroup quota."""
    try:
        cpus, source = len(os.sched_getaffinity(0)), "CPU affinity"
    except AttributeError:  # not Linux
        cpus, source = os.cpu_count() or 1, "CPU count"
    limits = []
    slurm = os.environ.get("SLURM_CPUS_PER_TASK", "")
    if slurm.isdigit() and int(slurm) > 0:
        limits.append((int(slurm), "SLURM_CPUS_PER_TASK"))
    if launcher_cpus:
        limits.append((int(launcher_cpus), "hydra.launcher.cpus_per_task"))
    if (quota := cgroup_cpus()) is not None:
        limits.append((quota, "cgroup CPU quota"))
    for limit, why in limits:
        if limit < cpus:
            cpus, source = limit, why
    return max(1, cpus), source


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


# -- the registry of live runs -----------------------------------------------------------------------
def registry() -> Path:
    default = Path(tempfile.gettempdir()) / f"kdlab-runs-{os.getuid() if hasattr(os, 'getuid') else 'user'}"
    return Path(os.environ.get(REGISTRY_ENV) or default)


def _start_time(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (Linux), so a recycled pid is not taken for a run."""
    with contextlib.suppress(OSError, IndexError):
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat.rsplit(")", 1)[1].split()[19]
    return None


def _alive(pid: int, started: str | None) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return started is None or _start_time(pid) in (None, started)


def live_runs(folder: Path | None = None) -> dict[int, int]:
    """Other live kdlab runs on this machine: pid -> threads. Files of dead processes are removed."""
    folder = folder or registry()
    found = {}
    for path in folder.glob("*.run"):
        with contextlib.suppress(ValueError, OSError):
            pid = int(path.stem)
            threads, started = (path.read_text().split() + [""])[:2]
            if pid == os.getpid():
                continue
            if _alive(pid, started or None):
                found[pid] = int(threads)
            else:
                path.unlink(missing_ok=True)
    return found


def _register(folder: Path, threads: int) -> None:
    path = folder / f"{os.getpid()}.run"
    path.write_text(f"{threads} {_start_time(os.getpid()) or ''}\n")
    atexit.register(lambda: path.unlink(missing_ok=True))


# -- the choice ---------------------------------------------------------------------------------------
def choose_threads(setting: int | str = "auto", cpus: int = 1, held_by_others: int = 0) -> int:
    """`auto`: the given CPUs not held by other runs (at least 1); a number: that number."""
    if setting == "auto":
        return max(1, cpus - held_by_others)
    if isinstance(setting, bool) or not str(setting).isdigit() or int(setting) < 1:
        raise ValueError(
            f"runtime.threads={setting!r}: give `auto` (the CPUs this job was given, shared with other kdlab runs) "
            "or a whole number of threads >= 1."
        )
    return int(setting)


def configure_threads(setting: int | str = "auto") -> ThreadPlan:
    """Set torch's intra-op threads for this process, once; later calls (a teacher trained first) reuse it."""
    global _PLAN
    if _PLAN is not None:
        return _PLAN
    import torch

    from kdlab.locks import file_lock

    cpus, cpus_from = allotted_cpus(launcher_cpus())
    explicit = os.environ.get("OMP_NUM_THREADS", "")
    chosen_by = "runtime.threads" if setting != "auto" else "auto"
    if setting == "auto" and explicit.isdigit() and int(explicit) > 0:
        chosen_by = "OMP_NUM_THREADS"
    held, folder = 0, registry()
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with file_lock(folder / ".lock", timeout=10):  # one start at a time sees the others' choices
            held = sum(live_runs(folder).values())
            threads = int(explicit) if chosen_by == "OMP_NUM_THREADS" else choose_threads(setting, cpus, held)
            _register(folder, threads)
    except OSError as err:  # no writable temp folder: choose alone
        log.debug("No run registry (%s): threads chosen without it", err)
        threads = int(explicit) if chosen_by == "OMP_NUM_THREADS" else choose_threads(setting, cpus, 0)
    torch.set_num_threads(threads)
    _PLAN = ThreadPlan(threads, chosen_by, cpus, cpus_from, held, wait_policy())
    log.info("Computing with %s.", _PLAN.describe())
    if _TORCH_FIRST and threads > 1 and _PLAN.wait_policy == "libgomp's default":
        log.info(
            "torch was imported before kdlab, so idle OpenMP workers spin ~1 ms: with other jobs on these cores, "
            "export GOMP_SPINCOUNT=%s (or OMP_WAIT_POLICY=PASSIVE) before starting Python.",
            SPIN_COUNT,
        )
    return _PLAN


def wait_policy() -> str:
    """How idle OpenMP workers wait in this process (as libgomp read it when torch loaded)."""
    if policy := os.environ.get("OMP_WAIT_POLICY"):
        return f"OMP_WAIT_POLICY={policy}"
    if spins := os.environ.get("GOMP_SPINCOUNT"):
        return f"GOMP_SPINCOUNT={spins}"
    return "libgomp's default"


def reset_for_tests() -> None:
    """Forget this process's choice (tests only: a real process chooses once)."""
    global _PLAN
    _PLAN = None
