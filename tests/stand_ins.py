"""Stand-ins for what ends a run from outside, shared by the tests that check what such a run leaves."""

from __future__ import annotations

import lightning as L


class CrashAtEpoch(L.Callback):
    """Stands in for kill -9: the run dies as epoch `epoch` (0-based) starts; last.ckpt is what it leaves."""

    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        if trainer.current_epoch == self.epoch:
            raise RuntimeError("simulated crash")
