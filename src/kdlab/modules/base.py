"""The one training loop both systems share: a net, weighted loss terms, metrics, optimiser binding.

Plain Lightning: automatic optimisation (the Trainer runs backward, the optimiser and the per-step
schedule, with precision plugins, clipping, accumulation and DDP as it documents them). What kdlab
adds is per epoch, not per step: training values are tallied on the device and read once every
CHECK_EVERY steps (kdlab.modules.tally), which is also where a non-finite loss stops the run.
"""

import math
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from hydra.utils import instantiate
from lightning import LightningModule
from torch import nn
from torchmetrics import MaxMetric, MeanMetric, Metric
from torchmetrics.classification import MulticlassAccuracy

from kdlab.config import plain
from kdlab.losses import LossInputs, TrainingProgress, build_terms
from kdlab.models import build_net, net_config
from kdlab.modules.schedulers import bind_scheduler
from kdlab.modules.tally import StepTally

TALLY_KEY = "kdlab_train_tally"
CHECK_EVERY = 50  # steps between reads of the training values (each is one host sync; NaN/inf caught there)


class ClassifierSystem(LightningModule):
    """Trains `self.net` on a weighted sum of loss terms; subclasses decide what the terms see.

    Nets, terms, optimiser and scheduler arrive as configs (`_target_` dicts) and are built here, so
    `save_hyperparameters` stores plain data and `load_from_checkpoint` rebuilds the whole system.
    The net config is completed with the data's `input_shape` and `num_classes` (kdlab.models).
    """

    def __init__(
        self, net: Mapping, losses: Mapping[str, Mapping | None], optimizer: Mapping, scheduler: Mapping | None = None,
        *, num_classes: int, input_shape: Sequence[int], compile: bool = False, **extra: Any,
    ) -> None:  # fmt: skip
        super().__init__()
        self.save_hyperparameters(
            {
                "net": net_config(plain(net), input_shape, num_classes),
                "losses": {name: plain(term) for name, term in losses.items()},
                "optimizer": plain(optimizer),
                "scheduler": plain(scheduler),
                "num_classes": num_classes,
                "input_shape": [int(d) for d in input_shape],
                **({"compile": True} if compile else {}),
                **{key: plain(value) for key, value in extra.items()},
            },
            logger=False,  # the run logs hparams once, with the final metrics, for TensorBoard's hparams tab
        )
        self.net: nn.Module = build_net(self.hparams.net)
        if compile:  # module.compile=true (opt-in), in place: the state_dict keeps its keys, as do checkpoints
            self.net.compile()
        self.losses = nn.ModuleDict(build_terms(self.hparams.losses))
        # Terms with weight 0 are switched off: never computed, tapped or logged.
        self.active_terms = [name for name, term in self.losses.items() if term.weight]
        self.loss_names = ["loss", *(f"loss_{term}" for term in self.active_terms)]
        # One set of epoch metrics per stage, logged once per epoch; under DDP each syncs exactly (sums, counts).
        self.metrics_of = {
            stage: nn.ModuleDict(self.stage_metrics(stage, num_classes)) for stage in ("train", "val", "test")
        }
        self.train_metrics, self.val_metrics, self.test_metrics = self.metrics_of.values()
        # The best validation accuracy so far is part of the run, not of one process: persistent, so
        # a resumed run keeps it (it is the value Optuna optimises and the record reports).
        self.val_acc_best = MaxMetric()
        self.val_acc_best.persistent(True)
        self.tally = StepTally(["total", *self.active_terms])

    # -- what subclasses provide ------------------------------------------------------------------
    def stage_metrics(self, stage: str, num_classes: int) -> dict[str, Metric]:
        """The metrics logged as `<stage>/<name>` at the end of each epoch of that stage."""
        # nan_strategy="disable": the default "warn" checks every update for NaN with a host sync; a
        # non-finite loss is caught by the step tally instead (kdlab.modules.tally).
        means = {name: MeanMetric(nan_strategy="disable") for name in self.loss_names}
        if stage == "train":  # not updated per step: fed once per epoch from the tally (StepTally)
            return {**means, "acc": MeanMetric(nan_strategy="disable")}
        return {**means, "acc": MulticlassAccuracy(num_classes=num_classes, average="micro")}

    def views(self, batch, teacher_logits: list[torch.Tensor] | None = None) -> LossInputs:
        """Everything the loss terms may read for one `Batch` (`teacher_logits`: known already, e.g. cached)."""
        return LossInputs(student_logits=self.net(batch.x), target=batch.y)

    def known_teacher_logits(self, batch, stage: str) -> list[torch.Tensor] | None:
        """The teacher's logits for this batch when they need not be computed (a cache); None: compute them."""
        return None

    def update_stage_metrics(self, inputs: LossInputs, metrics: nn.ModuleDict, stage: str) -> None:
        """Hook for extra per-stage metrics (teacher agreement, KL...)."""

    def teacher_predictions(self, inputs: LossInputs) -> torch.Tensor | None:
        """The teacher's logits as its accuracy scores them (None without a teacher); see DistillationModule."""
        return inputs.teacher_logits

    # -- the shared step ---------------------------------------------------------------------------
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def shared_step(self, batch, stage: str) -> tuple[torch.Tensor, LossInputs]:
        """The weighted loss of one `kdlab.data.Batch` and what the terms read; tallied or fed to the metrics."""
        inputs = self.views(batch, self.known_teacher_logits(batch, stage))
        # Filled here, for whatever views() built: no system needs to know which terms read them.
        inputs.progress = self.training_progress()
        inputs.index = batch.index if stage == "train" else None
        active = [self.losses[name] for name in self.active_terms]
        terms = [term(inputs) for term in active]
        loss = active[0].weight * terms[0]
        for term, value in zip(active[1:], terms[1:], strict=True):
            loss = loss + term.weight * value
        if stage == "train":  # no metric objects per step: a few tensor ops, read once per CHECK_EVERY steps
            self.tally.add(self.global_step, [loss, *terms], inputs.student_logits, batch.y)
            return loss, inputs
        metrics = self.metrics_of[stage]
        self.update_losses(metrics, [value.detach() for value in (loss, *terms)], len(batch.y))
        metrics["acc"].update(inputs.student_logits.detach(), batch.y)
        self.update_stage_metrics(inputs, metrics, stage)
        return loss, inputs

    def training_progress(self) -> TrainingProgress | None:
        """Where the fit stands (kdlab.losses.TrainingProgress); None when no Trainer drives this module."""
        if (trainer := self._driving_trainer()) is None:
            return None
        max_epochs = trainer.max_epochs if trainer.max_epochs is not None and trainer.max_epochs >= 0 else None
        return TrainingProgress(self.current_epoch, self.global_step, max_epochs, self._total_steps)

    _total_steps: int | None = None  # the fit's optimiser steps, set in on_fit_start

    def setup(self, stage: str) -> None:
        # Lightning calls this before it restores a checkpoint: a term sizes its state (a memory bank) here.
        if (trainer := self._driving_trainer()) is None:
            return
        split = getattr(trainer.datamodule, "data_train", None)  # kdlab's datamodules: a Split, after their setup
        labels = getattr(split, "y", None)
        for name in self.active_terms:
            self.losses[name].see_training_split(labels)

    def on_fit_start(self) -> None:
        # Once per fit, not per batch: estimating it outside a fit would load the training data.
        if (trainer := self._driving_trainer()) is not None:
            total = trainer.estimated_stepping_batches
            self._total_steps = int(total) if math.isfinite(total) and total >= 0 else None

    def _driving_trainer(self):
        """The Trainer this module is attached to, or None (a step or hook called by hand)."""
        try:
            return self.trainer
        except RuntimeError:  # Lightning's "is not attached to a `Trainer`"
            return None

    def training_step(self, batch, batch_idx):
        return self.shared_step(batch, "train")[0]

    def on_train_epoch_start(self) -> None:
        if not self._tally_restored:  # a resumed epoch goes on from the checkpoint's tally
            self.tally.reset()
        self._tally_restored = False

    _tally_restored = False

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint[TALLY_KEY] = self.tally.state_dict()  # mid-epoch (a signal): the epoch's train metrics so far

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        if TALLY_KEY in checkpoint:
            self.tally.load_state_dict(checkpoint[TALLY_KEY])
            self._tally_restored = True

    def on_train_batch_end(self, outputs, batch, batch_idx) -> None:
        # A host sync every CHECK_EVERY steps and at the end of the epoch, never per step.
        last = batch_idx + 1 >= self.trainer.num_training_batches
        if self.tally.pending >= CHECK_EVERY or last:
            self.tally.fold(self.divergence_hint)
        if last:  # before the callbacks' on_train_epoch_end (EpochLines reads train/loss there)
            self.feed_train_metrics()

    def feed_train_metrics(self) -> None:
        """The epoch's tallied training values into the train metrics, weighted by the images they cover."""
        taken = self.tally.take()
        if taken is None:
            return
        means, acc, count = taken
        self.update_losses(self.train_metrics, [means["total"], *(means[name] for name in self.active_terms)], count)
        self.train_metrics["acc"].update(acc, count)

    def update_losses(self, metrics: nn.ModuleDict, values: list[torch.Tensor], weight) -> None:
        """`loss` and each active term's `loss_<term>` metric, from `values` in that order."""
        for name, value in zip(self.loss_names, values, strict=True):
            metrics[name].update(value, weight)

    def validation_step(self, batch, batch_idx):
        self.shared_step(batch, "val")

    def test_step(self, batch, batch_idx):
        """Returns the batch's predictions for test-time analysis callbacks (kdlab.analysis)."""
        _, inputs = self.shared_step(batch, "test")
        outputs = {"student_logits": inputs.student_logits.detach(), "target": inputs.target, "index": batch.index}
        if (teacher := self.teacher_predictions(inputs)) is not None:
            outputs["teacher_logits"] = teacher.detach()
        return outputs

    def divergence_hint(self) -> str:
        """What to try when the loss went non-finite, with this run's values."""
        lr = self.hparams.optimizer.get("lr")
        temperatures = sorted({t.temperature for t in self.losses.values() if hasattr(t, "temperature")})
        hints = [f"lower the learning rate (optimizer.lr={lr})"] if lr is not None else []
        if temperatures:
            hints.append(f"use a temperature around 1-8 (distill.temperature={', '.join(map(str, temperatures))})")
        hints.append("or clip gradients (trainer.gradient_clip_val=1.0)")
        return "Try to " + ", ".join(hints) + "."

    def log_stage(self, stage: str) -> dict[str, torch.Tensor]:
        """Compute, log and reset the stage's metrics.

        Every rank computes the same fixed set of metrics, also a rank that saw no batch, because
        computing syncs across ranks: a rank that skipped one would leave the others waiting.
        """
        values = {}
        with warnings.catch_warnings():  # "compute called before update" on a rank with no batch
            warnings.filterwarnings("ignore", message=".*compute.* called before.*update", category=UserWarning)
            for name, metric in self.metrics_of[stage].items():
                values[name] = metric.compute()
                # already synced by torchmetrics; sync_dist only averages equal values (and stops a warning)
                self.log(f"{stage}/{name}", values[name], prog_bar=name in ("loss", "acc"), sync_dist=True)
                metric.reset()
        return values

    def on_train_epoch_end(self) -> None:
        self.tally.fold(self.divergence_hint)  # an epoch cut short (max_steps) did not reach its last batch
        self.feed_train_metrics()
        self.log_stage("train")

    def on_validation_epoch_end(self) -> None:
        values = self.log_stage("val")
        if not self.trainer.sanity_checking:  # the sanity batches are no epoch of this run
            self.val_acc_best(values["acc"])
        if self.val_acc_best.update_count or self.val_acc_best.max_value.isfinite():
            self.log("val/acc_best", self.val_acc_best.compute(), prog_bar=True, sync_dist=True)

    def on_test_epoch_end(self) -> None:
        self.log_stage("test")

    # -- optimisation --------------------------------------------------------------------------------
    def configure_optimizers(self):
        params = [p for p in self.parameters() if p.requires_grad]  # student + terms' regressors
        optimizer = instantiate(self.hparams.optimizer)(params=params)
        if not self.hparams.scheduler:
            return optimizer
        scheduler = bind_scheduler(
            instantiate(self.hparams.scheduler), optimizer, int(self.trainer.estimated_stepping_batches)
        )
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
