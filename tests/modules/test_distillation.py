"""The distillation system without a Trainer: gradients go where they should, switched-off terms cost nothing,
teacher files load safely or say why not, every rank computes every metric."""

import copy

import pytest
import torch

from kdlab.checkpoints import CheckpointError, load_weights, read_state_dict
from kdlab.data import Batch, normalize
from kdlab.models import MLP, SmallCNN
from kdlab.modules import DistillationModule

MNIST_SIZES = {"num_classes": 10, "input_shape": (1, 28, 28)}  # what these tests' nets read

pytestmark = pytest.mark.unit

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


def write_teacher(tmp_path):
    """A CNN teacher's weights in a file, with batch-norm statistics that would show any change."""
    torch.manual_seed(0)
    net = SmallCNN((1, 28, 28), 10, channels=(4, 8), hidden=16, batch_norm=True, dropout=0.5)
    with torch.no_grad():  # non-trivial running statistics, so a change would show
        net.features[0][1].running_mean.uniform_(-1, 1)
    path = tmp_path / "teacher.pt"
    torch.save(net.state_dict(), path)
    return path


@pytest.fixture
def teacher_file(tmp_path):
    return write_teacher(tmp_path)


def make_module(teacher_file, losses=LOSSES, **kw) -> DistillationModule:
    return DistillationModule(
        **MNIST_SIZES,
        net=STUDENT,
        teacher_net=CNN_TEACHER,
        teacher_ckpt=str(teacher_file),
        losses=losses,
        optimizer=ADAM,
        **kw,
    )


def mnist_batch(n: int = 8, seed: int = 0) -> Batch:
    """A batch as the datamodule hands it to a step: pixels, and x = those pixels normalised as MNIST."""
    g = torch.Generator().manual_seed(seed)
    pixels = torch.randint(0, 256, (n, 1, 28, 28), dtype=torch.uint8, generator=g)
    y = torch.randint(0, 10, (n,), generator=g)
    return Batch(normalize(pixels, 0.1307, 0.3081), y, torch.arange(n), None, None, pixels)


def test_gradients_reach_student_and_regressor_never_teacher(teacher_file):
    module = make_module(teacher_file)
    module.train()
    inputs = module.views(mnist_batch())
    assert not inputs.teacher_logits.requires_grad  # no graph was built for the teacher
    loss = sum(t.weight * t(inputs) for t in module.losses.values())
    loss.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in module.net.parameters())
    assert all(p.grad is not None for p in module.losses["hint"].parameters())
    assert all(p.grad is None for p in module.teacher.parameters())
    assert not module.teacher.training  # .train() on the system leaves the teacher in eval mode


def test_the_training_step_returns_the_weighted_loss_lightning_optimises(teacher_file):
    module = make_module(teacher_file)
    batch = mnist_batch()
    loss = module.training_step(batch, 0)
    inputs = module.views(batch)
    expected = sum(module.losses[n].weight * module.losses[n](inputs) for n in ("ce", "kd", "hint"))
    assert loss.requires_grad and loss.ndim == 0
    torch.testing.assert_close(loss, expected, rtol=0, atol=0)


def test_weight_zero_terms_are_not_tapped_or_built(teacher_file):
    losses = {**LOSSES, "hint": {**LOSSES["hint"], "weight": 0.0}}
    module = make_module(teacher_file, losses)
    assert module.active_terms == ["ce", "kd"]
    assert module.losses["hint"].regressor is None  # not built: no parameters to train
    assert [name for name, m in module.teacher.named_modules() if m._forward_hooks] == []  # nothing tapped
    assert [name for name, m in module.net.named_modules() if m._forward_hooks] == []
    assert "loss_hint" not in module.train_metrics  # not computed, so not logged
    enabled = make_module(teacher_file)  # the same term with a weight is tapped and built
    assert isinstance(enabled.losses["hint"].regressor, torch.nn.Linear)
    assert [name for name, m in enabled.teacher.named_modules() if m._forward_hooks] == ["neck"]


def test_unknown_layer_names_the_available_ones(teacher_file):
    losses = {**LOSSES, "hint": {**LOSSES["hint"], "teacher_layer": "no.such.layer"}}
    with pytest.raises(ValueError, match=r"no\.such\.layer.*Available layers: .*neck"):
        make_module(teacher_file, losses)


def test_nets_are_sized_by_the_data_and_the_filled_configs_are_kept(teacher_file):
    module = make_module(teacher_file)
    assert module.hparams.net == {**STUDENT, "input_shape": [1, 28, 28], "num_classes": 10}
    assert module.teacher_net_config() == {**CNN_TEACHER, "input_shape": [1, 28, 28], "num_classes": 10}
    assert module.net.features[0][0].in_features == 784 and module.net.head.out_features == 10
    with pytest.raises(ValueError, match=r"model\.num_classes=3, but the data gives 10"):
        DistillationModule(
            **MNIST_SIZES, net={**STUDENT, "num_classes": 3}, teacher_net=CNN_TEACHER,
            teacher_ckpt=str(teacher_file), losses=LOSSES, optimizer=ADAM,
        )  # fmt: skip


class Evil:
    """Any custom class: unpickling it could run code, so weights_only loading must refuse it."""


def test_weights_only_refuses_pickled_objects(tmp_path):
    path = tmp_path / "evil.ckpt"
    torch.save({"state_dict": MLP((1, 28, 28), 10).state_dict(), "payload": Evil()}, path)
    with pytest.raises(CheckpointError, match="weights_only"):
        read_state_dict(path)


def test_mismatched_teacher_checkpoint_names_the_keys(tmp_path):
    path = tmp_path / "other.pt"
    torch.save(MLP((1, 28, 28), 10, hidden=(64,)).state_dict(), path)
    with pytest.raises(CheckpointError) as err:
        load_weights(MLP((1, 28, 28), 10, hidden=(512, 256)), path)
    message = str(err.value)
    assert "missing keys: ['features.1.0.bias', 'features.1.0.weight']" in message
    assert "features.0.0.weight: checkpoint (64, 784) vs model (512, 784)" in message
    assert "teacher.model" in message and "teacher.ckpt_path" in message


def test_missing_teacher_checkpoint_is_a_clear_error(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        read_state_dict(tmp_path / "nope.ckpt")


def test_a_changed_teacher_file_is_refused(teacher_file):
    from kdlab.checkpoints import sha256_file

    recorded = sha256_file(teacher_file)
    make_module(teacher_file, teacher_sha256=recorded)  # the file it was distilled from: fine
    state = torch.load(teacher_file, weights_only=True)
    torch.save({k: v + 1 if v.is_floating_point() else v for k, v in state.items()}, teacher_file)
    with pytest.raises(CheckpointError, match=r"teacher file .* has changed since this student was distilled"):
        make_module(teacher_file, teacher_sha256=recorded)


@pytest.mark.heavy
def test_compile_keeps_the_state_dict_keys():
    """module.compile=true compiles the net in place: checkpoints and student.pt keep their keys."""
    from kdlab.modules import TeacherModule

    plain_module = TeacherModule(**MNIST_SIZES, net=STUDENT, optimizer=ADAM)
    compiled = TeacherModule(
        **MNIST_SIZES, net=STUDENT, optimizer=ADAM, compile=True
    )  # compiled lazily: at its first call
    assert compiled.hparams.compile is True and "compile" not in plain_module.hparams
    assert list(compiled.net.state_dict()) == list(copy.deepcopy(plain_module.net).state_dict())
    assert list(compiled.state_dict()) == list(plain_module.state_dict())


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


def test_validation_and_test_metrics_never_wait_for_the_device(teacher_file, monkeypatch):
    """Per batch, the stage metrics take tensor ops only: a value read on the host (`bool()`, `.item()`) would
    stall a GPU at every validation and test batch (torchmetrics' default NaN check on a MeanMetric does)."""
    module = make_module(teacher_file)
    module.eval()
    inputs = module.views(mnist_batch())
    reads = []
    for name in ("__bool__", "item"):
        real = getattr(torch.Tensor, name)
        monkeypatch.setattr(torch.Tensor, name, lambda t, _real=real, _name=name: reads.append(_name) or _real(t))
    for stage in ("val", "test"):
        metrics = module.metrics_of[stage]
        module.update_stage_metrics(inputs, metrics, stage)
    monkeypatch.undo()
    assert reads == []
