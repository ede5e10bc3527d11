"""DIST, logit-standardised KD and NKD against values worked out by hand on 1-2 samples of 3 classes."""

import math

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from kdlab.config import CONFIG_DIR, ConfigError, compose_config
from kdlab.losses import DIST, NKD, LogitStandardKD, LossInputs, LossTerm, build_terms
from kdlab.losses.numerics import check_numerics

pytestmark = pytest.mark.unit


def inputs(student, teacher, target=None):
    student = torch.as_tensor(student, dtype=torch.float32)
    target = [0] * student.shape[0] if target is None else target
    return LossInputs(student, torch.as_tensor(target), torch.as_tensor(teacher, dtype=torch.float32))


def log_probs(*rows):
    """Logits whose softmax at T=1 is exactly the given probability rows."""
    return torch.log(torch.tensor(rows, dtype=torch.float64)).float()


# --- DIST -----------------------------------------------------------------------------------------

# Student rows q1 = [0.5, 0.25, 0.25], q2 = [0.25, 0.25, 0.5]; teacher p1 = q1, p2 = [0.25, 0.5, 0.25].
# inter (rows): row 1 is identical, corr 1. Row 2 centred (mean 1/3): q2 - 1/3 = [-1/12, -1/12, 2/12],
#   p2 - 1/3 = [-1/12, 2/12, -1/12]; dot = (1 - 2 - 2) / 144 = -3/144, norms sqrt(6)/12 each, product 6/144,
#   corr = -3/6 = -0.5. inter = 1 - (1 - 0.5) / 2 = 0.75.
# intra (columns over the 2 samples): class 0 student (0.5, 0.25), teacher (0.5, 0.25): corr 1; class 1 student
#   (0.25, 0.25) is constant and class 2 teacher (0.25, 0.25) is constant: corr 0 (the authors' eps convention).
#   intra = 1 - (1 + 0 + 0) / 3 = 2/3.
DIST_STUDENT = [[0.5, 0.25, 0.25], [0.25, 0.25, 0.5]]
DIST_TEACHER = [[0.5, 0.25, 0.25], [0.25, 0.5, 0.25]]
INTER, INTRA = 0.75, 2 / 3


def test_dist_hand_inter_and_intra():
    inter, intra = DIST(temperature=1.0).parts(inputs(log_probs(*DIST_STUDENT), log_probs(*DIST_TEACHER)))
    assert inter.item() == pytest.approx(INTER, abs=1e-6)
    assert intra.item() == pytest.approx(INTRA, abs=1e-6)


def test_dist_beta_gamma_weighting_is_linear():
    batch = inputs(log_probs(*DIST_STUDENT), log_probs(*DIST_TEACHER))
    for beta, gamma in [(1.0, 1.0), (1.0, 0.0), (0.0, 1.0), (2.0, 0.5)]:
        loss = DIST(beta=beta, gamma=gamma, temperature=1.0)(batch)
        assert loss.item() == pytest.approx(beta * INTER + gamma * INTRA, abs=1e-6)  # 1.416667 at beta = gamma = 1


def test_dist_t_squared_scaling():
    # Logits 2 ln p softened by T = 2 give p again, so both parts are T^2 = 4 times the T = 1 values.
    batch = inputs(2 * log_probs(*DIST_STUDENT), 2 * log_probs(*DIST_TEACHER))
    assert DIST(temperature=2.0)(batch).item() == pytest.approx(4 * (INTER + INTRA), abs=1e-5)


def test_dist_ignores_shift_and_scale_of_the_probabilities_but_not_their_ranking():
    # Pearson correlation: student probabilities 0.5 p + 1/6 (rows still sum to 1) are an affine map of the
    # teacher's along every row and every column, so both relations are perfect and the term is 0.
    probs = torch.tensor([[0.7, 0.2, 0.1], [0.1, 0.3, 0.6], [0.3, 0.4, 0.3]], dtype=torch.float64)
    teacher, student = probs.log().float(), (0.5 * probs + 1 / 6).log().float()
    assert DIST(temperature=1.0)(inputs(student, teacher)).item() == pytest.approx(0.0, abs=1e-5)
    assert DIST(temperature=1.0)(inputs(student.flip(1), teacher)).item() > 1.0  # the classes' ranking reversed


def test_dist_one_sample_batch_is_inter_only():
    # One sample: every column is constant, correlates 0, so intra is the constant 1 (times T^2) with no gradient.
    student = log_probs([0.25, 0.25, 0.5]).requires_grad_(True)
    teacher = log_probs([0.25, 0.5, 0.25])
    inter, intra = DIST(temperature=1.0).parts(LossInputs(student, torch.tensor([0]), teacher))
    assert inter.item() == pytest.approx(1 - (-0.5), abs=1e-6)  # corr -0.5, as row 2 above
    assert intra.item() == pytest.approx(1.0, abs=1e-6)
    (grad,) = torch.autograd.grad(intra, student)
    assert torch.isfinite(grad).all() and grad.abs().max() == 0


def test_dist_refuses_both_relations_switched_off():
    with pytest.raises(ValueError, match=r"DIST: beta and gamma are both 0.*weight to 0"):
        DIST(beta=0.0, gamma=0.0)


# --- logit-standardised KD ------------------------------------------------------------------------

# Student [1, 2, 3]: mean 2, unbiased std sqrt((1 + 0 + 1) / 2) = 1 -> z_s = [-1, 0, 1].
# Teacher [0, 0, 6]: mean 2, deviations [-2, -2, 4], unbiased std sqrt((4 + 4 + 16) / 2) = sqrt(12) = 2 sqrt(3)
#   -> z_t = [-1/sqrt3, -1/sqrt3, 2/sqrt3] = [-0.577350, -0.577350, 1.154701].
# T = 1: q = softmax(z_s) = [0.090031, 0.244728, 0.665241]; p = softmax(z_t) = [0.130681, 0.130681, 0.738638].
#   KL(p || q) = 0.130681 ln(1.451511) + 0.130681 ln(0.533985) + 0.738638 ln(1.110331)
#              = 0.048694 - 0.081990 + 0.077306 = 0.044010.
# T = 2: q = softmax(z_s / 2) = [0.186324, 0.307196, 0.506480]; p = [0.228444, 0.228444, 0.543112];
#   KL = 0.228444 ln(1.226055) + 0.228444 ln(0.743643) + 0.543112 ln(1.072327) = 0.016820; T^2 KL = 0.067279.
LS_STUDENT, LS_TEACHER = [[1.0, 2.0, 3.0]], [[0.0, 0.0, 6.0]]


def test_logit_standard_kd_hand_values():
    assert LogitStandardKD(temperature=1.0)(inputs(LS_STUDENT, LS_TEACHER)).item() == pytest.approx(0.044010, abs=1e-6)
    assert LogitStandardKD(temperature=2.0)(inputs(LS_STUDENT, LS_TEACHER)).item() == pytest.approx(0.067279, abs=1e-6)


def test_logit_standard_kd_uses_the_unbiased_std():
    # With the biased (n) std, z_s = [-sqrt1.5, 0, sqrt1.5], z_t = [-1/sqrt2, -1/sqrt2, sqrt2]: KL = 0.052340.
    value = LogitStandardKD(temperature=1.0)(inputs(LS_STUDENT, LS_TEACHER)).item()
    assert value != pytest.approx(0.052340, abs=1e-4)


def test_logit_standard_kd_ignores_each_rows_shift_and_scale():
    # The z-score removes each sample's mean and scale: only the relations between logits are distilled.
    shifted = inputs([[10.0, 20.0, 30.0], [-3.0, -2.0, -1.0]], [[5.0, 5.0, 65.0], [0.0, 0.0, 0.6]])
    assert LogitStandardKD(temperature=1.0)(shifted).item() == pytest.approx(0.044010, abs=1e-6)


def test_logit_standard_kd_constant_logits_stay_finite():
    student = torch.zeros(2, 3, requires_grad=True)
    loss = LogitStandardKD(temperature=1.0)(LossInputs(student, torch.tensor([0, 1]), torch.zeros(2, 3)))
    loss.backward()
    assert loss.item() == pytest.approx(0.0, abs=1e-7) and torch.isfinite(student.grad).all()


# --- NKD ------------------------------------------------------------------------------------------

# Target class 0; teacher p = [0.5, 0.25, 0.25], student q = [0.25, 0.25, 0.5].
# target part = -p_0 ln q_0 = -0.5 ln 0.25 = 0.5 ln 4 = 0.693147.
# non-target: teacher over classes 1, 2 = [0.5, 0.5], student = [1/3, 2/3];
#   cross-entropy = -(0.5 ln(1/3) + 0.5 ln(2/3)) = 0.5 (1.098612 + 0.405465) = 0.752039; gamma 1.5 -> 1.128058.
NKD_TEACHER, NKD_STUDENT = [0.5, 0.25, 0.25], [0.25, 0.25, 0.5]
NKD_TARGET, NKD_NON_TARGET = 0.693147, 0.752039


def test_nkd_hand_parts_and_total():
    batch = inputs(log_probs(NKD_STUDENT), log_probs(NKD_TEACHER), [0])
    target, non_target = NKD(temperature=1.0).parts(batch)
    assert target.item() == pytest.approx(NKD_TARGET, abs=1e-6)
    assert non_target.item() == pytest.approx(NKD_NON_TARGET, abs=1e-6)
    assert NKD(gamma=1.5, temperature=1.0)(batch).item() == pytest.approx(0.693147 + 1.128058, abs=1e-5)


def test_nkd_temperature_softens_the_non_target_part_only():
    # Logits 2 ln p: softened by T = 2 the non-target split is [0.5, 0.5] vs [1/3, 2/3] again, T^2 = 4 times
    # 0.752039. The target part stays at T = 1: p = softmax(2 ln p) = p^2 / sum = [0.25, 1/16, 1/16] / 0.375
    # = [2/3, 1/6, 1/6], q = [1/6, 1/6, 2/3]: -2/3 ln(1/6) = 2/3 * 1.791759 = 1.194506.
    batch = inputs(2 * log_probs(NKD_STUDENT), 2 * log_probs(NKD_TEACHER), [0])
    target, non_target = NKD(temperature=2.0).parts(batch)
    assert target.item() == pytest.approx(1.194506, abs=1e-5)
    assert non_target.item() == pytest.approx(4 * NKD_NON_TARGET, abs=1e-5)


def test_nkd_reads_the_label_per_sample():
    # Sample 2's label is class 2 (q = 0.5 there, p = 0.25): target part -0.25 ln 0.5 = 0.173287;
    # non-target teacher [0.5, 0.25] / 0.75 = [2/3, 1/3], student [0.25, 0.25] / 0.5 = [1/2, 1/2]: ln 2 = 0.693147.
    # Means over the two samples: target (0.693147 + 0.173287) / 2, non-target (0.752039 + 0.693147) / 2.
    batch = inputs(log_probs(NKD_STUDENT, NKD_STUDENT), log_probs(NKD_TEACHER, NKD_TEACHER), [0, 2])
    target, non_target = NKD(temperature=1.0).parts(batch)
    assert target.item() == pytest.approx((0.693147 + 0.173287) / 2, abs=1e-5)
    assert non_target.item() == pytest.approx((0.752039 + 0.693147) / 2, abs=1e-5)


def test_nkd_stays_finite_for_a_saturated_teacher():
    student = torch.zeros(2, 10, requires_grad=True)
    teacher = torch.zeros(2, 10)
    teacher[:, 0] = 200.0
    loss = NKD(temperature=1.0)(LossInputs(student, torch.tensor([0, 3]), teacher))
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(student.grad).all()


# --- shared ---------------------------------------------------------------------------------------

TERMS = [DIST, LogitStandardKD, NKD]


@pytest.mark.parametrize("cls", TERMS)
def test_gradient_reaches_student_only(cls):
    student = torch.randn(3, 5, generator=torch.Generator().manual_seed(1), requires_grad=True)
    teacher = torch.randn(3, 5, generator=torch.Generator().manual_seed(2), requires_grad=True)
    cls()(LossInputs(student, torch.tensor([0, 1, 4]), teacher)).backward()
    assert student.grad is not None and student.grad.abs().sum() > 0
    assert teacher.grad is None


@pytest.mark.parametrize("cls", TERMS)
def test_teacher_is_required(cls):
    assert cls.needs_teacher is True
    with pytest.raises(ValueError, match="teacher_logits is None"):
        cls()(LossInputs(torch.zeros(1, 3), torch.tensor([0])))


@pytest.mark.parametrize("cls", TERMS)
@pytest.mark.parametrize("temperature", [0.0, -1.0, float("nan"), float("inf")])
def test_bad_temperature_is_rejected(cls, temperature):
    with pytest.raises(ValueError, match=r"temperature must be a finite number > 0.*distill\.temperature"):
        cls(temperature=temperature)


@pytest.mark.parametrize(("cls", "key"), [(DIST, "beta"), (DIST, "gamma"), (NKD, "gamma")])
@pytest.mark.parametrize("value", [-1.0, float("nan"), "1"])
def test_bad_relation_weights_are_rejected(cls, key, value):
    with pytest.raises(ValueError, match=rf"{cls.__name__}: {key} must be a finite number >= 0"):
        cls(**{key: value})


@pytest.mark.parametrize("term", [DIST(), LogitStandardKD(), NKD()], ids=lambda t: type(t).__name__)
def test_default_settings_pass_the_float32_check(term):
    check_numerics("x", term, num_classes=10, members=None)


@pytest.mark.parametrize(
    ("term", "why"),
    [
        (DIST(temperature=0.01), "no longer depends on the teacher"),  # one-hot probabilities: any two teachers alike
        (LogitStandardKD(temperature=1e9), "underflows"),
        (NKD(temperature=1e5), "no longer depends on the teacher"),
    ],
    ids=lambda value: type(value).__name__ if isinstance(value, LossTerm) else "",
)
@pytest.mark.heavy
def test_degenerate_temperatures_are_refused(term, why):
    with pytest.raises(ConfigError, match=rf"distill\.losses\.x would train on nothing: it {why}.*temperature="):
        check_numerics("x", term, num_classes=10, members=None)


# --- configs --------------------------------------------------------------------------------------


def load(name, temperature):
    loss = OmegaConf.load(CONFIG_DIR / "loss" / f"{name}.yaml")
    return instantiate(OmegaConf.create({"distill": {"temperature": temperature}, "loss": loss}).loss)


def test_loss_configs_read_distill_temperature():
    dist = load("dist", 3.0)
    assert type(dist) is DIST and (dist.weight, dist.beta, dist.gamma, dist.temperature) == (2.0, 1.0, 1.0, 3.0)
    ls = load("logit_standard_kd", 5.0)
    assert type(ls) is LogitStandardKD and (ls.weight, ls.temperature) == (9.0, 5.0)
    nkd = load("nkd", 2.0)
    assert type(nkd) is NKD and (nkd.weight, nkd.gamma, nkd.temperature) == (1.0, 1.5, 2.0)


@pytest.mark.parametrize(
    ("preset", "expected"),
    [
        ("dist", {"ce": (1.0, None), "dist": (2.0, 4.0)}),
        ("logit_standard_kd", {"ce": (0.1, None), "logit_standard_kd": (9.0, 2.0)}),
        ("nkd", {"ce": (1.0, None), "nkd": (1.0, 1.0)}),
    ],
)
@pytest.mark.heavy
def test_presets_carry_the_authors_weights(preset, expected, tmp_path):
    cfg = compose_config(["experiment=distill_mlp", f"distill={preset}", f"paths.root_dir={tmp_path}"])
    terms = build_terms(cfg.distill.losses)
    assert {name: (t.weight, getattr(t, "temperature", None)) for name, t in terms.items()} == expected
    assert math.isclose(cfg.distill.temperature, expected[preset][1])
