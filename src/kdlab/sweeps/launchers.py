"""Refuse what cannot work: Lightning's script-relaunching DDP inside a sweep's job.

Lightning's `ddp` starts each extra process by re-running the main script with the job's
arguments. Inside a sweep that re-run is wrong whatever the launcher: under Hydra's basic launcher
the children inherit `-m` and would start sweeps of their own in the run folder (not the job's);
inside a submitit job the main script is submitit's job runner, whose "children" never join this
job's process group. Spawned workers (`ddp_spawn`) are not re-runs of the script and work in sweeps;
under SLURM with one task per device (hydra/launcher=slurm), srun starts the ranks and nothing is re-run.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import torch
from hydra.experimental.callback import Callback
from hydra.utils import get_class
from omegaconf import DictConfig, ListConfig

from kdlab.config import ConfigError
from kdlab.sweeps.health import SweepFailed

SUBMITIT_LOCAL_LAUNCHER = "hydra_plugins.hydra_submitit_launcher.submitit_launcher.LocalLauncher"
SUBMITIT_SLURM_LAUNCHER = "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher"
SPAWNING = ("spawn", "fork", "forkserver")  # DDPStrategy start methods that do not re-run the script


def refusal(strategy: Any) -> str:
    return (
        f"trainer.strategy={strategy} with several devices re-runs the training script in each extra "
        "process, which cannot work inside a sweep (-m): the re-run would start a sweep of its own, or, in a job "
        "of hydra/launcher=local, re-run submitit's job runner. Use trainer=ddp_spawn in sweeps (its workers "
        "are spawned, not re-run), or run this job alone without -m, where trainer=ddp works."
    )


def in_submitit_local_job(environ: Mapping[str, str] | None = None) -> bool:
    """True in a process that submitit's local executor started as a job's task.

    submitit's controller sets SUBMITIT_EXECUTOR=local (what its LocalJobEnvironment checks) and
    gives each task SUBMITIT_LOCAL_JOB_ID (submitit/local/local.py: start_controller, start_tasks).
    """
    env = os.environ if environ is None else environ
    return env.get("SUBMITIT_EXECUTOR") == "local" and "SUBMITIT_LOCAL_JOB_ID" in env


def process_count(trainer_cfg: DictConfig) -> int:
    """devices x num_nodes, as Lightning will count them on this machine."""
    devices = trainer_cfg.get("devices", "auto")
    if isinstance(devices, (list, tuple, ListConfig)):
        count = len(devices)
    elif str(devices) in ("auto", "-1"):
        on_gpu = trainer_cfg.get("accelerator", "auto") in ("gpu", "cuda", "auto") and torch.cuda.is_available()
        count = torch.cuda.device_count() if on_gpu else 1
    elif isinstance(devices, str) and "," in devices:
        count = len([d for d in devices.split(",") if d.strip()])  # "0,1": device indices
    else:
        count = int(devices)
    return count * int(trainer_cfg.get("num_nodes") or 1)


def relaunches_script(trainer_cfg: DictConfig) -> bool:
    """Would Lightning start this trainer's extra processes by re-running the script?"""
    from lightning.pytorch.strategies import DDPStrategy, FSDPStrategy, ModelParallelStrategy, StrategyRegistry

    if process_count(trainer_cfg) < 2:
        return False
    strategy = trainer_cfg.get("strategy") or "auto"
    if isinstance(strategy, str):
        if strategy == "auto":
            return True  # several devices: Lightning picks `ddp` (start_method popen)
        entry = dict.get(StrategyRegistry, strategy)
        if entry is None:
            return False  # not a registered name: Lightning will reject it itself
        cls, start_method = entry["strategy"], entry["init_params"].get("start_method", "popen")
    else:
        cls, start_method = get_class(strategy._target_), strategy.get("start_method", "popen")
    if issubclass(cls, DDPStrategy):
        return start_method not in SPAWNING
    return issubclass(cls, (FSDPStrategy, ModelParallelStrategy))


def check_launcher_strategy(cfg: DictConfig) -> None:
    """In a sweep's job, refuse a relaunching strategy before anything trains (config validation)."""
    from kdlab.sweeps.jobs import in_multirun

    if "LOCAL_RANK" in os.environ or int(os.environ.get("SLURM_NTASKS", "1") or 1) > 1:
        return  # an already launched DDP process, or srun's tasks: Lightning starts no more
    if (in_multirun() or in_submitit_local_job()) and relaunches_script(cfg.trainer):
        raise ConfigError(refusal(cfg.trainer.strategy))


class RefuseRelaunchingDDP(Callback):
    """The same refusal in the sweep's driver, before any job starts (configured under `hydra.callbacks`).

    It sees the trainer the command line fixes (`trainer=ddp`); a swept one (`trainer=cpu,ddp`) is
    caught in each job by `check_launcher_strategy`.
    """

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        trainer = config.get("trainer")
        launcher = config.hydra.launcher.get("_target_")
        if trainer is not None and launcher != SUBMITIT_SLURM_LAUNCHER and relaunches_script(trainer):
            raise SweepFailed(refusal(trainer.strategy))  # an Exception would only be a warning here
