"""The frozen teacher under a Trainer: bit-identical and in eval mode after an epoch, out of checkpoints,
loaded from every file format kdlab writes."""

import lightning as L
import torch
from safetensors.torch import save_file
from test_distillation import ADAM, MNIST_SIZES, make_module, write_teacher

from kdlab.checkpoints import load_weights
from kdlab.data import affine_theta, normalize, shift_images, warp_images
from kdlab.models import MLP
from kdlab.modules import DistillationModule, TeacherModule


def quiet_trainer(**kw) -> L.Trainer:
    """One CPU epoch (unless `max_epochs` says otherwise), nothing written to disk or the terminal."""
    off = dict(logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    return L.Trainer(**{"max_epochs": 1, "accelerator": "cpu", **off, **kw})


class AssertTeacherEval(L.Callback):
    """Checks the teacher's mode at every training step, after Lightning's own .train() calls."""

    def __init__(self):
        self.checked = 0

    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        assert not module.teacher.training
        assert all(not m.training for m in module.teacher.modules())
        self.checked += 1


def test_teacher_is_bit_identical_and_in_eval_after_an_epoch(tmp_path, mnist_dm):
    module = make_module(write_teacher(tmp_path))
    before = {k: v.clone() for k, v in module.teacher.state_dict().items()}
    probe = AssertTeacherEval()
    trainer = quiet_trainer(callbacks=[probe])
    trainer.fit(module, datamodule=mnist_dm(augment_shift=2))
    assert probe.checked == 16  # every step of the epoch: 1000 images / 64
    after = module.teacher.state_dict()
    for key, value in before.items():
        assert torch.equal(value, after[key]), f"teacher {key} changed during training"
    assert all(p.grad is None and not p.requires_grad for p in module.teacher.parameters())
    optimised = {id(p) for group in trainer.optimizers[0].param_groups for p in group["params"]}
    assert not optimised & {id(p) for p in module.teacher.parameters()}
    assert {id(p) for p in module.losses["hint"].parameters()} <= optimised  # the regressor trains


def test_teacher_loads_from_lightning_ckpt_state_dict_and_safetensors(tmp_path):
    torch.manual_seed(1)
    system = TeacherModule(**MNIST_SIZES, net={"_target_": "kdlab.models.MLP", "hidden": [16]}, optimizer=ADAM)
    trainer = L.Trainer(max_epochs=0, logger=False, enable_progress_bar=False, enable_model_summary=False)
    trainer.strategy.connect(system)
    trainer.save_checkpoint(tmp_path / "teacher.ckpt")
    torch.save(system.net.state_dict(), tmp_path / "teacher.pt")
    save_file(system.net.state_dict(), str(tmp_path / "teacher.safetensors"))
    for name in ("teacher.ckpt", "teacher.pt", "teacher.safetensors"):
        torch.manual_seed(2)  # other initial weights: loading must replace every one
        net = load_weights(MLP((1, 28, 28), 10, hidden=(16,)), tmp_path / name)
        for key, value in system.net.state_dict().items():
            assert torch.equal(net.state_dict()[key], value), name


def test_checkpoint_leaves_teacher_out_and_reloads(tmp_path, mnist_dm):
    module = make_module(write_teacher(tmp_path))
    trainer = quiet_trainer(limit_train_batches=2, limit_val_batches=1)
    trainer.fit(module, datamodule=mnist_dm())
    trainer.save_checkpoint(tmp_path / "distill.ckpt")
    saved = torch.load(tmp_path / "distill.ckpt", weights_only=True)
    assert [k for k in saved["state_dict"] if k.startswith("teacher.")] == []
    assert any(k.startswith("losses.hint.regressor") for k in saved["state_dict"])
    reloaded = DistillationModule.load_from_checkpoint(tmp_path / "distill.ckpt", weights_only=True)
    assert sorted(reloaded.state_dict()) == sorted(module.state_dict())
    for key, value in module.state_dict().items():
        assert torch.equal(reloaded.state_dict()[key], value), key


class RecordViews(L.Callback):
    """What each training step hands the student (the batch) and what its teacher reads (a forward hook)."""

    def __init__(self):
        self.batches, self.teacher_inputs = [], []

    def on_fit_start(self, trainer, module):
        module.teacher.register_forward_hook(lambda net, args, out: self.teacher_inputs.append(args[0].clone()))

    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        self.batches.append(batch)


def test_the_teacher_scores_the_students_exact_affine_view(tmp_path, mnist_dm):
    """Continuous distortions cannot be cached: the live teacher reads the very pixels the student trains on."""
    fashion = {"mean": [0.2860], "std": [0.3530]}  # a teacher of its own normalisation reads the pixels
    for norm in (None, fashion):
        dm = mnist_dm(augment_affine={"rotate": 15, "scale": [0.9, 1.1], "translate": 1.5, "shear": 10},
                      augment_shift=1, seed=0)  # fmt: skip
        module = make_module(write_teacher(tmp_path), teacher_norm=norm)
        views = RecordViews()
        quiet_trainer(callbacks=[views], limit_train_batches=3, limit_val_batches=0).fit(module, datamodule=dm)
        assert len(views.batches) == 3 and len(views.teacher_inputs) == 3
        for batch, seen in zip(views.batches, views.teacher_inputs, strict=True):
            raw = dm.data_train.x[batch.index]
            assert batch.affine is not None and torch.equal(
                batch.pixels, shift_images(warp_images(raw, affine_theta(batch.affine, 28, 28)), batch.shift)
            )
            assert (batch.pixels != shift_images(raw, batch.shift)).flatten(1).any(1).float().mean() > 0.9
            expected = batch.x if norm is None else normalize(batch.pixels, norm["mean"], norm["std"])
            assert torch.equal(seen, expected)
