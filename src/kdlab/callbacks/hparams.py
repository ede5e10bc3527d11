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

from typing import Any

import lightning as L
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_only


class TensorBoardSession(L.Callback):
    def __init__(self, hparams: dict[str, Any]) -> None:
        self.hparams = hparams
        self._started: list[TensorBoardLogger] = []

    @rank_zero_only
    def _start(self, trainer) -> None:
        from torch.utils.tensorboard.summary import hparams as hparams_summary

        for logger in trainer.loggers:
            if isinstance(logger, TensorBoardLogger) and logger not in self._started:
                _, ssi, _ = hparams_summary(self.hparams, {})  # its experiment summary is left out: see above
                writer = logger.experiment.file_writer  # SummaryWriter makes it in __init__
                writer.add_summary(ssi)
                writer.flush()
                self._started.append(logger)

    def on_fit_start(self, trainer, pl_module) -> None:
        self._start(trainer)

    def on_test_start(self, trainer, pl_module) -> None:
        self._start(trainer)  # train=false runs test only

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
