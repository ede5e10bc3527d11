"""Hint (FitNets): the regressor build() creates, what the loss reads, and where its gradients go."""

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf
from torch import nn

from kdlab.config import CONFIG_DIR
from kdlab.losses import Hint, LossInputs

pytestmark = pytest.mark.unit

CONF = CONFIG_DIR / "loss"


def hint(**kwargs):
    return Hint(student_layer="s", teacher_layer="t", **kwargs)


def batch(student, teacher):
    return LossInputs(
        student_logits=torch.zeros(student.shape[0], 2),
        target=torch.zeros(student.shape[0], dtype=torch.long),
        student_features={"s": student},
        teacher_features={"t": teacher},
    )


def built(student_shape, teacher_shape, **kwargs):
    term = hint(**kwargs)
    term.build({"s": torch.zeros(student_shape)}, {"t": torch.zeros(teacher_shape)})
    return term


def test_layers_are_reported_for_hooking():
    term = Hint(student_layer="features.0", teacher_layer="features.1")
    assert term.student_layers == ("features.0",)
    assert term.teacher_layers == ("features.1",)
    assert term.needs_teacher is True


def test_article_feature_example():
    # Article 4.3: rows [1,2,3] ... [13,14,15] against the same + 0.1; shapes match, so no regressor.
    # 1/2 * 15 * 0.1^2 = 0.075; the mean over the 15 elements is 0.01.
    student = torch.arange(1.0, 16.0).reshape(5, 3)
    teacher = student + 0.1
    assert built((2, 3), (2, 3), reduction="half_sum")(batch(student, teacher)).item() == pytest.approx(0.075, abs=1e-5)
    assert built((2, 3), (2, 3))(batch(student, teacher)).item() == pytest.approx(0.01, abs=1e-6)


def test_identity_when_shapes_match():
    for shape in [(2, 8), (2, 4, 5, 5)]:
        term = built(shape, shape)
        assert isinstance(term.regressor, nn.Identity)
        assert list(term.parameters()) == []


def test_linear_for_2d_features():
    term = built((2, 3), (2, 5))
    assert isinstance(term.regressor, nn.Linear)
    assert term.regressor.weight.shape == (5, 3)
    assert term(batch(torch.randn(4, 3), torch.randn(4, 5))).dim() == 0


def test_1x1_conv_for_4d_features_of_equal_spatial_size():
    term = built((2, 4, 7, 7), (2, 8, 7, 7))
    assert isinstance(term.regressor, nn.Conv2d)
    assert term.regressor.weight.shape == (8, 4, 1, 1)
    assert term(batch(torch.randn(3, 4, 7, 7), torch.randn(3, 8, 7, 7))).dim() == 0


@pytest.mark.parametrize(
    ("student_shape", "teacher_shape", "in_features", "out_features"),
    [
        ((2, 4, 7, 7), (2, 8, 3, 3), 4 * 7 * 7, 8 * 3 * 3),  # spatial sizes differ
        ((2, 16), (2, 2, 3, 3), 16, 2 * 3 * 3),  # 2-D student, 4-D teacher
    ],
)
def test_flattened_linear_otherwise(student_shape, teacher_shape, in_features, out_features):
    term = built(student_shape, teacher_shape)
    assert isinstance(term.regressor, nn.Linear)
    assert (term.regressor.in_features, term.regressor.out_features) == (in_features, out_features)
    loss = term(batch(torch.randn(3, *student_shape[1:]), torch.randn(3, *teacher_shape[1:])))
    assert loss.dim() == 0 and torch.isfinite(loss)


def test_regressor_is_applied_before_the_error():
    # Regressor sums the two student values: [1, 2] -> 3, teacher 5, so (3 - 5)^2 = 4.
    term = built((2, 2), (2, 1))
    with torch.no_grad():
        term.regressor.weight.copy_(torch.tensor([[1.0, 1.0]]))
        term.regressor.bias.zero_()
    assert term(batch(torch.tensor([[1.0, 2.0]]), torch.tensor([[5.0]]))).item() == pytest.approx(4.0)


def test_gradients_reach_student_and_regressor_not_teacher():
    term = built((2, 3), (2, 5))
    # The module puts the terms' parameters in the optimiser, so they must be visible here.
    assert {name for name, _ in term.named_parameters()} == {"regressor.weight", "regressor.bias"}
    student = torch.randn(4, 3, requires_grad=True)
    teacher = torch.randn(4, 5, requires_grad=True)
    term(batch(student, teacher)).backward()
    assert student.grad is not None and student.grad.abs().sum() > 0
    assert term.regressor.weight.grad is not None and term.regressor.weight.grad.abs().sum() > 0
    assert teacher.grad is None


def test_forward_before_build_is_an_error():
    with pytest.raises(RuntimeError, match=r"before Hint\.build"):
        hint()(batch(torch.zeros(2, 3), torch.zeros(2, 3)))


def test_missing_feature_names_the_available_ones():
    term = Hint(student_layer="features.9", teacher_layer="t")
    with pytest.raises(ValueError, match=r"student feature 'features\.9' is missing.*available: 'features\.0', 'head'"):
        term.build({"features.0": torch.zeros(2, 3), "head": torch.zeros(2, 2)}, {"t": torch.zeros(2, 3)})
    term = built((2, 3), (2, 3))
    inputs = batch(torch.zeros(2, 3), torch.zeros(2, 3))
    inputs.teacher_features = {}
    with pytest.raises(ValueError, match=r"teacher feature 't' is missing.*available: none"):
        term(inputs)


@pytest.mark.parametrize("weight", [-1.0, float("nan"), float("inf")])
def test_bad_weight_is_rejected(weight):
    with pytest.raises(ValueError, match="Hint: weight must be a finite number >= 0"):
        hint(weight=weight)


def test_unknown_reduction_is_rejected():
    with pytest.raises(ValueError, match=r"Hint: reduction must be one of 'mean', 'half_sum', 'sum'"):
        hint(reduction="l2")


@pytest.mark.parametrize("name", ["", None, 3])
def test_bad_layer_name_is_rejected(name):
    with pytest.raises(ValueError, match="Hint: student_layer must be the dotted name of a submodule"):
        Hint(student_layer=name, teacher_layer="t")


def test_hint_config():
    cfg = OmegaConf.create({"distill": {"temperature": 2.0}, "loss": OmegaConf.load(CONF / "hint.yaml")})
    term = instantiate(cfg.loss)
    assert type(term) is Hint and term.weight == 1.0 and term.reduction == "mean"
    assert term.student_layers == ("features.1",) and term.teacher_layers == ("features.1",)
