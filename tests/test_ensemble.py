"""Several teachers at once (teacher=ensemble), without a Trainer: the combination arithmetic through the module,
each member fed its own normalisation, the test pass scoring every member. The keys the single-teacher path and
the ensemble share, runs, refusals and the shared cache end to end: tests/test_ensemble_runs.py."""

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from kdlab.checkpoints import sha256_file
from kdlab.data import Batch, normalize
from kdlab.models import MLP
from kdlab.modules import DistillationModule
from kdlab.modules.ensemble import TeacherEnsemble

MNIST_SIZES = {"num_classes": 10, "input_shape": (1, 28, 28)}  # what these tests' nets read

pytestmark = pytest.mark.unit

ADAM = {"_target_": "torch.optim.Adam", "_partial_": True, "lr": 1e-3}
T = 2.0
P0 = [0.5, 0.25, 0.25]  # member 0's probabilities at T, for every image
P1 = [0.1, 0.6, 0.3]  # member 1's


# -- the combination, through the module, on two constant nets ---------------------------------------
TINY_MLP = {"_target_": "kdlab.models.MLP", "hidden": [4]}  # 3 classes: the module's num_classes fills it in


def constant_member(tmp_path: Path, name: str, probs: list[float]) -> dict:
    """A member whose logits are T * ln(probs) for any image (head weights 0, head bias set), in its own file."""
    net = MLP((1, 28, 28), 3, hidden=[4])
    with torch.no_grad():
        net.head.weight.zero_()
        net.head.bias.copy_(T * torch.log(torch.tensor(probs)))
    path = tmp_path / f"{name}.safetensors"
    save_file(net.state_dict(), str(path))
    return {"net": TINY_MLP, "ckpt": str(path), "sha256": sha256_file(path)}


def ensemble_module(members, combine, losses=None) -> DistillationModule:
    losses = losses or {"kd": {"_target_": "kdlab.losses.KD", "weight": 1.0, "temperature": T}}
    return DistillationModule(
        input_shape=(1, 28, 28),
        net={"_target_": "kdlab.models.MLP", "hidden": [8]},
        teacher_net=None,
        teacher_ckpt=None,
        losses=losses,
        optimizer=ADAM,
        num_classes=3,
        members=members,
        combine=combine,
    )


def batch_of(y: torch.Tensor, seed: int = 0) -> Batch:
    """A batch as the datamodule hands it over: pixels, and x = those pixels normalised as MNIST."""
    pixels = torch.randint(
        0, 256, (len(y), 1, 28, 28), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed)
    )
    return Batch(normalize(pixels, 0.1307, 0.3081), y, torch.arange(len(y)), None, None, pixels)


def kl(p: list[float], student_logits: torch.Tensor) -> torch.Tensor:
    """T^2 * KL(p || softmax(s / T)), mean over rows: the KD term for a target distribution p."""
    target = torch.tensor(p, dtype=torch.float64).expand(len(student_logits), -1)
    log_q = F.log_softmax(student_logits.double() / T, dim=1)
    return T * T * (target * (target.log() - log_q)).sum(1).mean()


@pytest.mark.parametrize(
    ("combine", "expected", "at"),
    [
        # (P0 + P1) / 2 = [0.6, 0.85, 0.55] / 2
        ({"mode": "mean_probs", "temperature": T}, [0.3, 0.425, 0.275], T),
        # weights [3, 1] -> [0.75, 0.25]: 0.75 * P0 + 0.25 * P1 = [0.375 + 0.025, 0.1875 + 0.15, 0.1875 + 0.075]
        ({"mode": "weighted", "temperature": T, "weights": [3.0, 1.0]}, [0.4, 0.3375, 0.2625], T),
        # a weight of 0 leaves that member out entirely: P0 exactly
        ({"mode": "weighted", "temperature": T, "weights": [1.0, 0.0]}, P0, T),
        # mean of logits: (T ln P0 + T ln P1) / 2 = ln(P0 * P1) = ln[0.05, 0.15, 0.075];
        # its softmax at 1 is [0.05, 0.15, 0.075] / 0.275 = [2/11, 6/11, 3/11]
        ({"mode": "mean_logits"}, [2 / 11, 6 / 11, 3 / 11], 1.0),
    ],
    ids=["mean_probs", "weighted", "weighted_zero", "mean_logits"],
)
def test_two_members_give_the_hand_computed_targets(tmp_path, combine, expected, at):
    members = [constant_member(tmp_path, "m0", P0), constant_member(tmp_path, "m1", P1)]
    module = ensemble_module(members, combine)
    inputs = module.views(batch_of(torch.zeros(5, dtype=torch.long)))
    target = F.softmax(inputs.teacher_logits.double() / at, dim=1)
    assert torch.allclose(target, torch.tensor([expected] * 5, dtype=torch.float64), atol=1e-6)
    for logits, probs in zip(inputs.member_logits, (P0, P1), strict=True):  # each member kept as it is
        assert torch.allclose(logits, T * torch.log(torch.tensor([probs] * 5)), atol=1e-6)
    if at == T:  # the KD term at T sees exactly the averaged distribution
        assert module.losses["kd"](inputs).item() == pytest.approx(kl(expected, inputs.student_logits).item(), abs=1e-5)


def test_one_kd_term_per_member_reads_that_member(tmp_path):
    """Multi-teacher KD: 0.7 * KD(member 0) + 0.3 * KD(member 1), each against its own member's distribution."""
    members = [constant_member(tmp_path, "m0", P0), constant_member(tmp_path, "m1", P1)]
    kd = {"_target_": "kdlab.losses.KD", "temperature": T}
    losses = {"kd0": {**kd, "weight": 0.7, "member": 0}, "kd1": {**kd, "weight": 0.3, "member": 1}}
    module = ensemble_module(members, {"mode": "mean_probs", "temperature": T}, losses)
    inputs = module.views(batch_of(torch.zeros(4, dtype=torch.long)))
    s = inputs.student_logits
    assert module.losses["kd0"](inputs).item() == pytest.approx(kl(P0, s).item(), rel=1e-5)
    assert module.losses["kd1"](inputs).item() == pytest.approx(kl(P1, s).item(), rel=1e-5)
    loss, _ = module.shared_step(batch_of(torch.zeros(4, dtype=torch.long), seed=1), "val")
    expected = 0.7 * kl(P0, module.net(batch_of(torch.zeros(4, dtype=torch.long), seed=1).x))
    expected += 0.3 * kl(P1, module.net(batch_of(torch.zeros(4, dtype=torch.long), seed=1).x))
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    assert {"loss_kd0", "loss_kd1"} <= set(module.val_metrics)


def test_identical_members_are_the_single_teacher():
    """Members that agree give their own distribution back: mean_probs logits are z - T * logsumexp(z / T)."""
    z = torch.randn(3, 10)
    combined = TeacherEnsemble([], "mean_probs", temperature=4.0).combine([z, z, z])
    assert torch.allclose(F.softmax(combined, 1), F.softmax(z, 1), atol=1e-6)
    assert torch.allclose(F.softmax(combined / 4, 1), F.softmax(z / 4, 1), atol=1e-6)


def test_each_member_reads_the_images_normalised_as_it_was_trained(tmp_path):
    """A member trained on another dataset's normalisation reads the pixels normalised its way; the others x."""
    members = [constant_member(tmp_path, "m0", P0), constant_member(tmp_path, "m1", P1)]
    members[1]["norm"] = {"mean": [0.2860], "std": [0.3530]}
    module = ensemble_module(members, {"mode": "mean_probs", "temperature": T})
    assert module.teacher_norms == [None, {"mean": [0.2860], "std": [0.3530]}]
    seen = {}
    for i, member in enumerate(module.teacher.members):
        member.register_forward_pre_hook(lambda m, args, i=i: seen.__setitem__(i, args[0].clone()))
    batch = batch_of(torch.zeros(3, dtype=torch.long))
    module.views(batch)
    assert torch.equal(seen[0], batch.x)
    assert torch.equal(seen[1], normalize(batch.pixels, [0.2860], [0.3530]))


def test_test_pass_scores_each_member_and_the_ensemble(tmp_path):
    members = [constant_member(tmp_path, "m0", P0), constant_member(tmp_path, "m1", P1)]
    module = ensemble_module(members, {"mode": "mean_probs", "temperature": T})
    assert {"teacher_acc", "member0_acc", "member1_acc", "agreement", "kl"} <= set(module.test_metrics)
    assert "member0_acc" not in module.val_metrics
    y = torch.tensor([0, 0, 1, 2])  # member 0 says class 0, member 1 and their mean say class 1
    module.shared_step(batch_of(y), "test")
    accs = {name: module.test_metrics[name].compute().item() for name in ("member0_acc", "member1_acc", "teacher_acc")}
    assert accs == {"member0_acc": 0.5, "member1_acc": 0.25, "teacher_acc": 0.25}


def test_single_teacher_module_keeps_its_hyperparameters(tmp_path):
    path = tmp_path / "t.pt"
    torch.save(MLP((1, 28, 28), 10, hidden=[8]).state_dict(), path)
    module = DistillationModule(
        **MNIST_SIZES,
        net={"_target_": "kdlab.models.MLP", "hidden": [8]},
        teacher_net={"_target_": "kdlab.models.MLP", "hidden": [8]},
        teacher_ckpt=str(path),
        losses={"kd": {"_target_": "kdlab.losses.KD"}},
        optimizer=ADAM,
    )
    assert not module.is_ensemble and module.member_taps == []
    assert sorted(module.hparams) == sorted(
        ["net", "losses", "optimizer", "scheduler", "num_classes", "teacher_net", "teacher_ckpt"]
        + ["teacher_sha256", "teacher_norm", "input_shape"]
    )
    assert "member0_acc" not in module.test_metrics


def logit_member(tmp_path: Path, name: str, logits: list[float]) -> dict:
    """A member whose logits are `logits` for any image (head weights 0, head bias set), in its own file."""
    net = MLP((1, 28, 28), 3, hidden=[4])
    with torch.no_grad():
        net.head.weight.zero_()
        net.head.bias.copy_(torch.tensor(logits))
    path = tmp_path / f"{name}.safetensors"
    save_file(net.state_dict(), str(path))
    return {"net": TINY_MLP, "ckpt": str(path), "sha256": sha256_file(path)}


@pytest.mark.parametrize("temperature", [1.0, 8.0])
def test_the_ensembles_accuracy_is_scored_at_t1_whatever_the_targets_t(tmp_path, temperature):
    """One member sure of class 0, one of class 1: the mean of their probabilities picks class 0 at T=1,
    class 1 at T=8. The targets follow T; the accuracy, agreement and analysis read the ensemble at T=1.

    z0 = [10, 0, 0], z1 = [-20, 3, 0]. T=1: p0 ~ [1, 0, 0], p1 ~ [0, 0.953, 0.047]: mean [0.500, 0.476, 0.024].
    T=8: p0 = softmax([1.25, 0, 0]) = [0.543, 0.229, 0.229], p1 = softmax([-2.5, 0.375, 0]) = [0.032, 0.574, 0.394]:
    mean [0.287, 0.401, 0.312].
    """
    members = [logit_member(tmp_path, "m0", [10.0, 0.0, 0.0]), logit_member(tmp_path, "m1", [-20.0, 3.0, 0.0])]
    module = ensemble_module(members, {"mode": "mean_probs", "temperature": temperature})
    batch = batch_of(torch.zeros(6, dtype=torch.long))  # every label is class 0
    outputs = module.test_step(batch, 0)
    inputs = module.views(batch)
    assert (inputs.teacher_logits.argmax(1) == (0 if temperature == 1.0 else 1)).all()  # the targets at T
    assert (outputs["teacher_logits"].argmax(1) == 0).all()  # what the test analysis reads
    assert module.test_metrics["teacher_acc"].compute().item() == 1.0
    expected = torch.tensor([[0.5, 0.476, 0.024]]).expand(6, -1)
    assert torch.allclose(F.softmax(outputs["teacher_logits"], 1), expected, atol=1e-3)
