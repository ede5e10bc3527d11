"""Mirror the run on every tracker besides TensorBoard (CSV, MLflow, W&B): its keys, final metrics and status.

metrics.json (kdlab.record.RunRecord) is the record; a tracker gets a copy through Lightning's public
logger API, so any Lightning logger works the same way:
- at the start, `log_hyperparams` with the researcher's keys (the dict TensorBoard's HPARAMS shows);
- at the end, once the record is final, `log_metrics` with the record's metrics (test/*, val/acc_best, ...)
  and the status as one more key, then `finalize` with the status, so an MLflow run reads FINISHED,
  FAILED or KILLED like the record. A tracker that fails then gets an error line, not the run: the record
  is on disk already.
TensorBoard is left to `TensorBoardSession`, whose HPARAMS entry has a layout of its own.
"""

from __future__ import annotations

import logging
import math

from lightning.pytorch.loggers import Logger, TensorBoardLogger, WandbLogger
from lightning.pytorch.utilities import rank_zero_only

from kdlab.callbacks.hparams import LoggerSession
from kdlab.record import RunRecord

log = logging.getLogger(__name__)

# The record's status as Lightning's `finalize` takes it: "success"/"failed", or MLflow's own KILLED.
FINALIZE_STATUS = {"ok": "success", "smoke": "success", "interrupted": "KILLED"}


def finalize_status(status: str) -> str:
    return FINALIZE_STATUS.get(status, "failed")  # diverged, failed, and a run that never got further


class TrackerMirror(LoggerSession):
    def wants(self, logger: Logger) -> bool:
        return not isinstance(logger, TensorBoardLogger)

    def begin(self, logger: Logger) -> None:
        logger.log_hyperparams(self.hparams)

    @rank_zero_only
    def end(self, record: RunRecord) -> None:
        """The final metrics and status, once the record holds them (after Lightning finalized its loggers)."""
        metrics = {k: float(v) for k, v in record.metrics.items() if v is not None and not math.isnan(v)}
        status = {"status": record.status, **({"smoke": ", ".join(record.smoke)} if record.smoke else {})}
        for logger in self._started:
            try:
                logger.log_hyperparams(status)  # a smoke run's numbers must not pass for a result
                if metrics:
                    logger.log_metrics(metrics, step=record.global_step)
                logger.finalize(finalize_status(record.status))
                if isinstance(logger, WandbLogger):  # else the next job of a sweep in this process reuses the run
                    logger.experiment.finish(exit_code=0 if record.finished else 1)
            except Exception as err:  # the record is written already: a tracker that is down costs only its copy
                log.error(
                    "%s did not receive this run's final metrics and status (%s: %s); metrics.json in %s holds them.",
                    type(logger).__name__, type(err).__name__, err, record.output_dir,
                )  # fmt: skip
        self._started = []
