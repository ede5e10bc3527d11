"""A failed job in a multirun is logged and scored NaN; a single run still raises."""

import logging
import math

import pytest
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import open_dict, read_write

from kdlab.sweeps import sweep_job


@pytest.fixture
def hydra_cfg(make_cfg):
    """A composed config with HydraConfig set, in the mode asked for."""

    def make(mode: str):
        cfg = make_cfg()
        with read_write(cfg.hydra), open_dict(cfg.hydra):
            cfg.hydra.mode = mode
        HydraConfig().set_config(cfg)
        return cfg

    yield make
    GlobalHydra.instance().clear()


@sweep_job
def broken_job(cfg):
    raise ValueError("Error in call to target 'KD':\ndistill.temperature must be > 0, got 0")


@sweep_job
def good_job(cfg):
    return 0.75


def test_a_failed_job_in_a_multirun_returns_nan_and_names_its_folder(hydra_cfg, caplog):
    cfg = hydra_cfg("MULTIRUN")
    with caplog.at_level(logging.ERROR, logger="kdlab.sweeps.jobs"):
        value = broken_job(cfg)
    assert math.isnan(value)
    (record,) = caplog.records
    first_line = record.getMessage().splitlines()[0]
    assert cfg.hydra.runtime.output_dir in first_line
    assert "ValueError: Error in call to target 'KD': distill.temperature must be > 0, got 0" in first_line
    assert record.exc_info is not None  # the traceback goes to the job's log


def test_a_failed_single_run_raises(hydra_cfg):
    cfg = hydra_cfg("RUN")
    with pytest.raises(ValueError, match="temperature"):
        broken_job(cfg)


def test_a_healthy_job_returns_its_value_and_interrupts_still_stop_the_sweep(hydra_cfg):
    cfg = hydra_cfg("MULTIRUN")
    assert good_job(cfg) == 0.75

    @sweep_job
    def interrupted(cfg):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        interrupted(cfg)
