"""The one training loop both systems share: a net, weighted loss terms, metrics, optimiser binding."""

from collections.abc import Mapping
from typing import Any

import torch
from hydra.utils import instantiate
from lightning import LightningModule
from torch import nn
from torchmetrics import MaxMetric, MeanMetric, Metric
from torchmetrics.classification import MulticlassAccuracy

from kdlab.config import plain
from kdlab.losses import LossInputs, LossTerm
from kdlab.modules.schedulers import bind_scheduler

STAGES = ("train", "val", "test")


class ClassifierSystem(LightningModule):
    """Trains `self.net` on a weighted sum of loss terms; subclasses decide what the terms see.

    Nets, terms, optimiser and scheduler arrive as configs (`_target_` dicts) and are built here, so
    `save_hyperparameters` stores plain data and `load_from_checkpoint` rebuilds the whole system.
    """

    def __init__(
        self,
        net: Mapping,
        losses: Mapping[str, Mapping | None],
        optimizer: Mapping,
        scheduler: Mapping | None = None,
        num_classes: int = 10,
        **extra: Any,
    ) -> None:
        super().__init__()
        self.save_hyperparameters(
            {
                "net": plain(net),
                "losses": {name: plain(term) for name, term in losses.items()},
                "optimizer": plain(optimizer),
                "scheduler": plain(scheduler),
                "num_classes": num_classes,
                **{key: plain(value) for key, value in extra.items()},
            },
            logger=False,  # run.py logs hparams once, with the final metrics, for TensorBoard's hparams tab
        )
        self.net: nn.Module = instantiate(self.hparams.net)
        self.losses = nn.ModuleDict(
            {name: instantiate(term) for name, term in self.hparams.losses.items() if term is not None}
        )
        if not self.losses:
            raise ValueError("No loss terms configured: give at least one, e.g. distill.losses.ce.")
        for name, term in self.losses.items():
            if not isinstance(term, LossTerm):
                raise TypeError(f"Loss term {name!r} is a {type(term).__name__}, not a kdlab.losses.LossTerm.")
        # One set of epoch metrics per stage. Steps only update them (~50 us each); they are logged
        # once per epoch, because every `self.log` call costs ~0.8 ms of Lightning bookkeeping, which
        # was 40% of an MLP step on CPU. Under DDP each metric syncs exactly (sums and counts).
        self.train_metrics, self.val_metrics, self.test_metrics = (
            nn.ModuleDict(self.stage_metrics(stage, num_classes)) for stage in STAGES
        )
        self.metrics_of = {"train": self.train_metrics, "val": self.val_metrics, "test": self.test_metrics}
        self.val_acc_best = MaxMetric()

    # -- what subclasses provide ------------------------------------------------------------------
    def stage_metrics(self, stage: str, num_classes: int) -> dict[str, Metric]:
        """The metrics logged as `<stage>/<name>` at the end of each epoch of that stage."""
        means = {name: MeanMetric() for name in ("loss", *(f"loss_{term}" for term in self.losses))}
        return {**means, "acc": MulticlassAccuracy(num_classes=num_classes, average="micro")}

    def views(self, x: torch.Tensor, y: torch.Tensor) -> LossInputs:
        """Everything the loss terms may read for one batch."""
        return LossInputs(student_logits=self.net(x), target=y)

    def update_stage_metrics(self, inputs: LossInputs, metrics: nn.ModuleDict, stage: str) -> None:
        """Hook for extra per-stage metrics (teacher agreement, KL...)."""

    # -- the shared step ---------------------------------------------------------------------------
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def shared_step(self, batch: tuple[torch.Tensor, torch.Tensor], stage: str) -> torch.Tensor:
        x, y = batch
        inputs = self.views(x, y)
        terms = {name: term(inputs) for name, term in self.losses.items() if term.weight}
        loss = sum(self.losses[name].weight * value for name, value in terms.items())
        metrics = self.metrics_of[stage]
        metrics["loss"].update(loss.detach(), len(y))
        for name, value in terms.items():
            metrics[f"loss_{name}"].update(value.detach(), len(y))
        metrics["acc"].update(inputs.student_logits.detach(), y)
        self.update_stage_metrics(inputs, metrics, stage)
        return loss

    def training_step(self, batch, batch_idx):
        return self.shared_step(batch, "train")

    def validation_step(self, batch, batch_idx):
        self.shared_step(batch, "val")

    def test_step(self, batch, batch_idx):
        self.shared_step(batch, "test")

    def log_stage(self, stage: str) -> dict[str, torch.Tensor]:
        """Compute, log and reset the stage's metrics; terms that never ran (weight 0) are skipped."""
        values = {}
        for name, metric in self.metrics_of[stage].items():
            if metric.update_count:
                values[name] = metric.compute()
                # already synced by torchmetrics; sync_dist only averages equal values (and stops a warning)
                self.log(f"{stage}/{name}", values[name], prog_bar=name in ("loss", "acc"), sync_dist=True)
            metric.reset()
        return values

    def on_train_start(self) -> None:
        self.val_acc_best.reset()  # forget the sanity-check batches

    def on_train_epoch_end(self) -> None:
        self.log_stage("train")

    def on_validation_epoch_end(self) -> None:
        values = self.log_stage("val")
        if "acc" in values:
            self.val_acc_best(values["acc"])
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
