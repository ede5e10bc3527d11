"""The teacher's validation logits, kept for the rest of a fit: each validation image runs the teacher once, the
scores are those of the live teacher, and a split that changes under the kept logits is refused."""

import lightning as L
import pytest
import torch
from safetensors.torch import save_file
from test_distillation import ADAM, LOSSES, MNIST_SIZES, STUDENT, make_module, write_teacher
from test_distillation_fit import quiet_trainer

from kdlab.models import MLP
from kdlab.modules import DistillationModule
from kdlab.teachers.validation import ValidationLogits, ValidationLogitsError

LOGITS_ONLY = {name: LOSSES[name] for name in ("ce", "kd")}
VAL_METRICS = ("val/loss", "val/loss_ce", "val/loss_kd", "val/acc", "val/agreement", "val/kl")


class TeacherImages(L.Callback):
    """Counts the images the teacher (an ensemble's first member) runs on while the Trainer validates."""

    def __init__(self) -> None:
        self.validation = 0

    def on_fit_start(self, trainer, module):
        def count(net, args, output):
            if trainer.validating or trainer.sanity_checking:
                self.validation += len(args[0])

        module.teacher_nets[0].register_forward_hook(count)


def ensemble_of_two(tmp_path) -> DistillationModule:
    members = []
    for seed in (1, 2):
        torch.manual_seed(seed)
        path = tmp_path / f"member{seed}.safetensors"
        save_file(MLP((1, 28, 28), 10, hidden=[16]).state_dict(), str(path))
        members.append({"net": {"_target_": "kdlab.models.MLP", "hidden": [16]}, "ckpt": str(path)})
    return DistillationModule(
        **MNIST_SIZES, net=STUDENT, teacher_net=None, teacher_ckpt=None, losses=LOGITS_ONLY, optimizer=ADAM,
        members=members, combine={"mode": "mean_probs", "temperature": 4.0},
    )  # fmt: skip


@pytest.mark.parametrize("teacher", ["one", "ensemble"])
def test_each_validation_image_runs_the_teacher_once_per_fit_and_scores_as_the_live_teacher(
    tmp_path, mnist_dm, teacher
):
    one = teacher == "one"
    module = make_module(write_teacher(tmp_path), losses=LOGITS_ONLY) if one else ensemble_of_two(tmp_path)
    dm, seen = mnist_dm(), TeacherImages()
    trainer = quiet_trainer(max_epochs=3, num_sanity_val_steps=0, callbacks=[seen])
    trainer.fit(module, datamodule=dm)
    # 200 validation images in batches of 100: all of them at the first validation, then only each later epoch's
    # first batch, scored live again to check what is kept (every image every epoch would be 600)
    assert seen.validation == 200 + 2 * 100
    kept = {name: trainer.callback_metrics[name].clone() for name in VAL_METRICS}
    assert module.validation_logits is None  # dropped with the fit: trainer.validate() runs the teacher
    (live,) = trainer.validate(module, datamodule=dm, verbose=False)
    assert seen.validation == 600
    for name in VAL_METRICS:  # the last epoch scored from kept logits, the same weights scored live: equal
        assert kept[name].item() == live[name], name


@pytest.mark.parametrize("why", ["feature term", "reloaded dataloaders"])
def test_a_feature_term_or_reloaded_dataloaders_keep_the_teacher_live_on_validation(tmp_path, mnist_dm, why):
    feature = why == "feature term"
    module = make_module(write_teacher(tmp_path), losses=LOSSES if feature else LOGITS_ONLY)
    seen = TeacherImages()
    trainer = quiet_trainer(
        max_epochs=2, num_sanity_val_steps=0, callbacks=[seen], reload_dataloaders_every_n_epochs=0 if feature else 1
    )
    trainer.fit(module, datamodule=mnist_dm())
    assert seen.validation == 2 * 200


class ChangeValidationImages(L.Callback):
    """Replaces the validation split's images with others at the second epoch: the same positions, other images."""

    def on_validation_epoch_start(self, trainer, module):
        if trainer.current_epoch == 1:
            split = trainer.datamodule.data_val
            split.x.copy_(255 - split.x)


def test_a_validation_split_that_changes_within_a_fit_is_refused_not_scored_with_stale_logits(tmp_path, mnist_dm):
    module = make_module(write_teacher(tmp_path), losses=LOGITS_ONLY)
    trainer = quiet_trainer(max_epochs=2, num_sanity_val_steps=0, callbacks=[ChangeValidationImages()])
    with pytest.raises(ValidationLogitsError, match="validation split's images changed during the fit"):
        trainer.fit(module, datamodule=mnist_dm())


@pytest.mark.unit
def test_kept_logits_answer_only_positions_all_kept_and_grow_with_the_split():
    kept = ValidationLogits()
    assert kept.get(torch.tensor([0, 1])) is None
    first = [torch.arange(6.0).reshape(3, 2)]
    kept.put(torch.tensor([0, 1, 2]), first)
    assert kept.get(torch.tensor([1, 3])) is None  # 3 was never scored
    kept.put(torch.tensor([5, 3]), [torch.tensor([[50.0, 51.0], [30.0, 31.0]])])
    (logits,) = kept.get(torch.tensor([3, 0, 5]))
    assert torch.equal(logits, torch.tensor([[30.0, 31.0], [0.0, 1.0], [50.0, 51.0]]))
    assert kept.get(torch.tensor([4])) is None  # inside the grown table, never scored
    kept.check(torch.tensor([0, 4]), [torch.tensor([[0.0, 1.0], [9.0, 9.0]])], 1e-4)  # 4 not kept: nothing to compare
    with pytest.raises(ValidationLogitsError):
        kept.check(torch.tensor([2]), [torch.tensor([[4.0, 5.5]])], 1e-4)
