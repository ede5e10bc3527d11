"""Terms that name an ensemble member read that member's logits or features, and say so when they cannot."""

import pytest
import torch

from kdlab.losses import CE, DKD, KD, Hint, LogitMSE, LossInputs
from kdlab.losses.base import check_term_members

pytestmark = pytest.mark.unit


def probs_logits(*rows, temperature=1.0):
    """Logits whose softmax at `temperature` is exactly the given probability rows."""
    return temperature * torch.log(torch.tensor(rows, dtype=torch.float64)).float()


# Member 0 puts [0.5, 0.25, 0.25] on the classes, member 1 [0.1, 0.6, 0.3]; their mean is the teacher.
MEMBER_0 = probs_logits([0.5, 0.25, 0.25])
MEMBER_1 = probs_logits([0.1, 0.6, 0.3])
COMBINED = probs_logits([0.3, 0.425, 0.275])


def ensemble_inputs(student):
    return LossInputs(
        student_logits=student,
        target=torch.zeros(1, dtype=torch.long),
        teacher_logits=COMBINED,
        member_logits=[MEMBER_0, MEMBER_1],
        member_features=[{"neck": torch.ones(1, 4)}, {"neck": torch.full((1, 4), 3.0)}],
    )


def test_kd_reads_the_member_it_names_and_the_combined_teacher_without_one():
    student = MEMBER_1.clone()  # the student says exactly what member 1 says
    inputs = ensemble_inputs(student)
    assert KD(temperature=1.0, member=1)(inputs).item() == pytest.approx(0.0, abs=1e-6)
    # KL(member 0 || student) = 0.5 ln(0.5/0.1) + 0.25 ln(0.25/0.6) + 0.25 ln(0.25/0.3)
    #                         = 0.804719 - 0.218867 - 0.045580 = 0.540271
    assert KD(temperature=1.0, member=0)(inputs).item() == pytest.approx(0.540271, abs=1e-5)
    # KL(mean || student) = 0.3 ln(0.3/0.1) + 0.425 ln(0.425/0.6) + 0.275 ln(0.275/0.3)
    #                     = 0.329584 - 0.146557 - 0.023928 = 0.159098
    assert KD(temperature=1.0)(inputs).item() == pytest.approx(0.159098, abs=1e-5)


def test_every_logit_term_can_name_a_member():
    inputs = ensemble_inputs(MEMBER_0.clone())
    assert LogitMSE(member=0)(inputs).item() == pytest.approx(0.0, abs=1e-7)
    # mean squared difference of the logits ln[0.5, 0.25, 0.25] and ln[0.1, 0.6, 0.3]:
    # (ln 5)^2 + (ln 0.41667)^2 + (ln 0.83333)^2 = 2.590290 + 0.766446 + 0.033241 = 3.389977, / 3 = 1.129992
    assert LogitMSE(member=1)(inputs).item() == pytest.approx(1.129992, abs=1e-5)
    assert DKD(temperature=1.0, member=0)(inputs).item() == pytest.approx(0.0, abs=1e-6)
    assert DKD(temperature=1.0, member=1)(inputs).item() > 0.1


def test_hint_reads_its_members_features():
    hint = Hint(student_layer="features.1", teacher_layer="neck", member=1)
    student = {"features.1": torch.full((1, 4), 1.0)}
    hint.build(student, {"neck": torch.zeros(1, 4)})  # equal shapes: identity regressor
    inputs = ensemble_inputs(MEMBER_0)
    inputs.student_features = student
    assert hint(inputs).item() == pytest.approx(4.0)  # (1 - 3)^2 on every element, mean
    hint.member = 0
    assert hint(inputs).item() == pytest.approx(0.0)


def test_a_member_out_of_range_or_missing_is_named():
    with pytest.raises(ValueError, match=r"reads teacher member 2, but this batch has the logits of 2 member"):
        KD(member=2)(ensemble_inputs(MEMBER_0))
    single = LossInputs(student_logits=MEMBER_0, target=torch.zeros(1, dtype=torch.long), teacher_logits=MEMBER_1)
    with pytest.raises(ValueError, match=r"the logits of 0 member"):
        KD(member=0)(single)


@pytest.mark.parametrize("member", [-1, 1.5, "0", True])
def test_member_must_be_an_index(member):
    with pytest.raises(ValueError, match=r"KD: member must be the index of a teacher in teacher\.members"):
        KD(member=member)


def test_ce_takes_no_member():
    with pytest.raises(TypeError):
        CE(member=0)
    assert CE().member is None


def test_check_term_members_names_the_key():
    terms = {"kd": KD(), "kd1": KD(member=1), "hint": Hint(student_layer="a", teacher_layer="b", member=0)}
    check_term_members(terms, 2)  # fits a 2-member ensemble
    with pytest.raises(ValueError, match=r"distill\.losses\.kd1\.member=1 names no member: .* has 1, numbered 0 to 0"):
        check_term_members(terms, 1)
    with pytest.raises(ValueError, match=r"distill\.losses\.kd1\.member=1 reads one member .* single teacher"):
        check_term_members(terms, None)
    with pytest.raises(
        ValueError, match=r"distill\.losses\.h reads teacher layer\(s\) \['b'\].*distill\.losses\.h\.member"
    ):
        check_term_members({"h": Hint(student_layer="a", teacher_layer="b")}, 2)
    check_term_members({"h": Hint(student_layer="a", teacher_layer="b")}, None)  # one teacher: no member needed
