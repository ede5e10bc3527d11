"""The training step under a Trainer: Lightning's automatic loop trains exactly what `training_step` computes,
clipping and accumulation are Lightning's, and the tallied train metrics are the epoch means of the steps."""

from __future__ import annotations

import copy
from functools import partial

import lightning as L
import pytest
import torch
from torchmetrics.classification import MulticlassAccuracy

from kdlab.modules import DistillationModule, TeacherModule
from kdlab.modules.schedulers import bind_scheduler

MNIST_SIZES = {"num_classes": 10, "input_shape": (1, 28, 28)}  # what these tests' nets read

STUDENT = {"_target_": "kdlab.models.MLP", "hidden": [32]}
TEACHER = {"_target_": "kdlab.models.MLP", "hidden": [48], "dropout": 0.2}
ADAMW = {"_target_": "torch.optim.AdamW", "_partial_": True, "lr": 3e-3, "weight_decay": 1e-4}
ONECYCLE = {"_target_": "torch.optim.lr_scheduler.OneCycleLR", "_partial_": True, "max_lr": 3e-3, "total_steps": None}
KD = {
    "ce": {"_target_": "kdlab.losses.CE", "weight": 0.1},
    "kd": {"_target_": "kdlab.losses.KD", "weight": 0.9, "temperature": 4.0},
}


@pytest.fixture
def teacher_file(tmp_path):
    from kdlab.models import MLP

    torch.manual_seed(1)
    path = tmp_path / "teacher.pt"
    torch.save(MLP((1, 28, 28), 10, hidden=(48,), dropout=0.2).state_dict(), path)
    return path


def fit(module, dm, epochs=2, **trainer_kw) -> L.Trainer:
    trainer = L.Trainer(
        max_epochs=epochs, accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, num_sanity_val_steps=0, **trainer_kw,
    )  # fmt: skip
    trainer.fit(module, datamodule=dm)
    return trainer


def distiller(teacher_file) -> DistillationModule:
    torch.manual_seed(0)
    return DistillationModule(
        **MNIST_SIZES,
        net=STUDENT,
        teacher_net=TEACHER,
        teacher_ckpt=str(teacher_file),
        losses=KD,
        optimizer=ADAMW,
        scheduler=ONECYCLE,
    )


class KeepBatches(L.Callback):
    """The batches each training step received, after the datamodule's augmentation and normalisation."""

    def __init__(self) -> None:
        self.batches = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.batches.append(copy.deepcopy(batch))


def test_lightnings_automatic_loop_trains_exactly_what_the_step_computes(teacher_file, mnist_dm):
    """A hand-written loop (backward, step, zero_grad, schedule) over the very batches gives the same weights."""
    module, kept = distiller(teacher_file), KeepBatches()
    by_hand = copy.deepcopy(module)
    trainer = fit(module, mnist_dm(augment_shift=2, seed=0), callbacks=[kept])
    assert module.automatic_optimization is True  # plain Lightning: no manual optimisation of kdlab's own
    assert trainer.global_step == len(kept.batches) == 2 * 16  # 1000 images / 64 = 16 steps per epoch

    optimizer = torch.optim.AdamW([p for p in by_hand.parameters() if p.requires_grad], lr=3e-3, weight_decay=1e-4)
    onecycle = partial(torch.optim.lr_scheduler.OneCycleLR, max_lr=3e-3, total_steps=None)  # as ONECYCLE
    scheduler = bind_scheduler(onecycle, optimizer, 32)
    by_hand.train()
    for i, batch in enumerate(kept.batches):
        loss = by_hand.training_step(batch, i)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        scheduler.step()
    for key, value in module.net.state_dict().items():
        assert torch.equal(value, by_hand.net.state_dict()[key]), key
    lrs = [trainer.optimizers[0].param_groups[0]["lr"], optimizer.param_groups[0]["lr"]]
    assert lrs[0] == lrs[1] < 3e-3 / 100  # the one-cycle schedule ran to its end, stepped once per step
    for key in ("train/loss", "train/acc", "train/loss_kd", "val/loss", "val/acc"):
        assert key in trainer.callback_metrics, key


@pytest.mark.parametrize(
    ("trainer_kw", "steps"), [({"gradient_clip_val": 0.5}, 16), ({"accumulate_grad_batches": 2}, 8)]
)
def test_clipping_and_accumulation_are_lightnings(teacher_file, mnist_dm, trainer_kw, steps):
    module = distiller(teacher_file)
    trainer = fit(module, mnist_dm(augment_shift=2, seed=0), epochs=1, **trainer_kw)
    assert trainer.global_step == steps  # 16 batches: 16 optimiser steps, or 8 when two batches make one


def test_train_metrics_are_the_epoch_means_of_the_steps(mnist_dm):
    """train/loss and train/acc from the tally equal torchmetrics fed step by step."""
    torch.manual_seed(0)
    module = TeacherModule(**MNIST_SIZES, net=STUDENT, optimizer=ADAMW)
    seen = []

    class Record(L.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            # the weights before this step are the ones the step's loss and logits come from
            with torch.no_grad():
                logits = pl_module.net(batch.x)
            seen.append((torch.nn.functional.cross_entropy(logits, batch.y), logits, batch.y))

    trainer = fit(module, mnist_dm(augment_shift=2, seed=0), epochs=1, callbacks=[Record()])
    accuracy = MulticlassAccuracy(num_classes=10, average="micro")
    loss_sum = sum(float(loss) * len(y) for loss, _, y in seen)
    for _, logits, y in seen:
        accuracy.update(logits, y)
    metrics = trainer.callback_metrics
    assert sum(len(y) for _, _, y in seen) == 1000
    assert float(metrics["train/loss"]) == pytest.approx(loss_sum / 1000, rel=1e-5)
    assert float(metrics["train/acc"]) == pytest.approx(float(accuracy.compute()), abs=1e-6)
