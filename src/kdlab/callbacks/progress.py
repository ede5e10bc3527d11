"""Lightning's Rich progress bar on one line of an 80-column terminal, epochs counted from 1, updated on a timer.

Lightning's bar counts epochs from 0 ("Epoch 0/29" for the first of 30) and shows every metric logged
with `prog_bar=True` after an elapsed/remaining clock and the speed: in 80 columns the metrics wrap onto
several lines. This bar reads like the epoch lines (kdlab.callbacks.epoch_lines): `epoch 3/30`, the
batches, the time left in the epoch, and three numbers (the last train loss, val acc, the best val acc);
every metric is in TensorBoard and, per epoch, in run.log.

Each update builds the bar's metrics dict and takes Rich's lock, tens of microseconds a step, and Rich
redraws at most `refresh_rate` times a second anyway: updating on a timer shows the same bar.
"""

from __future__ import annotations

import time

from lightning.pytorch.callbacks import RichProgressBar
from lightning.pytorch.callbacks.progress.rich_progress import BatchesProcessedColumn, CustomBarColumn
from rich.progress import ProgressColumn, Task, TimeRemainingColumn
from rich.text import Text

from kdlab.report.formatting import number, percent

# Widths in columns: "epoch 150/150" 13, bar 12, "1875/1875" 9, "12:34" 5, "loss: 0.1234 val: 98.12% best: 98.20%"
# 37, plus 4 separating spaces: 80 (an epoch of over an hour adds 2). 30 epochs of 235 steps leave room to spare.
BAR_WIDTH = 12


def epoch_description(epoch: int, max_epochs: int | None) -> str:
    """`epoch 3/30` for the 0-based `epoch` 2 of 30: counted from 1, as the epoch lines and the record count."""
    return f"epoch {epoch + 1}" + (f"/{max_epochs}" if max_epochs is not None and max_epochs > 0 else "")


class EpochColumn(ProgressColumn):
    """The bars' descriptions, but the train bar's is `epoch 3/30`, kept by the bar (Lightning's counts from 0).

    Rich draws a bar as soon as Lightning adds or resets it, with Lightning's description: a column that
    never shows that description for the train bar is the one way no frame says "Epoch 2/29". The train
    bar is the one whose description is none of the other bars' (validation, testing, ...).
    """

    def __init__(self, bar: RichBar) -> None:
        super().__init__()
        self.bar = bar

    def render(self, task: Task) -> Text:
        bar = self.bar
        others = (bar.sanity_check_description, bar.validation_description, bar.test_description,
                  bar.predict_description)  # fmt: skip
        if task.id == bar.train_progress_bar_id or not task.description.endswith(others):
            width = len(bar.validation_description)  # as wide as the validation bar's: no jitter between them
            return Text(f"{bar.epoch_text:<{width}}", style=bar.theme.description or "progress.description")
        return Text.from_markup(task.description, style="progress.description")


class RichBar(RichProgressBar):
    def __init__(self, *args, update_every_s: float = 0.25, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.update_every_s = update_every_s
        self.epoch_text = ""  # what the train bar says: set before Lightning draws each epoch's bar
        self._last_update = 0.0

    def configure_columns(self, trainer) -> list:
        """Lightning's columns, narrower: a shorter bar, and only the time left (no elapsed time, no speed)."""
        theme = self.theme
        return [
            EpochColumn(self),
            CustomBarColumn(
                bar_width=BAR_WIDTH,
                complete_style=theme.progress_bar,
                finished_style=theme.progress_bar_finished,
                pulse_style=theme.progress_bar_pulse,
            ),
            BatchesProcessedColumn(style=theme.batch_progress),
            TimeRemainingColumn(compact=True),
        ]

    def get_metrics(self, trainer, pl_module) -> dict[str, str]:
        """The last train loss, val acc and best val acc, formatted as in the run's summary; absent ones left out."""
        shown = trainer.progress_bar_metrics
        metrics = {}
        if (loss := shown.get("train/loss")) is not None:
            metrics["loss"] = number(float(loss))
        for label, key in (("val", "val/acc"), ("best", "val/acc_best")):
            if (value := shown.get(key)) is not None:
                metrics[label] = percent(float(value), "%")
        return metrics

    def on_train_start(self, trainer, pl_module) -> None:
        self.epoch_text = epoch_description(trainer.current_epoch, trainer.max_epochs)  # resumed mid-epoch: no start
        super().on_train_start(trainer, pl_module)

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self.epoch_text = epoch_description(trainer.current_epoch, trainer.max_epochs)
        super().on_train_epoch_start(trainer, pl_module)

    def on_train_end(self, trainer, pl_module) -> None:
        # The module logs an epoch's train loss after the callbacks' epoch end: the last frame shows the last loss.
        super().on_train_epoch_end(trainer, pl_module)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self._due(batch_idx, self.total_train_batches):
            super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)

    def _due(self, batch_idx: int, total: int | float) -> bool:
        now = time.monotonic()
        if now - self._last_update >= self.update_every_s or batch_idx + 1 >= total:
            self._last_update = now
            return True
        return False
