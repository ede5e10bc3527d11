"""One failed job must not end a sweep: in a multirun it is logged and scored NaN, and the sweep goes on."""

import functools
import logging
import math
from collections.abc import Callable

from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

log = logging.getLogger(__name__)


def in_multirun() -> bool:
    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def sweep_job(task: Callable[[DictConfig], float | None]) -> Callable[[DictConfig], float | None]:
    """Wrap a `@hydra.main` task: in a multirun, a job that raises logs why and returns NaN instead.

    Hydra's basic sweeper re-raises the first failed job after its batch, which would end the grid
    there; with NaN it goes on to the next job. kdlab's Optuna sweeper (kdlab.sweeps.study) records a
    NaN trial as FAIL and asks for the next. The sweep still exits non-zero at its end:
    `kdlab.sweeps.health.SweepHealth` finds the job's folder without a healthy run record. A single
    run raises as before (non-zero exit); so do KeyboardInterrupt and SystemExit, which stop the sweep.
    """

    @functools.wraps(task)
    def job(cfg: DictConfig) -> float | None:
        try:
            return task(cfg)
        except Exception as err:
            if not in_multirun():
                raise
            folder = HydraConfig.get().runtime.output_dir
            message = " ".join(line.strip() for line in str(err).splitlines() if line.strip())  # one line
            log.error(
                "Job %s failed, the sweep goes on (and will exit non-zero): %s: %s",
                folder,
                type(err).__name__,
                message,
                exc_info=True,  # the traceback follows, in the job's log
            )
            return math.nan

    return job
