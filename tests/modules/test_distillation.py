"""The frozen teacher stays frozen, gradients go where they should, checkpoints load safely."""

import lightning as L
import pytest
import torch
from safetensors.torch import save_file

from kdlab.checkpoints import CheckpointError, load_weights, read_state_dict
from kdlab.data import MNISTDataModule
from kdlab.models import MLP, SmallCNN
from kdlab.modules import DistillationModule, TeacherModule

CNN_TEACHER = {
    "_target_": "kdlab.models.SmallCNN",
    "channels": [4, 8],
    "hidden": 16,
    "batch_norm": True,
    "dropout": 0.5,  # dropout and batch norm: both would change if the teacher ever left eval mode
}
STUDENT = {"_target_": "kdlab.models.MLP", "hidden": [32, 24]}  # 24 -> 16: hint needs a regressor
ADAM = {"_target_": "torch.optim.Adam", "_partial_": True, "lr": 1e-3}
LOSSES = {
    "ce": {"_target_": "kdlab.losses.CE", "weight": 0.1},
    "kd": {"_target_": "kdlab.losses.KD", "weight": 0.9, "temperature": 4.0},
    "hint": {
        "_target_": "kdlab.losses.Hint",
        "weight": 1.0,
        "student_layer": "features.1",
        "teacher_layer": "neck",
    },
}


@pytest.fixture
def teacher_file(tmp_path):
    torch.manual_seed(0)
    net = SmallCNN(channels=(4, 8), hidden=16, batch_norm=True, dropout=0.5)
    with torch.no_grad():  # non-trivial running statistics, so a change would show
        net.features[0][1].running_mean.uniform_(-1, 1)
    path = tmp_path / "teacher.pt"
    torch.save(net.state_dict(), path)
    return path


def make_module(teacher_file, losses=LOSSES) -> DistillationModule:
    return DistillationModule(
        net=STUDENT, teacher_net=CNN_TEACHER, teacher_ckpt=str(teacher_file), losses=losses, optimizer=ADAM
    )


def tiny_datamodule(mnist_dir, **kw) -> MNISTDataModule:
    return MNISTDataModule(
        data_dir=str(mnist_dir),
        val_size=200,
        batch_size=64,
        verify=False,
        mirrors=[],
        pypi_package=None,
        **kw,
    )


def quiet_trainer(**kw) -> L.Trainer:
    """One CPU epoch, nothing written to disk or the terminal."""
    off = dict(logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    return L.Trainer(max_epochs=1, accelerator="cpu", **off, **kw)


class AssertTeacherEval(L.Callback):
    """Checks the teacher's mode at every training step, after Lightning's own .train() calls."""

    def __init__(self):
        self.checked = 0

    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        assert not module.teacher.training
        assert all(not m.training for m in module.teacher.modules())
        self.checked += 1


def test_teacher_is_bit_identical_and_in_eval_after_an_epoch(teacher_file, mnist_dir):
    module = make_module(teacher_file)
    before = {k: v.clone() for k, v in module.teacher.state_dict().items()}
    probe = AssertTeacherEval()
    trainer = quiet_trainer(callbacks=[probe])
    trainer.fit(module, datamodule=tiny_datamodule(mnist_dir, augment_shift=2))
    assert probe.checked > 5
    after = module.teacher.state_dict()
    for key, value in before.items():
        assert torch.equal(value, after[key]), f"teacher {key} changed during training"
    assert all(p.grad is None and not p.requires_grad for p in module.teacher.parameters())
    optimised = {id(p) for group in trainer.optimizers[0].param_groups for p in group["params"]}
    assert not optimised & {id(p) for p in module.teacher.parameters()}
    assert {id(p) for p in module.losses["hint"].parameters()} <= optimised  # the regressor trains


def test_gradients_reach_student_and_regressor_never_teacher(teacher_file):
    module = make_module(teacher_file)
    module.train()
    x, y = torch.randn(8, 1, 28, 28), torch.randint(0, 10, (8,))
    inputs = module.views(x, y)
    assert not inputs.teacher_logits.requires_grad  # no graph was built for the teacher
    loss = sum(t.weight * t(inputs) for t in module.losses.values())
    loss.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in module.net.parameters())
    assert all(p.grad is not None for p in module.losses["hint"].parameters())
    assert all(p.grad is None for p in module.teacher.parameters())


def test_weight_zero_terms_are_not_tapped_or_built(teacher_file):
    losses = {**LOSSES, "hint": {**LOSSES["hint"], "weight": 0.0}}
    module = make_module(teacher_file, losses)
    assert module.active_terms == ["ce", "kd"]
    assert module.losses["hint"].regressor is None  # not built: no parameters to train
    assert not [name for name, m in module.teacher.named_modules() if m._forward_hooks]  # nothing tapped
    assert not [name for name, m in module.net.named_modules() if m._forward_hooks]
    assert "loss_hint" not in module.train_metrics  # not computed, so not logged
    enabled = make_module(teacher_file)  # the same term with a weight is tapped and built
    assert enabled.losses["hint"].regressor is not None
    assert [name for name, m in enabled.teacher.named_modules() if m._forward_hooks] == ["neck"]


def test_unknown_layer_names_the_available_ones(teacher_file):
    losses = {**LOSSES, "hint": {**LOSSES["hint"], "teacher_layer": "no.such.layer"}}
    with pytest.raises(ValueError, match=r"no\.such\.layer.*Available layers: .*neck"):
        make_module(teacher_file, losses)


class Evil:
    """Any custom class: unpickling it could run code, so weights_only loading must refuse it."""


def test_weights_only_refuses_pickled_objects(tmp_path):
    path = tmp_path / "evil.ckpt"
    torch.save({"state_dict": MLP().state_dict(), "payload": Evil()}, path)
    with pytest.raises(CheckpointError, match="weights_only"):
        read_state_dict(path)


def test_mismatched_teacher_checkpoint_names_the_keys(tmp_path):
    path = tmp_path / "other.pt"
    torch.save(MLP(hidden=(64,)).state_dict(), path)
    with pytest.raises(CheckpointError) as err:
        load_weights(MLP(hidden=(512, 256)), path)
    message = str(err.value)
    assert "missing keys: ['features.1.0.bias', 'features.1.0.weight']" in message
    assert "features.0.0.weight: checkpoint (64, 784) vs model (512, 784)" in message
    assert "teacher.model" in message and "teacher.ckpt_path" in message


def test_missing_teacher_checkpoint_is_a_clear_error(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        read_state_dict(tmp_path / "nope.ckpt")


def test_teacher_loads_from_lightning_ckpt_state_dict_and_safetensors(tmp_path):
    torch.manual_seed(1)
    system = TeacherModule(net={"_target_": "kdlab.models.MLP", "hidden": [16]}, optimizer=ADAM)
    trainer = L.Trainer(max_epochs=0, logger=False, enable_progress_bar=False, enable_model_summary=False)
    trainer.strategy.connect(system)
    trainer.save_checkpoint(tmp_path / "teacher.ckpt")
    torch.save(system.net.state_dict(), tmp_path / "teacher.pt")
    save_file(system.net.state_dict(), str(tmp_path / "teacher.safetensors"))
    for name in ("teacher.ckpt", "teacher.pt", "teacher.safetensors"):
        net = load_weights(MLP(hidden=(16,)), tmp_path / name)
        for key, value in system.net.state_dict().items():
            assert torch.equal(net.state_dict()[key], value), name


def test_checkpoint_leaves_teacher_out_and_reloads(teacher_file, mnist_dir, tmp_path):
    module = make_module(teacher_file)
    trainer = quiet_trainer(limit_train_batches=2, limit_val_batches=1)
    trainer.fit(module, datamodule=tiny_datamodule(mnist_dir))
    trainer.save_checkpoint(tmp_path / "distill.ckpt")
    saved = torch.load(tmp_path / "distill.ckpt", weights_only=True)
    assert not [k for k in saved["state_dict"] if k.startswith("teacher.")]
    assert any(k.startswith("losses.hint.regressor") for k in saved["state_dict"])
    reloaded = DistillationModule.load_from_checkpoint(tmp_path / "distill.ckpt", weights_only=True)
    for key, value in module.state_dict().items():
        assert torch.equal(reloaded.state_dict()[key], value), key


def test_every_rank_computes_every_metric_even_without_batches(teacher_file, monkeypatch):
    """Computing syncs across DDP ranks: a rank with no val/test batch must still take part."""
    module = make_module(teacher_file)
    computed = []
    for name, metric in module.val_metrics.items():
        monkeypatch.setattr(metric, "compute", lambda name=name: computed.append(name) or torch.tensor(0.0))
    monkeypatch.setattr(module, "log", lambda *args, **kwargs: None)
    module.log_stage("val")  # this rank saw no batch at all
    assert (
        sorted(computed)
        == sorted(module.val_metrics)
        == sorted(["loss", "loss_ce", "loss_kd", "loss_hint", "acc", "agreement", "kl"])
    )
