"""Let Lightning's script-relaunching DDP run inside a Hydra multirun, one sweep job at a time."""

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager

import lightning as L
import torch.distributed as dist
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from lightning.fabric.strategies.launchers.subprocess_script import _ChildProcessObserver
from lightning.pytorch.strategies.launchers import subprocess_script
from lightning.pytorch.strategies.launchers.subprocess_script import _SubprocessScriptLauncher
from omegaconf import open_dict, read_write

# What Lightning's launcher leaves in the parent's environment; while LOCAL_RANK is set, the next
# job's launcher would believe its processes are created externally and launch no children.
LAUNCHER_ENV = ("MASTER_ADDR", "MASTER_PORT", "NODE_RANK", "LOCAL_RANK", "WORLD_SIZE")


@contextmanager
def sweep_job_ddp(trainer: L.Trainer) -> Iterator[None]:
    """Inside a multirun, make DDP children join this job, and leave no trace for the next job.

    Lightning re-runs `sys.argv` in each child with `hydra.run.dir=<run.dir>`. In a multirun argv
    still holds `-m` and the sweep lists, and run.dir is not the job's folder, so the children would
    start sweeps of their own: they get this job's overrides and folder instead, in run mode
    (`hydra.mode=RUN`, or a config that sets `hydra.mode: MULTIRUN`, like hparams_search=kd_optuna,
    makes every child start a study of its own). While the job runs, a child that dies ends this
    job only, not the sweep's process (see `_observe_children`). After the job the process group
    and launcher variables go, so the next job launches fresh children.
    """
    in_sweep = HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN
    relaunches = isinstance(getattr(trainer.strategy, "launcher", None), _SubprocessScriptLauncher)
    if not (in_sweep and relaunches) or any(key in os.environ for key in LAUNCHER_ENV[-2:]):
        yield  # nothing to fix, or this is already a child / an externally launched process
        return
    hydra_cfg = HydraConfig.get()
    with read_write(hydra_cfg), open_dict(hydra_cfg):
        hydra_cfg.run.dir = hydra_cfg.runtime.output_dir
    argv = sys.argv
    sys.argv = [argv[0], *hydra_cfg.overrides.task, "hydra.mode=RUN"]
    observe = subprocess_script._launch_process_observer
    subprocess_script._launch_process_observer = _observe_children
    try:
        yield
    finally:
        sys.argv = argv
        subprocess_script._launch_process_observer = observe
        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()
        for key in LAUNCHER_ENV:
            os.environ.pop(key, None)


def _observe_children(child_processes: list) -> None:
    """Lightning's watchdog, minus the SIGKILL of this process when a child exits non-zero.

    In a sweep this process is the sweep's driver: killing it would end every job still to come.
    Here the other children are killed instead; rank 0 then fails at its next collective (gloo at
    once, NCCL after the process group's timeout) and the job ends as failed, as any job may.
    """

    def kill_children() -> None:
        for proc in child_processes:
            if proc.poll() is None:
                proc.kill()

    observer = _ChildProcessObserver(main_pid=os.getpid(), child_processes=child_processes)
    observer._terminate_all = kill_children  # type: ignore[method-assign]
    observer.start()
