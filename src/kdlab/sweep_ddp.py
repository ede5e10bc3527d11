"""Let Lightning's script-relaunching DDP run inside a Hydra multirun, one sweep job at a time."""

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager

import lightning as L
import torch.distributed as dist
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
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
    start sweeps of their own: they get this job's overrides and folder instead, in run mode. After
    the job the process group and launcher variables go, so the next job launches fresh children.
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
    sys.argv = [argv[0], *hydra_cfg.overrides.task]
    try:
        yield
    finally:
        sys.argv = argv
        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()
        for key in LAUNCHER_ENV:
            os.environ.pop(key, None)
