"""Refusing script-relaunching DDP inside a sweep's job, and knowing when we are in a submitit job."""

import os

import pytest
import submitit
from omegaconf import OmegaConf

from kdlab.config import ConfigError
from kdlab.sweeps import RefuseRelaunchingDDP, SweepFailed, check_launcher_strategy, in_submitit_local_job
from kdlab.sweeps.launchers import SUBMITIT_LOCAL_LAUNCHER, SUBMITIT_SLURM_LAUNCHER, relaunches_script


def trainer(**values):
    return OmegaConf.create({"accelerator": "cpu", "devices": 2, "num_nodes": 1, "strategy": "auto", **values})


@pytest.mark.parametrize(
    ("values", "relaunches"),
    [
        ({"strategy": "ddp", "devices": 2}, True),
        ({"strategy": "ddp_find_unused_parameters_true", "devices": 2}, True),
        ({"strategy": "auto", "devices": 2}, True),  # Lightning picks ddp
        ({"strategy": "fsdp", "devices": "0,1"}, True),
        ({"strategy": "ddp", "devices": 1, "num_nodes": 2}, True),
        ({"strategy": {"_target_": "lightning.pytorch.strategies.DDPStrategy"}, "devices": [0, 1]}, True),
        ({"strategy": "ddp", "devices": 1}, False),  # one process: no children
        ({"strategy": "auto", "devices": 1}, False),
        ({"strategy": "ddp", "devices": "auto"}, False),  # auto on CPU is one device
        ({"strategy": "ddp_spawn", "devices": 2}, False),
        ({"strategy": "ddp_fork", "devices": 2}, False),
        ({"strategy": {"_target_": "lightning.pytorch.strategies.DDPStrategy", "start_method": "spawn"}}, False),
    ],
)
def test_relaunches_script(values, relaunches):
    assert relaunches_script(trainer(**values)) is relaunches


SUBMITIT_TASK_ENV = {"SUBMITIT_EXECUTOR": "local", "SUBMITIT_LOCAL_JOB_ID": "4242"}


def test_ddp_is_refused_inside_a_sweeps_job_only(monkeypatch):
    cfg = OmegaConf.create({"trainer": trainer(strategy="ddp", devices=2)})
    monkeypatch.setattr("kdlab.sweeps.jobs.in_multirun", lambda: False)
    check_launcher_strategy(cfg)  # a single run, not in a sweep: fine
    for key, value in SUBMITIT_TASK_ENV.items():
        monkeypatch.setenv(key, value)
    with pytest.raises(ConfigError, match=r"Use trainer=ddp_spawn in sweeps"):
        check_launcher_strategy(cfg)
    check_launcher_strategy(OmegaConf.create({"trainer": trainer(strategy="ddp_spawn", devices=2)}))
    monkeypatch.setenv("LOCAL_RANK", "1")  # a DDP child launched by Lightning: it launches nothing
    check_launcher_strategy(cfg)


def test_ddp_is_refused_in_a_multirun_of_the_basic_launcher(monkeypatch):
    """Its children would inherit -m and start sweeps of their own (the trap kdlab.sweeps.ddp once patched)."""
    cfg = OmegaConf.create({"trainer": trainer(strategy="ddp", devices=2)})
    monkeypatch.setattr("kdlab.sweeps.jobs.in_multirun", lambda: True)
    with pytest.raises(ConfigError, match=r"cannot work inside a sweep"):
        check_launcher_strategy(cfg)
    monkeypatch.setenv("SLURM_NTASKS", "2")  # srun started the ranks (hydra/launcher=slurm): nothing re-runs
    check_launcher_strategy(cfg)


def test_the_sweep_driver_refuses_before_any_job_starts():
    def config(launcher, strategy):
        return OmegaConf.create(
            {"hydra": {"launcher": {"_target_": launcher}}, "trainer": trainer(strategy=strategy, devices=2)}
        )

    basic = "hydra._internal.core_plugins.basic_launcher.BasicLauncher"
    for launcher in (SUBMITIT_LOCAL_LAUNCHER, basic):
        with pytest.raises(SweepFailed, match=r"Use trainer=ddp_spawn in sweeps"):
            RefuseRelaunchingDDP().on_multirun_start(config(launcher, "ddp"))
        RefuseRelaunchingDDP().on_multirun_start(config(launcher, "ddp_spawn"))
    RefuseRelaunchingDDP().on_multirun_start(config(SUBMITIT_SLURM_LAUNCHER, "ddp"))  # srun starts the ranks


@pytest.mark.slow
def test_detection_inside_a_real_submitit_local_job(tmp_path):
    """What submitit's local executor really sets, read in one of its jobs (the launcher's executor)."""
    assert not in_submitit_local_job()
    # by value (a lambda), so the job's process reads its environment without importing torch first
    job = submitit.AutoExecutor(folder=tmp_path, cluster="local").submit(lambda: dict(os.environ))
    job_environ = job.result()
    assert in_submitit_local_job(job_environ)
    assert job_environ["SUBMITIT_LOCAL_JOB_ID"] == job.job_id
