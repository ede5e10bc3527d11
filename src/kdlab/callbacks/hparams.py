"""TensorBoard's HPARAMS tab, complete every time: the session starts when training does, ends when the run does.

The entry is written while the logger is open (not after `trainer.test`, when Lightning has already
closed it) and lists the keys a researcher varies (not mirror URLs). The session-end record carries
the run's status, and the writer is flushed and closed afterwards.

Each run writes its session start and end only, never an *experiment* summary (torch's `hparams()`
writes one per run): when any run under `--logdir` holds one, TensorBoard takes the first it finds as
the whole table's layout, whose keys say nothing of which vary. Without one, TensorBoard derives the
columns from all the runs shown: a key whose value differs between them is marked `differs` and listed
(and shown) first, and the metric columns are the runs' scalar tags (`test/acc`, `val/acc_best`, ...).
"""

from __future__ import annotations

import abc
from typing import Any

import lightning as L
from lightning.pytorch.loggers import Logger, TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_only


class LoggerSession(L.Callback, abc.ABC):
    """Give each logger this run's keys once, when training (or a test-only run) starts: the loggers a
    subclass `wants`, each through its `begin`. `end` closes the session once the record is final."""

    def __init__(self, hparams: dict[str, Any]) -> None:
        self.hparams = hparams
        self._started: list[Logger] = []

    @abc.abstractmethod
    def wants(self, logger: Logger) -> bool:
        """Whether this session writes to `logger`."""

    @abc.abstractmethod
    def begin(self, logger: Logger) -> None:
        """Write the run's keys to `logger`, once."""

    @rank_zero_only
    def _start(self, trainer) -> None:
        for logger in trainer.loggers:
            if self.wants(logger) and logger not in self._started:
                self.begin(logger)
                self._started.append(logger)

    def on_fit_start(self, trainer, pl_module) -> None:
        self._start(trainer)

    def on_test_start(self, trainer, pl_module) -> None:
        self._start(trainer)  # train=false runs test only


class TensorBoardSession(LoggerSession):
    def wants(self, logger: Logger) -> bool:
        return isinstance(logger, TensorBoardLogger)

    def begin(self, logger: Logger) -> None:
        from torch.utils.tensorboard.summary import hparams as hparams_summary

        _, ssi, _ = hparams_summary(self.hparams, {})  # its experiment summary is left out: see above
        writer = logger.experiment.file_writer  # SummaryWriter makes it in __init__
        writer.add_summary(ssi)
        writer.flush()

    @rank_zero_only
    def end(self, success: bool) -> None:
        """Write the session end (the run's status) once the record is final, beside the run's events.

        Lightning has closed its writer by then; a FileWriter of its own adds one more events file to the
        same folder, which TensorBoard reads as the same run.
        """
        from torch.utils.tensorboard.writer import FileWriter

        for logger in self._started:
            logger.experiment.close()
            writer = FileWriter(logger.log_dir)
            writer.add_summary(session_end(success))
            writer.close()
        self._started = []


def session_end(success: bool):
    """The HPARAMS session-end summary with the run's status (torch's `hparams()` only writes SUCCESS)."""
    from tensorboard.compat.proto.summary_pb2 import Summary, SummaryMetadata
    from tensorboard.plugins.hparams.api_pb2 import Status
    from tensorboard.plugins.hparams.metadata import PLUGIN_DATA_VERSION, PLUGIN_NAME, SESSION_END_INFO_TAG
    from tensorboard.plugins.hparams.plugin_data_pb2 import HParamsPluginData, SessionEndInfo

    status = Status.Value("STATUS_SUCCESS" if success else "STATUS_FAILURE")
    content = HParamsPluginData(session_end_info=SessionEndInfo(status=status), version=PLUGIN_DATA_VERSION)
    metadata = SummaryMetadata(
        plugin_data=SummaryMetadata.PluginData(plugin_name=PLUGIN_NAME, content=content.SerializeToString())
    )
    return Summary(value=[Summary.Value(tag=SESSION_END_INFO_TAG, metadata=metadata)])
