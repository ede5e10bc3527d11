"""The training step: kdlab's own optimisation equals Lightning's, metrics come from the tally, no per-step sync."""

from __future__ import annotations

import copy
import math

import lightning as L
import pytest
import torch
from lightning.pytorch.profilers import PassThroughProfiler, SimpleProfiler
from torchmetrics.classification import MulticlassAccuracy

from kdlab.data import MNISTDataModule
from kdlab.modules import DistillationModule, TeacherModule
from kdlab.modules.guards import DivergenceError
from kdlab.modules.noop_hooks import CALLBACK_HOOKS, TRAIN_BATCH_HOOKS
from kdlab.modules.profiler import NoProfiler
from kdlab.modules.tally import StepTally

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
    torch.save(MLP(hidden=(48,), dropout=0.2).state_dict(), path)
    return path


def datamodule(mnist_dir, **kw) -> MNISTDataModule:
    return MNISTDataModule(
        data_dir=str(mnist_dir), val_size=200, batch_size=64, augment_shift=2, seed=0, verify=False, mirrors=[],
        pypi_package=None, **kw,
    )  # fmt: skip


def fit(module, mnist_dir, epochs=2, **trainer_kw) -> L.Trainer:
    trainer = L.Trainer(
        max_epochs=epochs, accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, num_sanity_val_steps=0, **trainer_kw,
    )  # fmt: skip
    trainer.fit(module, datamodule=datamodule(mnist_dir))
    return trainer


def distiller(teacher_file) -> DistillationModule:
    torch.manual_seed(0)
    return DistillationModule(
        net=STUDENT, teacher_net=TEACHER, teacher_ckpt=str(teacher_file), losses=KD, optimizer=ADAMW, scheduler=ONECYCLE
    )


def test_kdlab_step_and_lightning_automatic_loop_train_the_same_weights(teacher_file, mnist_dir):
    manual, automatic = distiller(teacher_file), distiller(teacher_file)
    automatic.automatic_optimization = True  # Lightning's closure, zero_grad, backward, step, scheduler
    trainers = [fit(manual, mnist_dir), fit(automatic, mnist_dir)]
    assert not manual.automatic_optimization
    assert [t.global_step for t in trainers] == [2 * 16, 2 * 16]  # 1000 images / 64 = 16 steps per epoch
    for key, value in manual.net.state_dict().items():
        assert torch.equal(value, automatic.net.state_dict()[key]), key
    for key in ("train/loss", "train/acc", "train/loss_kd", "val/loss", "val/acc"):
        assert trainers[0].callback_metrics[key] == trainers[1].callback_metrics[key], key
    lrs = [t.optimizers[0].param_groups[0]["lr"] for t in trainers]
    assert lrs[0] == lrs[1] < 3e-3 / 100  # the one-cycle schedule ran to its end in both


@pytest.mark.parametrize("trainer_kw", [{"gradient_clip_val": 0.5}, {"accumulate_grad_batches": 2}])
def test_clipping_and_accumulation_run_lightning_loop_which_implements_them(teacher_file, mnist_dir, trainer_kw):
    module = distiller(teacher_file)
    trainer = fit(module, mnist_dir, epochs=1, **trainer_kw)
    assert module.automatic_optimization
    assert trainer.global_step == (16 if "gradient_clip_val" in trainer_kw else 8)


def test_train_metrics_are_the_epoch_means_of_the_steps(mnist_dir):
    """train/loss and train/acc from the tally equal torchmetrics fed step by step, as before."""
    torch.manual_seed(0)
    module = TeacherModule(net=STUDENT, optimizer=ADAMW)
    seen = []

    class Record(L.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            # the weights before this step are the ones the step's loss and logits come from
            with torch.no_grad():
                logits = pl_module.net(batch.x)
            seen.append((torch.nn.functional.cross_entropy(logits, batch.y), logits, batch.y))

    trainer = fit(module, mnist_dir, epochs=1, callbacks=[Record()])
    accuracy = MulticlassAccuracy(num_classes=10, average="micro")
    loss_sum = sum(float(loss) * len(y) for loss, _, y in seen)
    for _, logits, y in seen:
        accuracy.update(logits, y)
    metrics = trainer.callback_metrics
    assert float(metrics["train/loss"]) == pytest.approx(loss_sum / 1000, rel=1e-5)
    assert float(metrics["train/acc"]) == pytest.approx(float(accuracy.compute()), abs=1e-6)


def test_the_tally_names_the_first_non_finite_step_and_term():
    tally = StepTally(["total", "ce", "kd"])
    logits, target = torch.randn(4, 10), torch.arange(4)
    tally.add(0, [torch.tensor(1.0), torch.tensor(0.5), torch.tensor(0.5)], logits, target)
    tally.add(1, [torch.tensor(math.inf), torch.tensor(0.5), torch.tensor(math.inf)], logits, target)
    tally.add(2, [torch.tensor(math.nan), torch.tensor(math.nan), torch.tensor(math.nan)], logits, target)
    with pytest.raises(DivergenceError, match=r"step 1, first in the term\(s\) kd\. .*model\. Try less\.$"):
        tally.fold(lambda: "Try less.")


def test_a_step_never_reads_a_value_back_to_the_host(monkeypatch):
    """No .item(), .tolist() or bool(tensor) in `add`: on a GPU each would stall every step."""
    tally = StepTally(["total"])

    def sync(*args, **kwargs):
        raise AssertionError("host sync in a training step")

    for name in ("item", "tolist", "__bool__", "__float__", "__int__"):
        monkeypatch.setattr(torch.Tensor, name, sync)
    for step in range(3):
        tally.add(step, [torch.tensor(0.5)], torch.randn(8, 10), torch.zeros(8, dtype=torch.long))
    monkeypatch.undo()
    tally.fold()
    means, acc, count = tally.take()
    assert float(means["total"]) == 0.5 and int(count) == 24 and 0 <= float(acc) <= 1


def test_lightning_default_profiler_is_swapped_for_a_free_one_and_a_chosen_one_kept(teacher_file, mnist_dir):
    default = fit(distiller(teacher_file), mnist_dir, epochs=1, limit_train_batches=2)
    assert isinstance(default.profiler, NoProfiler) and isinstance(default.profiler, PassThroughProfiler)
    chosen = fit(distiller(teacher_file), mnist_dir, epochs=1, limit_train_batches=2, profiler=SimpleProfiler())
    assert type(chosen.profiler) is SimpleProfiler


class CountingCallback(L.Callback):
    """Overrides two per-step hooks; every other hook is Callback's no-op."""

    def __init__(self) -> None:
        self.calls = {"on_train_batch_end": 0, "on_before_optimizer_step": 0}

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.calls["on_train_batch_end"] += 1

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        self.calls["on_before_optimizer_step"] += 1


class SilentCallback(L.Callback):
    pass


class BackwardCountingDistiller(DistillationModule):
    backward_calls = 0

    def on_after_backward(self) -> None:
        self.backward_calls += 1


def test_only_hooks_that_do_something_are_called_per_step(teacher_file, mnist_dir):
    counting, silent = CountingCallback(), SilentCallback()
    torch.manual_seed(0)
    module = BackwardCountingDistiller(
        net=STUDENT, teacher_net=TEACHER, teacher_ckpt=str(teacher_file), losses=KD, optimizer=ADAMW, scheduler=ONECYCLE
    )
    trainer = fit(module, mnist_dir, epochs=1, limit_train_batches=3, callbacks=[counting, silent])
    # overridden hooks still run at every step, on callbacks and on the module
    assert counting.calls == {"on_train_batch_end": 3, "on_before_optimizer_step": 3}
    assert module.backward_calls == 3
    # the base no-ops are not called at all: Lightning skips a hook attribute that is not callable
    assert all(vars(silent).get(hook, "kept") is None for hook in CALLBACK_HOOKS)
    assert vars(counting).get("on_before_backward", "kept") is None
    assert "on_train_batch_end" not in vars(counting) and "on_before_optimizer_step" not in vars(counting)
    noop = {hook for hook in TRAIN_BATCH_HOOKS if vars(module).get(hook, "kept") is None}
    assert noop == set(TRAIN_BATCH_HOOKS) - {"on_train_batch_end", "on_after_backward"}  # both overridden
    # the module's evaluation hooks keep their methods: Lightning reads their signatures
    assert callable(module.on_validation_batch_end) and callable(module.on_test_batch_end)
    assert trainer.global_step == 3
    trainer.test(module, datamodule=datamodule(mnist_dir), verbose=False)  # the pruned callbacks still test


def test_lightning_reads_the_step_signatures_without_rebuilding_them(teacher_file, mnist_dir, monkeypatch):
    import inspect

    rebuilt = []
    real = inspect._signature_from_function

    def counting(sigcls, func, *args, **kwargs):
        rebuilt.append(getattr(func, "__qualname__", repr(func)))
        return real(sigcls, func, *args, **kwargs)

    monkeypatch.setattr(inspect, "_signature_from_function", counting)
    fit(distiller(teacher_file), mnist_dir, epochs=1, limit_train_batches=4, limit_val_batches=2)
    steps = [name for name in rebuilt if name.endswith(("training_step", "validation_step"))]
    assert steps == [], f"Lightning rebuilt a step's signature {len(steps)} times: {sorted(set(steps))}"
    monkeypatch.undo()
    spec = inspect.getfullargspec(distiller(teacher_file).training_step)
    assert spec.args == ["self", "batch", "batch_idx"]


def test_compile_keeps_the_state_dict_keys(teacher_file):
    plain_module = distiller(teacher_file)
    compiled = DistillationModule(
        net=STUDENT, teacher_net=TEACHER, teacher_ckpt=str(teacher_file), losses=KD, optimizer=ADAMW, compile=True
    )
    assert compiled.hparams.compile is True and "compile" not in plain_module.hparams
    assert list(compiled.net.state_dict()) == list(copy.deepcopy(plain_module.net).state_dict())


class GradNorms(L.Callback):
    """A typical step hook: it must see every backward, so the run keeps Lightning's path."""

    def __init__(self) -> None:
        self.norms: list[torch.Tensor] = []

    def on_after_backward(self, trainer, pl_module) -> None:
        self.norms.append(torch.stack([p.grad.norm() for p in pl_module.net.parameters()]).norm())


def test_a_cpu_run_steps_directly_and_a_step_hook_brings_back_lightnings_path(teacher_file, mnist_dir, monkeypatch):
    routed = []
    lightning_backward = L.LightningModule.manual_backward

    def counting_backward(self, loss, *args, **kwargs):
        routed.append(1)
        return lightning_backward(self, loss, *args, **kwargs)

    monkeypatch.setattr(L.LightningModule, "manual_backward", counting_backward)
    direct = distiller(teacher_file)
    trainer = fit(direct, mnist_dir, epochs=1)
    assert routed == [] and direct._direct_step  # one device, 32-bit, no step hook: loss.backward() and step
    assert trainer.global_step == 16  # Lightning still counted every step

    hooked, norms = distiller(teacher_file), GradNorms()
    trainer = fit(hooked, mnist_dir, epochs=1, callbacks=[norms])
    assert not hooked._direct_step and len(routed) == len(norms.norms) == trainer.global_step == 16
    for key, value in direct.net.state_dict().items():  # both paths train the very same weights
        assert torch.equal(value, hooked.net.state_dict()[key]), key
