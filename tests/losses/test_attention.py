"""Attention transfer (Zagoruyko and Komodakis 2017): a value derived by hand, the authors' code's numbers on
fixed inputs, the refusal of layers that are no feature maps of one spatial size, and the configs.

Reference numbers: szagoruyko/attention-transfer commit 893df5488f93691799f082a70e2521a9dc2ddf2d, utils.py
`at_loss(x, y)` = `(at(x) - at(y)).pow(2).mean()`, `at(x)` = `F.normalize(x.pow(2).mean(1).view(B, -1))`, run
once outside kdlab (torch 2.13, CPU, float32) on the `values()` inputs below; only the numbers are kept here.
"""

import math

import pytest
import torch
from omegaconf import OmegaConf

from kdlab.losses import AttentionTransfer, LossInputs, build_terms

pytestmark = pytest.mark.unit


def values(shape, phase, scale=1.0):
    """Fixed inputs without a random generator: sin(0.37 i + phase) * scale over the elements, in float32."""
    n = torch.Size(shape).numel()
    return (torch.sin(torch.arange(n, dtype=torch.float64) * 0.37 + phase) * scale).float().reshape(shape)


def batch(student, teacher):
    return LossInputs(
        student_logits=torch.zeros(len(student), 2),
        target=torch.zeros(len(student), dtype=torch.long),
        student_features={"s": student},
        teacher_features={"t": teacher},
    )


def at(student, teacher):
    return AttentionTransfer(student_layer="s", teacher_layer="t")(batch(student, teacher))


def test_attention_transfer_by_hand():
    # One sample, maps of 1 x 2 positions. Student: one channel [1, 2]: squares [1, 4], mean over 1 channel
    # [1, 4], normalised [1, 4] / sqrt 17. Teacher: two channels [2, 0] and [0, 2]: squares [4, 0] and [0, 4],
    # mean over channels [2, 2], normalised [R, R]. The term: the mean of the 2 squared differences.
    r = math.sqrt(0.5)
    expected = ((1 / math.sqrt(17) - r) ** 2 + (4 / math.sqrt(17) - r) ** 2) / 2  # = (0.21583 + 0.06918) / 2
    student = torch.tensor([[[[1.0, 2.0]]]])
    teacher = torch.tensor([[[[2.0, 0.0]], [[0.0, 2.0]]]])
    assert at(student, teacher).item() == pytest.approx(expected, rel=1e-6)
    assert expected == pytest.approx(0.142507, abs=1e-6)


def test_attention_transfer_is_invariant_to_the_scale_of_either_map():
    student, teacher = values((2, 3, 4, 4), 0.7), values((2, 5, 4, 4), 0.9)
    assert at(7 * student, teacher).item() == pytest.approx(at(student, 0.1 * teacher).item(), rel=1e-5)


REFERENCE = [  # (student, teacher, at_loss(student, teacher)) of the authors' utils.py
    (values((2, 3, 4, 4), 0.7), values((2, 5, 4, 4), 0.9, 2.0), 0.017398765310645103),
    (values((2, 3, 4, 4), 1.7).relu(), values((2, 5, 4, 4), 1.9, 2.0).relu(), 0.020487770438194275),  # sparse maps
]


@pytest.mark.parametrize(("student", "teacher", "reference"), REFERENCE, ids=["signed", "relu"])
def test_agrees_with_the_authors_code(student, teacher, reference):
    assert at(student, teacher).item() == pytest.approx(reference, rel=1e-5)


def test_gradients_reach_the_student_never_the_teacher_and_half_precision_is_computed_in_float32():
    student = values((2, 3, 4, 4), 0.7).requires_grad_(True)
    teacher = values((2, 5, 4, 4), 0.9, 2.0).requires_grad_(True)
    at(student, teacher).backward()
    assert student.grad.abs().sum() > 0 and teacher.grad is None
    half = at(values((2, 3, 4, 4), 0.7, 300.0).half(), values((2, 5, 4, 4), 0.9, 600.0).half())  # squares > 65504
    assert half.dtype == torch.float32 and half.item() == pytest.approx(REFERENCE[0][2], rel=1e-2)


@pytest.mark.parametrize(
    ("student", "teacher", "message"),
    [
        (torch.zeros(2, 16), torch.zeros(2, 3, 4, 4), r"must give 4-D feature maps .* gives \[2, 16\]"),
        (torch.zeros(2, 3, 4, 4), torch.zeros(2, 48), r"teacher's 't' \[2, 48\]"),
        (torch.zeros(2, 3, 8, 8), torch.zeros(2, 3, 4, 4), "'s' is 8x8 and the teacher's 't' 4x4"),
    ],
    ids=["flat student", "flat teacher", "spatial sizes"],
)
def test_layers_that_are_no_maps_of_one_size_are_refused_at_build_and_in_forward(student, teacher, message):
    term = AttentionTransfer(student_layer="s", teacher_layer="t")
    with pytest.raises(ValueError, match=message):
        term.build({"s": student}, {"t": teacher})
    with pytest.raises(ValueError, match=message):
        term(batch(student, teacher))


def test_an_mlp_student_is_refused_when_the_system_is_built(tmp_path):
    from kdlab.models import SmallCNN
    from kdlab.modules import DistillationModule

    teacher = {"_target_": "kdlab.models.SmallCNN", "channels": [4, 8], "hidden": 16}
    torch.save(SmallCNN((1, 28, 28), 10, channels=(4, 8), hidden=16).state_dict(), tmp_path / "teacher.pt")
    at_term = {
        "_target_": "kdlab.losses.AttentionTransfer",
        "student_layer": "features.0",
        "teacher_layer": "features.0",
    }
    with pytest.raises(ValueError, match=r"must give 4-D feature maps .* 'features.0' gives \[2, 32\]"):
        DistillationModule(
            net={"_target_": "kdlab.models.MLP", "hidden": [32]}, teacher_net=teacher,
            teacher_ckpt=str(tmp_path / "teacher.pt"), losses={"ce": {"_target_": "kdlab.losses.CE"}, "at": at_term},
            optimizer={"_target_": "torch.optim.Adam", "_partial_": True}, num_classes=10, input_shape=(1, 28, 28),
        )  # fmt: skip


def test_a_cnn_student_trains_on_the_teachers_attention_in_the_system(tmp_path):
    from kdlab.data.batch import Batch
    from kdlab.models import SmallCNN
    from kdlab.modules import DistillationModule

    cnn = {"_target_": "kdlab.models.SmallCNN", "channels": [4, 8], "hidden": 16}
    torch.save(SmallCNN((1, 28, 28), 10, channels=(4, 8), hidden=16).state_dict(), tmp_path / "teacher.pt")
    terms = {f"at{i}": {"_target_": "kdlab.losses.AttentionTransfer", "student_layer": f"features.{i}",
                        "teacher_layer": f"features.{i}"} for i in (0, 1)}  # fmt: skip
    module = DistillationModule(
        net={**cnn, "channels": [2, 4]}, teacher_net=cnn, teacher_ckpt=str(tmp_path / "teacher.pt"), losses=terms,
        optimizer={"_target_": "torch.optim.SGD", "_partial_": True}, num_classes=10, input_shape=(1, 28, 28),
    )  # fmt: skip
    x = values((4, 1, 28, 28), 0.3)
    loss = module.training_step(Batch(x, torch.zeros(4, dtype=torch.long), torch.arange(4), None, None, x), 0)
    loss.backward()
    assert torch.isfinite(loss) and loss > 0
    assert all(p.grad is not None for p in module.net.features.parameters())
    assert all(p.grad is None for p in module.teacher.parameters())


@pytest.mark.heavy
def test_the_yaml_and_the_cnn_preset_have_the_authors_weight_on_every_block():
    from kdlab.config import CONFIG_DIR, compose_config

    assert build_terms({"at": OmegaConf.load(f"{CONFIG_DIR}/loss/at.yaml")})["at"].weight == 1000.0
    cfg = compose_config(["experiment=distill_cifar10", "distill=at"])
    terms = build_terms(cfg.distill.losses)
    pairs = {name: (t.weight, t.student_layer, t.teacher_layer) for name, t in terms.items() if name != "ce"}
    assert pairs == {f"at{i}": (1000.0, f"features.{i}", f"features.{i}") for i in range(3)}
    assert terms["ce"].weight == 1.0 and len(cfg.model.channels) == len(cfg.teacher.model.channels) == 3
