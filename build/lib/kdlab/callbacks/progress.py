"""Lightning's Rich progress bar, updated a few times a second instead of after every step.

Each update builds the bar's metrics dict and takes Rich's lock, tens of microseconds a step, and
Rich redraws at most `refresh_rate` times a second anyway: updating on a timer shows the same bar.
"""

from __future__ import annotations

import time

from lightning.pytorch.callbacks import RichProgressBar


class RichBar(RichProgressBar):
    def __init__(self, *args, update_every_s: float = 0.25, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.update_every_s = update_every_s
        self._last_update = 0.0

    def _due(self, batch_idx: int, total: int | float) -> bool:
        now = time.monotonic()
        if now - self._last_update >= self.update_every_s or batch_idx + 1 >= total:
            self._last_update = now
            return True
        return False

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self._due(batch_idx, self.total_train_batches):
            super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
