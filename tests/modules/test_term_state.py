"""A term's own state and schedule under a Trainer: a memory bank written from the batch's sample indices, and
DKD's warm-up read from the training progress, both as an uninterrupted run has them after a kill -9 and resume."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from stand_ins import CrashAtEpoch
from test_distillation import make_module, mnist_batch, write_teacher

import kdlab.run.fit
from kdlab.losses import LossInputs, LossTerm
from kdlab.run import train

TRAIN_IMAGES = 1000  # mnist_dm's training split


class IndexBank(LossTerm):
    """A memory bank as CRD keeps one: a row per training sample, read and written at the batch's indices.

    It pulls the student's logits towards the bank's row for each sample (so the bank changes what is learnt),
    then moves that row towards the logits; it also keeps the epoch and step at which it last saw each sample.
    """

    needs_teacher = False

    def __init__(self, weight: float = 1.0, size: int = TRAIN_IMAGES, classes: int = 10) -> None:
        super().__init__(weight)
        self.register_buffer("bank", torch.zeros(size, classes))
        self.register_buffer("seen_epoch", torch.full((size,), -1, dtype=torch.long))
        self.register_buffer("seen_step", torch.full((size,), -1, dtype=torch.long))
        self.given = []  # (training?, progress, index given?) per call

    def forward(self, inputs: LossInputs) -> torch.Tensor:
        self.given.append((self.training, inputs.progress, inputs.index is not None))
        if inputs.index is None:  # validation: positions in another split, no row of this bank
            return inputs.student_logits.sum() * 0
        stored = self.bank[inputs.index]
        loss = (inputs.student_logits - stored).pow(2).mean()
        if self.training:
            with torch.no_grad():
                self.bank[inputs.index] = 0.5 * stored + 0.5 * inputs.student_logits.detach()
                if inputs.progress is not None:  # None: a step called by hand, without a Trainer
                    self.seen_epoch[inputs.index] = inputs.progress.epoch
                    self.seen_step[inputs.index] = inputs.progress.step
        return loss


LOSSES = {
    "ce": {"_target_": "kdlab.losses.CE", "weight": 1.0},
    "dkd": {"_target_": "kdlab.losses.DKD", "weight": 1.0, "temperature": 4.0, "warmup": 3},
    "bank": {"_target_": f"{__name__}.IndexBank", "weight": 0.1},
}


class DKDFactors(L.Callback):
    """Each epoch's DKD warm-up factor, read from the progress the system gives the terms in that epoch."""

    def __init__(self) -> None:
        self.factors = []

    def on_train_epoch_end(self, trainer, module) -> None:
        probe = LossInputs(torch.empty(0), torch.empty(0), progress=module.training_progress())
        self.factors.append(module.losses["dkd"].warmup_factor(probe))


@pytest.mark.unit
def test_a_terms_buffers_are_in_the_systems_state_dict(tmp_path):
    module = make_module(write_teacher(tmp_path), losses=LOSSES)
    assert {"losses.bank.bank", "losses.bank.seen_epoch", "losses.bank.seen_step"} <= set(module.state_dict())


@pytest.mark.unit
def test_the_step_gives_terms_the_training_indices_and_none_elsewhere(tmp_path):
    batch = mnist_batch(8)._replace(index=torch.arange(100, 108))
    warmed = make_module(write_teacher(tmp_path), losses=LOSSES).train()
    with pytest.raises(ValueError, match="DKD follows a schedule over training"):  # no Trainer, no progress
        warmed.shared_step(batch, "train")
    module = make_module(write_teacher(tmp_path), losses={k: v for k, v in LOSSES.items() if k != "dkd"})
    module.train()
    _, inputs = module.shared_step(batch, "train")
    assert torch.equal(inputs.index, torch.arange(100, 108))
    assert inputs.progress is None
    assert torch.equal(module.losses["bank"].bank[100:108], 0.5 * inputs.student_logits.detach())
    module.eval()
    for stage in ("val", "test"):
        assert module.shared_step(batch, stage)[1].index is None


def fit(module, dm, folder, *callbacks, ckpt_path=None) -> L.Trainer:
    last = ModelCheckpoint(folder, filename="last", monitor=None, save_top_k=1, enable_version_counter=False)
    trainer = L.Trainer(
        max_epochs=4, accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False,
        limit_train_batches=3, limit_val_batches=1, num_sanity_val_steps=0, callbacks=[last, *callbacks],
    )  # fmt: skip
    trainer.fit(module, datamodule=dm, ckpt_path=ckpt_path)
    return trainer


def test_a_memory_bank_and_dkd_warmup_after_kill_9_and_resume_are_the_uninterrupted_runs(tmp_path, mnist_dm):
    teacher = write_teacher(tmp_path)

    def run(folder, *callbacks, ckpt_path=None):
        L.seed_everything(0)
        module = make_module(teacher, losses=LOSSES)
        fit(module, mnist_dm(augment_shift=2), folder, *callbacks, ckpt_path=ckpt_path)
        return module

    whole_factors = DKDFactors()
    whole = run(tmp_path / "whole", whole_factors)
    # 3 steps an epoch of 64 images; epoch e's progress: epoch e, steps 3e to 3e + 2
    bank = whole.losses["bank"]
    seen = bank.seen_epoch >= 0
    assert int(seen.sum()) > 3 * 64  # rows written from several epochs' batches
    assert set(bank.seen_epoch[seen].tolist()) <= {0, 1, 2, 3} and 3 in bank.seen_epoch.tolist()
    assert torch.equal(bank.seen_step[seen] // 3, bank.seen_epoch[seen])
    assert whole_factors.factors == pytest.approx([1 / 3, 2 / 3, 1.0, 1.0])  # mdistiller's min(epoch / 3, 1)
    val = [progress for training, progress, indexed in bank.given if not training]
    assert [p.epoch for p in val] == [0, 1, 2, 3] and all(not indexed for t, _, indexed in bank.given if not t)
    assert [p.step for p in val] == [3, 6, 9, 12] and val[-1].fraction == 1.0  # validation after each epoch

    crashed_factors, resumed_factors = DKDFactors(), DKDFactors()
    with pytest.raises(RuntimeError, match="simulated crash"):
        run(tmp_path / "crashed", crashed_factors, CrashAtEpoch(2))  # as kill -9 at the start of epoch 2
    resumed = run(tmp_path / "crashed", resumed_factors, ckpt_path=tmp_path / "crashed" / "last.ckpt")
    assert crashed_factors.factors + resumed_factors.factors == whole_factors.factors
    for key, value in whole.state_dict().items():
        if not key.startswith("teacher."):
            assert torch.equal(resumed.state_dict()[key], value), key  # the bank and the student, bit for bit


def test_a_dkd_run_with_warmup_resumed_after_kill_9_gives_the_uninterrupted_result(make_cfg, monkeypatch):
    """The whole run (train.py's train): last.ckpt carries the epoch the warm-up is read from."""

    def cfg(*overrides):
        return make_cfg(
            "experiment=distill_mlp", "distill=dkd", "distill.losses.dkd.warmup=3", "trainer.max_epochs=4",
            'teacher.overrides=["trainer.max_epochs=1"]', "data.batch_size=32", "trainer.limit_train_batches=6",
            "optimizer.lr=1e-4", *overrides,
        )  # fmt: skip

    whole, _ = train(cfg())
    crashed = cfg()
    build = kdlab.run.fit.build_callbacks
    with monkeypatch.context() as m:
        m.setattr(kdlab.run.fit, "build_callbacks", lambda c: [*build(c), CrashAtEpoch(2)])
        with pytest.raises(RuntimeError, match="simulated crash"):
            train(crashed)
    resumed, _ = train(cfg(f"ckpt_path={Path(crashed.paths.output_dir) / 'checkpoints' / 'last.ckpt'}"))
    for key in ("test/acc", "test/loss", "test/loss_dkd", "val/acc_best", "test/kl"):
        assert resumed.metrics[key] == whole.metrics[key], key
