"""The one training loop both systems share: a net, weighted loss terms, metrics, optimiser binding."""

import warnings
from collections.abc import Mapping
from typing import Any

import torch
from hydra.utils import instantiate
from lightning import LightningModule
from torch import nn
from torchmetrics import MaxMetric, MeanMetric, Metric
from torchmetrics.classification import MulticlassAccuracy

from kdlab.config import plain
from kdlab.losses import LossInputs, build_terms
from kdlab.modules.direct_step import can_step_directly, step_directly
from kdlab.modules.noop_hooks import skip_noop_hooks
from kdlab.modules.profiler import skip_profiling
from kdlab.modules.schedulers import bind_scheduler
from kdlab.modules.signatures import fixed_signature
from kdlab.modules.tally import StepTally

STAGES = ("train", "val", "test")
# Set by Lightning around every hook call (~30 times a step); nn.Module.__setattr__ would search its
# parameter, buffer and submodule registries each time. They are plain values: stored directly.
LIGHTNING_BOOKKEEPING = frozenset({"_current_fx_name"})
CHECK_EVERY = 50  # steps between reads of the training values (each is one host sync; NaN/inf caught there)


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
        compile: bool = False,  # module.compile=true: torch.compile the net, in place (opt-in; see the README)
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
                **({"compile": True} if compile else {}),  # absent when off: older checkpoints stay alike
                **{key: plain(value) for key, value in extra.items()},
            },
            logger=False,  # run.py logs hparams once, with the final metrics, for TensorBoard's hparams tab
        )
        self.net: nn.Module = instantiate(self.hparams.net)
        if compile:  # in place: the state_dict keeps its keys, so checkpoints and student.pt are unchanged
            self.net.compile()
        self.losses = nn.ModuleDict(build_terms(self.hparams.losses))
        # Terms with weight 0 are switched off: never computed, tapped or logged.
        self.active_terms = [name for name, term in self.losses.items() if term.weight]
        # One set of epoch metrics per stage, logged once per epoch: every `self.log` call costs ~0.8 ms
        # of Lightning bookkeeping, which was 40% of an MLP step on CPU. Training steps do not even
        # update them (~0.1 ms a step for three metrics): their values are tallied on the device and
        # fed in once per epoch (StepTally). Under DDP each metric syncs exactly (sums and counts).
        self.train_metrics, self.val_metrics, self.test_metrics = (
            nn.ModuleDict(self.stage_metrics(stage, num_classes)) for stage in STAGES
        )
        self.metrics_of = {"train": self.train_metrics, "val": self.val_metrics, "test": self.test_metrics}
        # The best validation accuracy so far is part of the run, not of one process: persistent, so
        # a resumed run keeps it (it is the value Optuna optimises and the record reports).
        self.val_acc_best = MaxMetric()
        self.val_acc_best.persistent(True)
        self.tally = StepTally(["total", *self.active_terms])

    def __setattr__(self, name: str, value: Any) -> None:
        if name in LIGHTNING_BOOKKEEPING:
            self.__dict__[name] = value
        else:
            super().__setattr__(name, value)

    def setup(self, stage: str) -> None:
        # Lightning's per-step bookkeeping that does nothing, at no cost: its default no-op profiler
        # (~0.1 ms a step) and its calls of hooks nobody overrode (~0.24 ms a step with kdlab's callbacks)
        skip_profiling(self.trainer)
        skip_noop_hooks(self.trainer, self)

    def on_train_start(self) -> None:
        # after the strategy built the optimisers, once the callbacks are final
        self._direct_step = not self.automatic_optimization and can_step_directly(self.trainer, self)

    # -- what subclasses provide ------------------------------------------------------------------
    def stage_metrics(self, stage: str, num_classes: int) -> dict[str, Metric]:
        """The metrics logged as `<stage>/<name>` at the end of each epoch of that stage."""
        # nan_strategy="disable": the default "warn" checks every update for NaN with a host sync; a
        # non-finite loss is caught by the step tally instead (kdlab.modules.tally).
        names = ("loss", *(f"loss_{term}" for term in self.active_terms))
        means = {name: MeanMetric(nan_strategy="disable") for name in names}
        if stage == "train":  # fed once per epoch with the tallied accuracy, weighted by the image count
            return {**means, "acc": MeanMetric(nan_strategy="disable")}
        return {**means, "acc": MulticlassAccuracy(num_classes=num_classes, average="micro")}

    def views(self, x: torch.Tensor, y: torch.Tensor, teacher_logits: torch.Tensor | None = None) -> LossInputs:
        """Everything the loss terms may read for one batch (`teacher_logits`: known already, e.g. cached)."""
        return LossInputs(student_logits=self.net(x), target=y)

    def known_teacher_logits(self, batch, stage: str) -> torch.Tensor | None:
        """The teacher's logits for this batch when they need not be computed (a cache); None: compute them."""
        return None

    def update_stage_metrics(self, inputs: LossInputs, metrics: nn.ModuleDict, stage: str) -> None:
        """Hook for extra per-stage metrics (teacher agreement, KL...)."""

    # -- the shared step ---------------------------------------------------------------------------
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def shared_step(self, batch, stage: str) -> tuple[torch.Tensor, LossInputs]:
        x, y = batch[0], batch[1]  # a kdlab.data.Batch (x, y, index, shift)
        inputs = self.views(x, y, self.known_teacher_logits(batch, stage))
        active = [self.losses[name] for name in self.active_terms]
        terms = [term(inputs) for term in active]
        loss = active[0].weight * terms[0]
        for term, value in zip(active[1:], terms[1:], strict=True):
            loss = loss + term.weight * value
        if stage == "train":  # no metric objects per step: a few tensor ops, read once per CHECK_EVERY steps
            self.tally.add(self.global_step, [loss, *terms], inputs.student_logits, y)
            return loss, inputs
        metrics = self.metrics_of[stage]
        metrics["loss"].update(loss.detach(), len(y))
        for name, value in zip(self.active_terms, terms, strict=True):
            metrics[f"loss_{name}"].update(value.detach(), len(y))
        metrics["acc"].update(inputs.student_logits.detach(), y)
        self.update_stage_metrics(inputs, metrics, stage)
        return loss, inputs

    # -- the training step: kdlab's own optimisation unless the Trainer clips or accumulates -------------
    @property
    def automatic_optimization(self) -> bool:
        """False (manual): `training_step` runs backward, step and schedule itself, without Lightning's
        closure and its per-step hooks (~0.3 ms a step on CPU, 10-20% of a small MLP's step). True when
        the Trainer clips (`gradient_clip_val`) or accumulates (`accumulate_grad_batches`) gradients:
        Lightning's automatic loop implements those, at its own speed. Both give the same numbers.
        """
        if self._automatic is not None:
            return self._automatic
        trainer = self._trainer
        if trainer is None:
            return False
        return bool(trainer.gradient_clip_val) or trainer.accumulate_grad_batches != 1

    @automatic_optimization.setter
    def automatic_optimization(self, value: bool | None) -> None:
        self._automatic = value  # None: choose by the Trainer, as above

    _automatic: bool | None = None
    _direct_step = False  # set per fit in on_train_start

    @fixed_signature
    def training_step(self, batch, batch_idx):
        loss = self.shared_step(batch, "train")[0]
        if self.automatic_optimization:
            return loss
        # The automatic loop's order: forward, zero_grad, backward, step, then a step-interval schedule.
        optimizer = self.optimizers()
        if self._direct_step:  # one device, 32-bit, no step hooks: as a plain loop (kdlab.modules.direct_step)
            step_directly(optimizer, loss)
        else:
            optimizer.zero_grad()
            self.manual_backward(loss)  # through the precision plugin and strategy: loss scaling, DDP
            optimizer.step()
        for config in self.trainer.lr_scheduler_configs:  # as Lightning's loop: interval "step", every `frequency`
            if config.interval == "step" and not config.reduce_on_plateau and (batch_idx + 1) % config.frequency == 0:
                self.lr_scheduler_step(config.scheduler, None)
        return None

    def on_train_epoch_start(self) -> None:
        self.tally.reset()

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
        metrics = self.train_metrics
        metrics["loss"].update(means["total"], count)
        for name in self.active_terms:
            metrics[f"loss_{name}"].update(means[name], count)
        metrics["acc"].update(acc, count)

    @fixed_signature
    def validation_step(self, batch, batch_idx):
        self.shared_step(batch, "val")

    @fixed_signature
    def test_step(self, batch, batch_idx):
        """Returns the batch's predictions for test-time analysis callbacks (kdlab.analysis)."""
        _, inputs = self.shared_step(batch, "test")
        outputs = {"student_logits": inputs.student_logits.detach(), "target": inputs.target}
        if len(batch) > 2:
            outputs["index"] = batch[2]
        if inputs.teacher_logits is not None:
            outputs["teacher_logits"] = inputs.teacher_logits.detach()
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
