"""Which epoch each metric of a run's record comes from, counted from 1 as the progress bar and the epoch lines count.

A record holds `val/*` of the last validated epoch beside `val/acc_best`, the best epoch's accuracy, and
`test/*` of the tested (best) checkpoint: three epochs that read as one without saying so. This callback
follows the first two through training (and into checkpoints, so a resumed run keeps them); the tested
epoch is read from the tested checkpoint itself (kdlab.checkpoints.checkpoint_epoch).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import lightning as L

BEST = "val/acc_best"
CHECKPOINT_KEY = "kdlab_metric_epochs"


class MetricEpochs(L.Callback):
    """`last_val`: the epoch of the last validation; `best`: the epoch whose val/acc is val/acc_best (the
    first to reach it, as ModelCheckpoint's strict improvement keeps it); `tested`: set by whoever tests."""

    def __init__(self) -> None:
        self.last_val: int | None = None
        self.best: int | None = None
        self.tested: int | None = None
        self._best_value: float | None = None
        self._baseline_unknown = False  # resumed from a checkpoint that did not say when its best was

    def on_validation_end(self, trainer, pl_module) -> None:
        if trainer.sanity_checking:
            return
        # In fit the validated epoch is not counted yet; a validation after fit sees the weights of the last one.
        epoch = trainer.current_epoch + 1 if trainer.state.fn == "fit" else trainer.current_epoch
        self.last_val = epoch
        best = trainer.callback_metrics.get(BEST)
        if best is None or float(best) == self._best_value:
            return
        if not self._baseline_unknown:  # val/acc_best only rises: a new value is this epoch's val/acc
            self.best = epoch
        self._best_value, self._baseline_unknown = float(best), False

    # In the checkpoint under a key of its own, restored in fit only: Lightning restores callbacks' state_dict
    # when it tests a checkpoint too, which would turn this run's epochs back to the tested checkpoint's.
    def on_save_checkpoint(self, trainer, pl_module, checkpoint: dict[str, Any]) -> None:
        checkpoint[CHECKPOINT_KEY] = {"last_val": self.last_val, "best": self.best, "best_value": self._best_value}

    def on_load_checkpoint(self, trainer, pl_module, checkpoint: dict[str, Any]) -> None:
        if trainer.state.fn != "fit":
            return
        state = checkpoint.get(CHECKPOINT_KEY)
        if state is None:  # a checkpoint that did not say when its best was: no epoch is claimed for it
            self.last_val, self.best, self._best_value, self._baseline_unknown = None, None, None, True
        else:
            self.last_val, self.best, self._best_value = state["last_val"], state["best"], state["best_value"]
            self._baseline_unknown = False

    def of(self, metrics: Iterable[str]) -> dict[str, int]:
        """Each metric's epoch, for the record's `metric_epochs`; a metric whose epoch is not known is left out."""
        epochs = {}
        for key in metrics:
            epoch = self.tested if key.startswith("test/") else self.best if key == BEST else self.last_val
            if key.startswith(("test/", "val/")) and epoch is not None:
                epochs[key] = epoch
        return epochs
