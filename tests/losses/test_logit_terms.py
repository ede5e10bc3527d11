"""CE, KD, LogitMSE and DKD against values worked out by hand (formulas written out, not re-derived)."""

import math

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from kdlab.config import CONFIG_DIR
from kdlab.losses import CE, DKD, KD, LogitMSE, LossInputs, LossTerm
from kdlab.losses.logits import kd_divergence

pytestmark = pytest.mark.unit

CONF = CONFIG_DIR / "loss"

# The reference article, section 4.3: five 3-d features, the teacher's each 0.1 larger.
ARTICLE_STUDENT = torch.arange(1.0, 16.0).reshape(5, 3)  # rows [1,2,3], [4,5,6], ..., [13,14,15]
ARTICLE_TEACHER = ARTICLE_STUDENT + 0.1


def inputs(student, teacher=None, target=None):
    student = torch.as_tensor(student, dtype=torch.float32)
    if teacher is not None:
        teacher = torch.as_tensor(teacher, dtype=torch.float32)
    if target is None:
        target = torch.zeros(student.shape[0], dtype=torch.long)
    return LossInputs(student_logits=student, target=torch.as_tensor(target), teacher_logits=teacher)


def log_probs(*rows):
    """Logits whose softmax at T=1 is exactly the given probability rows."""
    return torch.log(torch.tensor(rows, dtype=torch.float64)).float()


# --- CE -------------------------------------------------------------------------------------------


def test_ce_article_label_example():
    # Article 4.3: p_s = [0.8, 0.1, 0.1] for 5 samples of class 0 -> L = -5 log 0.8 = 1.1157.
    logits = log_probs(*[[0.8, 0.1, 0.1]] * 5)
    term = CE()
    loss = term(inputs(logits, target=[0] * 5))  # CE is a mean over samples; the article sums
    assert 5 * loss.item() == pytest.approx(-5 * math.log(0.8), abs=1e-6)
    assert 5 * loss.item() == pytest.approx(1.1157, abs=1e-4)
    assert term.needs_teacher is False


def test_ce_label_smoothing_hand_value():
    # eps = 0.3 over 3 classes: target mass [0.7 + 0.1, 0.1, 0.1] = [0.8, 0.1, 0.1];
    # with p = [0.8, 0.1, 0.1]: -(0.8 log 0.8 + 0.1 log 0.1 + 0.1 log 0.1) = 0.178515 + 0.460517 = 0.639032.
    loss = CE(label_smoothing=0.3)(inputs(log_probs([0.8, 0.1, 0.1]), target=[0]))
    assert loss.item() == pytest.approx(0.639032, abs=1e-5)


# --- KD -------------------------------------------------------------------------------------------


def test_kd_zero_when_student_equals_teacher():
    logits = torch.randn(4, 10, generator=torch.Generator().manual_seed(0))
    assert KD(temperature=4.0)(inputs(logits, logits.clone())).item() == pytest.approx(0.0, abs=1e-6)


def test_kd_hand_value_at_t1():
    # student [0, 0] -> q = [0.5, 0.5]; teacher [ln 3, 0] -> p = [0.75, 0.25].
    # KL(p || q) = 0.75 ln(0.75/0.5) + 0.25 ln(0.25/0.5) = 0.304099 - 0.173287 = 0.130812; T^2 = 1.
    loss = KD(temperature=1.0)(inputs([[0.0, 0.0]], [[math.log(3.0), 0.0]]))
    assert loss.item() == pytest.approx(0.130812, abs=1e-5)


def test_kd_hand_value_at_t2_includes_t_squared():
    # T = 2, teacher [ln 3, 0] -> teacher/T = [ln sqrt3, 0] -> p = [sqrt3/(1+sqrt3), 1/(1+sqrt3)]
    #   = [0.633975, 0.366025]; student stays q = [0.5, 0.5].
    # KL = 0.633975 ln(1.267949) + 0.366025 ln(0.732051) = 0.150506 - 0.114165 = 0.036341,
    # and the term is T^2 * KL = 4 * 0.036341 = 0.145363.
    loss = KD(temperature=2.0)(inputs([[0.0, 0.0]], [[math.log(3.0), 0.0]]))
    assert loss.item() == pytest.approx(4 * 0.036341, abs=1e-5)
    # Teacher [2 ln 3, 0] softened by T = 2 is p = [0.75, 0.25] again: 4 times the T = 1 value.
    loss = KD(temperature=2.0)(inputs([[0.0, 0.0]], [[2 * math.log(3.0), 0.0]]))
    assert loss.item() == pytest.approx(4 * 0.130812, abs=1e-5)


def test_kd_is_a_mean_over_samples():
    # Repeating the sample must not change a batch mean (a sum would double it).
    one = KD(temperature=1.0)(inputs([[0.0, 0.0]], [[math.log(3.0), 0.0]]))
    two = KD(temperature=1.0)(inputs([[0.0, 0.0]] * 2, [[math.log(3.0), 0.0]] * 2))
    assert two.item() == pytest.approx(one.item(), abs=1e-6)


def test_kd_divergence_sums_classes_and_averages_samples():
    # The one KD formula the term, the fp16 gate of the output cache and the benchmark's plain loop share.
    # F.kl_div(s, t, "batchmean") passes "batchmean" as size_average, a mean over all elements: 0.0654 here.
    student, teacher = torch.tensor([[0.0, 0.0]] * 3), torch.tensor([[math.log(3.0), 0.0]] * 3)
    assert kd_divergence(student, teacher, 1.0).item() == pytest.approx(0.130812, abs=1e-5)
    assert kd_divergence(student, 2 * teacher, 2.0).item() == pytest.approx(4 * 0.130812, abs=1e-5)


def test_kd_gradient_reaches_student_only():
    student = torch.randn(3, 5, generator=torch.Generator().manual_seed(1), requires_grad=True)
    teacher = torch.randn(3, 5, generator=torch.Generator().manual_seed(2), requires_grad=True)
    loss = KD()(LossInputs(student_logits=student, target=torch.zeros(3, dtype=torch.long), teacher_logits=teacher))
    loss.backward()
    assert student.grad is not None and student.grad.abs().sum() > 0
    assert teacher.grad is None


# --- LogitMSE -------------------------------------------------------------------------------------


def test_logit_mse_hand_values():
    # errors [1, 0, 0, -2] -> squares [1, 0, 0, 4]: sum 5, half_sum 2.5, mean 5/4 = 1.25.
    batch = inputs([[1.0, 2.0], [3.0, 4.0]], [[0.0, 2.0], [3.0, 6.0]])
    assert LogitMSE()(batch).item() == pytest.approx(1.25)
    assert LogitMSE(reduction="sum")(batch).item() == pytest.approx(5.0)
    assert LogitMSE(reduction="half_sum")(batch).item() == pytest.approx(2.5)


def test_logit_mse_article_feature_example():
    # Article 4.3: 1/2 * 15 * 0.1^2 = 0.075; nn.MSELoss (the article's code) gives 0.15 / 15 = 0.01.
    batch = inputs(ARTICLE_STUDENT, ARTICLE_TEACHER)
    assert LogitMSE(reduction="half_sum")(batch).item() == pytest.approx(0.075, abs=1e-5)
    assert LogitMSE()(batch).item() == pytest.approx(0.01, abs=1e-6)


def test_logit_mse_gradient_reaches_student_only():
    student = torch.tensor([[1.0, 2.0]], requires_grad=True)
    teacher = torch.tensor([[0.0, 2.0]], requires_grad=True)
    LogitMSE(reduction="sum")(LossInputs(student, torch.tensor([0]), teacher)).backward()
    assert student.grad.tolist() == [[2.0, 0.0]]  # d/ds (s - t)^2 = 2 (s - t)
    assert teacher.grad is None


def test_terms_that_need_the_teacher_say_so_when_it_is_missing():
    for term in (KD(), LogitMSE(), DKD()):
        assert term.needs_teacher is True
        with pytest.raises(ValueError, match="teacher_logits is None"):
            term(inputs([[0.0, 1.0]]))


# --- DKD ------------------------------------------------------------------------------------------

# Target class 0; teacher p = [0.5, 0.25, 0.25], student q = [0.25, 0.25, 0.5].
# TCKD: KL([0.5, 0.5] || [0.25, 0.75]) = 0.5 ln 2 + 0.5 ln(2/3) = 0.5 ln(4/3) = 0.143841.
# NCKD: non-target teacher [0.5, 0.5], student [1/3, 2/3]:
#       0.5 ln 1.5 + 0.5 ln 0.75 = 0.5 ln 1.125 = 0.058892.
DKD_TEACHER = [0.5, 0.25, 0.25]
DKD_STUDENT = [0.25, 0.25, 0.5]
TCKD, NCKD = 0.143841, 0.058892


def test_dkd_zero_when_student_equals_teacher():
    gen = torch.Generator().manual_seed(3)
    logits = torch.randn(6, 10, generator=gen)
    target = torch.randint(0, 10, (6,), generator=gen)
    assert DKD()(inputs(logits, logits.clone(), target)).item() == pytest.approx(0.0, abs=1e-6)


def test_dkd_hand_tckd_and_nckd():
    batch = inputs(log_probs(DKD_STUDENT), log_probs(DKD_TEACHER), [0])
    tckd, nckd = DKD(temperature=1.0).parts(batch)
    assert tckd.item() == pytest.approx(TCKD, abs=1e-5)
    assert nckd.item() == pytest.approx(NCKD, abs=1e-5)


def test_dkd_alpha_beta_weighting_is_linear():
    batch = inputs(log_probs(DKD_STUDENT), log_probs(DKD_TEACHER), [0])
    for alpha, beta in [(1.0, 0.0), (0.0, 1.0), (1.0, 8.0), (2.5, 3.0)]:
        loss = DKD(alpha=alpha, beta=beta, temperature=1.0)(batch)
        assert loss.item() == pytest.approx(alpha * TCKD + beta * NCKD, abs=1e-5)


def test_dkd_t_squared_scaling():
    # Logits 2 ln p softened by T = 2 give p again, so both parts are 4 times the T = 1 values.
    batch = inputs(2 * log_probs(DKD_STUDENT), 2 * log_probs(DKD_TEACHER), [0])
    tckd, nckd = DKD(temperature=2.0).parts(batch)
    assert tckd.item() == pytest.approx(4 * TCKD, abs=1e-5)
    assert nckd.item() == pytest.approx(4 * NCKD, abs=1e-5)


def test_dkd_decouples_target_from_non_target():
    # Same target probability 0.5, different non-target split: TCKD = 0 and
    # NCKD = KL([0.5, 0.5] || [0.2, 0.8]) = 0.5 ln 2.5 + 0.5 ln 0.625 = 0.458145 - 0.235002 = 0.223144.
    batch = inputs(log_probs([0.5, 0.1, 0.4]), log_probs(DKD_TEACHER), [0])
    tckd, nckd = DKD(temperature=1.0).parts(batch)
    assert tckd.item() == pytest.approx(0.0, abs=1e-6)
    assert nckd.item() == pytest.approx(0.223144, abs=1e-5)


def test_dkd_stays_finite_for_a_saturated_teacher():
    # softmax underflows to exactly 0 / 1 here; a log of probabilities would give inf or nan.
    student = torch.zeros(2, 10, requires_grad=True)
    teacher = torch.zeros(2, 10)
    teacher[:, 0] = 200.0
    loss = DKD(temperature=1.0)(LossInputs(student, torch.tensor([0, 0]), teacher))
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(student.grad).all()


# --- config validation ----------------------------------------------------------------------------

LOGIT_TERMS = [CE, KD, LogitMSE, DKD]


@pytest.mark.parametrize("cls", LOGIT_TERMS)
@pytest.mark.parametrize("weight", [-0.1, float("nan"), float("inf"), "1.0", True])
def test_bad_weight_is_rejected(cls, weight):
    with pytest.raises(ValueError, match=rf"{cls.__name__}: weight must be a finite number >= 0"):
        cls(weight=weight)


@pytest.mark.parametrize("cls", LOGIT_TERMS)
def test_zero_and_int_weights_are_accepted(cls):
    assert cls(weight=0).weight == 0.0
    assert cls(weight=2).weight == 2.0


@pytest.mark.parametrize("cls", [KD, DKD])
@pytest.mark.parametrize("temperature", [0.0, -1.0, float("nan"), float("inf")])
def test_bad_temperature_is_rejected(cls, temperature):
    with pytest.raises(ValueError, match=r"temperature must be a finite number > 0.*distill\.temperature"):
        cls(temperature=temperature)


@pytest.mark.parametrize(("key", "value"), [("alpha", -1.0), ("beta", float("nan"))])
def test_bad_dkd_weights_are_rejected(key, value):
    with pytest.raises(ValueError, match=rf"DKD: {key} must be a finite number >= 0"):
        DKD(**{key: value})


@pytest.mark.parametrize("value", [-0.1, 1.5])
def test_bad_label_smoothing_is_rejected(value):
    with pytest.raises(ValueError, match="label_smoothing"):
        CE(label_smoothing=value)


def test_unknown_reduction_is_rejected():
    with pytest.raises(ValueError, match=r"LogitMSE: reduction must be one of 'mean', 'half_sum', 'sum'"):
        LogitMSE(reduction="avg")


def test_base_class_cannot_be_used_alone():
    with pytest.raises(TypeError):
        LossTerm()


# --- configs --------------------------------------------------------------------------------------


def load(name, temperature=2.0):
    cfg = OmegaConf.create({"distill": {"temperature": temperature}, "loss": OmegaConf.load(CONF / name)})
    return instantiate(cfg.loss)


def test_ce_config():
    term = load("ce.yaml")
    assert type(term) is CE and term.weight == 1.0 and term.label_smoothing == 0.0


def test_kd_config_reads_distill_temperature():
    term = load("kd.yaml", temperature=2.0)
    assert type(term) is KD and term.weight == 0.9 and term.temperature == 2.0
    assert load("kd.yaml", temperature=6.0).temperature == 6.0


def test_logit_mse_config():
    term = load("logit_mse.yaml")
    assert type(term) is LogitMSE and term.weight == 1.0 and term.reduction == "mean"


def test_dkd_config_reads_distill_temperature():
    term = load("dkd.yaml", temperature=3.0)
    assert type(term) is DKD
    assert (term.weight, term.alpha, term.beta, term.temperature) == (1.0, 1.0, 8.0, 3.0)
