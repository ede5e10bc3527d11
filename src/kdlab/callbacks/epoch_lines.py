"""One line per epoch in the log: progress that survives redirection (`make run > log`, SLURM, CI).

Rich's live bar draws nothing into a file, so without a terminal (or with the bar off) a 45-minute
teacher training would print nothing at all and look like a hang. With the live bar on screen the
lines go to run.log alone (kdlab.console.RUN_LOG): a run's log is the same whether it ran in a
terminal or not, and a line printed under the live bar would tear it.
"""

from __future__ import annotations

import logging
import math
import time

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_only

from kdlab.console import RUN_LOG

log = logging.getLogger("kdlab.progress")


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes}m{seconds:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


def _pct(value: torch.Tensor | float | None) -> str:
    return "-" if value is None or not math.isfinite(float(value)) else f"{100 * float(value):.2f}%"


class EpochLines(L.Callback):
    """`[label] epoch 3/30  train loss 0.1234  val acc 98.12%  best 98.20%  2.3s  ETA 1m02s`.

    `val acc` is that epoch's own, or `-` for an epoch that did not validate (trainer.check_val_every_n_epoch):
    Lightning keeps the last value logged, which would read as the epoch's. `best` is the best so far.
    """

    def __init__(self, label: str = "") -> None:
        self.label = label
        self._epoch_start = 0.0
        self._fit_start = 0.0
        self._first_epoch = 0
        self._since_resume = False
        self._validated_epoch: int | None = None  # the epoch of the last validation (not the sanity check)

    def on_train_start(self, trainer, pl_module) -> None:
        # A run resumed mid-epoch (from interrupted.ckpt) continues that epoch without an epoch start:
        # its time is counted from here, and said to be only the resumed part.
        self._fit_start = self._epoch_start = time.perf_counter()
        self._since_resume = True
        self._first_epoch = trainer.current_epoch  # a resumed run does not start at 0
        self._say(trainer, f"training for {trainer.max_epochs} epochs ({trainer.num_training_batches} steps each)")

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self._epoch_start = time.perf_counter()
        self._since_resume = False

    def on_validation_end(self, trainer, pl_module) -> None:
        if not trainer.sanity_checking:  # Lightning validates before the epoch's on_train_epoch_end
            self._validated_epoch = trainer.current_epoch

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        # Callbacks run before the module's own epoch-end hook, which logs the train loss; the metric
        # computed here is cached, so the module's compute() costs nothing more.
        metrics = getattr(pl_module, "train_metrics", {})
        loss = metrics["loss"].compute() if "loss" in metrics and metrics["loss"].update_count else None
        now = time.perf_counter()
        done = trainer.current_epoch + 1 - self._first_epoch
        left = (trainer.max_epochs or 0) - trainer.current_epoch - 1
        eta = (now - self._fit_start) / done * left if done > 0 and left > 0 else 0.0
        metrics = trainer.callback_metrics
        took = _duration(now - self._epoch_start) + (" since resume" if self._since_resume else "")
        validated = self._validated_epoch == trainer.current_epoch
        self._say(
            trainer,
            f"epoch {trainer.current_epoch + 1}/{trainer.max_epochs}  "
            f"train loss {'-' if loss is None else f'{float(loss):.4f}'}  "
            f"val acc {_pct(metrics.get('val/acc') if validated else None)}  best {_pct(metrics.get('val/acc_best'))}  "
            f"{took}  ETA {_duration(eta)}",
        )

    @rank_zero_only
    def _say(self, trainer, text: str) -> None:
        bar = trainer.progress_bar_callback
        logger = logging.getLogger(RUN_LOG) if bar is not None and bar.is_enabled else log
        logger.info("%s%s", f"[{self.label}] " if self.label else "", text)
