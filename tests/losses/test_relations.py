"""Relation terms (RKD distance and angle, similarity-preserving, PKT): values derived by hand on 3 samples,
features of different widths, gradients, numerical safety, bad input and the configs."""

import math

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from kdlab.config import CONFIG_DIR, compose_config
from kdlab.losses import PKT, LossInputs, RKDAngle, RKDDistance, SimilarityPreserving, build_terms
from kdlab.models import build_net

pytestmark = pytest.mark.unit

TERMS = (RKDDistance, RKDAngle, SimilarityPreserving, PKT)
R = math.sqrt(0.5)  # 1 / sqrt(2) = cos 45 degrees


def batch(student, teacher):
    return LossInputs(
        student_logits=torch.zeros(student.shape[0], 2),
        target=torch.zeros(student.shape[0], dtype=torch.long),
        student_features={"s": student},
        teacher_features={"t": teacher},
    )


def value(term_class, student, teacher):
    term = term_class(student_layer="s", teacher_layer="t")
    return term(batch(torch.tensor(student), torch.tensor(teacher))).item()


def huber(x):
    """Smooth-L1 with delta 1, written out: 0.5 x^2 inside [-1, 1], |x| - 0.5 outside."""
    return 0.5 * x * x if abs(x) < 1 else abs(x) - 0.5


# A 3-4-5 right triangle in 2-D (student) and the unit right isosceles triangle in 3-D (teacher, wider).
STUDENT = [[0.0, 0.0], [3.0, 0.0], [0.0, 4.0]]
TEACHER = [[0.0, 0.0, 0.0], [1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]


def test_rkd_distance_by_hand():
    # Student distances d01 = 3, d02 = 4, d12 = 5; each pair appears twice in the 3 x 3 matrix, so the mean
    # over the 6 off-diagonal entries is (3 + 4 + 5) / 3 = 4: normalised 0.75, 1, 1.25.
    # Teacher distances 1, 1, sqrt 2; mean m = (2 + sqrt 2) / 3: normalised 1/m, 1/m, sqrt 2 / m.
    m = (2 + math.sqrt(2)) / 3
    pairs = [(0.75, 1 / m), (1.0, 1 / m), (1.25, math.sqrt(2) / m)]  # all differences < 1: the quadratic part
    # Smooth-L1 averaged over all 9 entries: 6 off-diagonal (each pair twice), the diagonal 0 - 0.
    expected = 2 * sum(huber(s - t) for s, t in pairs) / 9  # = 0.031331 / 9 = 0.0034812...
    assert value(RKDDistance, STUDENT, TEACHER) == pytest.approx(expected, rel=1e-5)
    assert expected == pytest.approx(0.0034812, abs=1e-7)


def test_rkd_distance_linear_part_and_coincident_teacher_samples():
    # Student on a line at 0, 2, 1: d01 = 2, d02 = 1, d12 = 1, mean 4/3: normalised 1.5, 0.75, 0.75.
    # Teacher samples 0 and 1 coincide: d01 = 0 (clamped to 1e-6, negligible), d02 = d12 = 1, mean 2/3:
    # normalised 0, 1.5, 1.5. Differences 1.5 (linear part: 1.5 - 0.5 = 1), -0.75, -0.75 (0.5 * 0.5625 each).
    expected = 2 * (1.0 + 0.28125 + 0.28125) / 9  # = 0.347222...
    student = [[0.0], [2.0], [1.0]]
    teacher = [[0.0, 5.0], [0.0, 5.0], [1.0, 5.0]]
    assert value(RKDDistance, student, teacher) == pytest.approx(expected, rel=1e-5)


def test_rkd_angle_by_hand():
    # cos of the angle at vertex i between j and k, over all 27 (i, j, k); entries with j or k = i are 0 on both
    # sides, and j = k gives cos 0 = 1 on both sides. What differs: the two orders (j, k), (k, j) at each vertex.
    # Student 3-4-5 triangle: cos 90 = 0 at sample 0, 3/5 at sample 1, 4/5 at sample 2.
    # Teacher right isosceles triangle: cos 90 = 0 at sample 0, cos 45 = R at samples 1 and 2.
    expected = 2 * (huber(0.0) + huber(0.6 - R) + huber(0.8 - R)) / 27  # = 0.020101 / 27 = 0.00074448...
    assert value(RKDAngle, STUDENT, TEACHER) == pytest.approx(expected, rel=1e-5)
    assert expected == pytest.approx(0.00074448, abs=1e-8)


def test_similarity_preserving_by_hand():
    # Student rows [1, 0], [0, 1], [1, 1]: Gram [[1, 0, 1], [0, 1, 1], [1, 1, 2]], row norms sqrt 2, sqrt 2, sqrt 6.
    # Teacher rows: the 3-D unit vectors, Gram = identity, already row-normalised.
    # Squared differences per row: (1 - R)^2 + 0 + R^2, the same for row 1, and 1/6 + 1/6 + (1 - 2/sqrt 6)^2.
    row0 = (1 - R) ** 2 + R**2
    row2 = 1 / 6 + 1 / 6 + (1 - 2 / math.sqrt(6)) ** 2
    expected = (2 * row0 + row2) / 3**2  # squared Frobenius distance / B^2 = 0.170953...
    student = [[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]
    teacher = [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]
    assert value(SimilarityPreserving, student, teacher) == pytest.approx(expected, rel=1e-5)
    assert expected == pytest.approx(0.170953, abs=1e-6)


def test_pkt_by_hand():
    # Student rows [1, 0], [0, 1], [1, 1]: cosines [[1, 0, R], [0, 1, R], [R, R, 1]] -> (cos + 1) / 2 with
    # h = (1 + R) / 2: [[1, 1/2, h], [1/2, 1, h], [h, h, 1]], each row divided by its sum.
    # Teacher: orthogonal unit vectors, cosines = identity -> [[1, 1/2, 1/2], ...] / 2.
    h = (1 + R) / 2
    student_rows = [[1, 0.5, h], [0.5, 1, h], [h, h, 1]]
    teacher_rows = [[1, 0.5, 0.5], [0.5, 1, 0.5], [0.5, 0.5, 1]]
    total = 0.0
    for s_row, t_row in zip(student_rows, teacher_rows, strict=True):
        for s, t in zip(s_row, t_row, strict=True):
            p_s, p_t = s / sum(s_row), t / sum(t_row)
            total += p_t * math.log(p_t / p_s)  # the eps of 1e-7 changes the 7th digit at most
    # Rows 0 and 1 give 0.029079 each, row 2 0.035342: the mean over the 3 x 3 entries, as the authors take it.
    expected = total / 9  # = 0.093500 / 9 = 0.010388...
    student = [[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]
    teacher = [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]
    assert value(PKT, student, teacher) == pytest.approx(expected, rel=1e-5)
    assert expected == pytest.approx(0.010388, abs=1e-6)


@pytest.mark.parametrize("term_class", TERMS)
def test_the_same_relations_in_a_wider_scaled_rotated_space_cost_nothing(term_class):
    # The teacher is the student's features padded into 5 dims, rotated and scaled by 3: distances (once divided
    # by their mean), angles, row-normalised Gram rows and cosines are all unchanged, so each term is 0 although
    # the widths differ; a teacher with other relations costs something.
    torch.manual_seed(1)
    student = torch.randn(6, 3)
    rotation, _ = torch.linalg.qr(torch.randn(5, 5))
    teacher = 3 * torch.cat([student, torch.zeros(6, 2)], dim=1) @ rotation
    term = term_class(student_layer="s", teacher_layer="t")
    assert term(batch(student, teacher)).item() == pytest.approx(0.0, abs=1e-6)
    assert term(batch(student, torch.randn(6, 5))).item() > 1e-4


@pytest.mark.parametrize("term_class", TERMS)
def test_gradients_reach_the_student_not_the_teacher(term_class):
    student = torch.randn(5, 4, requires_grad=True)
    teacher = torch.randn(5, 7, requires_grad=True)
    term_class(student_layer="s", teacher_layer="t")(batch(student, teacher)).backward()
    assert student.grad is not None and student.grad.abs().sum() > 0 and torch.isfinite(student.grad).all()
    assert teacher.grad is None
    assert list(term_class(student_layer="s", teacher_layer="t").parameters()) == []


@pytest.mark.parametrize("term_class", TERMS)
def test_cnn_maps_are_flattened_per_sample(term_class):
    maps = torch.randn(4, 2, 3, 3)
    term = term_class(student_layer="s", teacher_layer="t")
    teacher = torch.randn(4, 5)
    assert term(batch(maps, teacher)).item() == pytest.approx(term(batch(maps.flatten(1), teacher)).item(), rel=1e-6)


@pytest.mark.parametrize("term_class", TERMS)
def test_silent_and_coincident_samples_give_finite_values_and_gradients(term_class):
    # A ReLU layer can output all zeros for a sample, and two samples can coincide: the authors' PKT
    # (x / (|x| + eps)) gives NaN gradients for an all-zero row; every kdlab term stays finite. Teacher samples
    # 0 and 1 point in opposite directions: PKT's p(1 | 0) is 0, and only its eps keeps 0 * log 0 from a NaN.
    student = torch.randn(4, 3)
    student[0] = 0.0
    student[2] = student[1]
    student.requires_grad_(True)
    teacher = torch.randn(4, 6)
    teacher[1] = -2 * teacher[0]
    teacher[3] = 0.0
    loss = term_class(student_layer="s", teacher_layer="t")(batch(student, teacher))
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(student.grad).all()


@pytest.mark.parametrize("term_class", TERMS)
def test_half_precision_features_are_computed_in_float32(term_class):
    torch.manual_seed(2)
    student, teacher = torch.randn(4, 3), torch.randn(4, 6)
    term = term_class(student_layer="s", teacher_layer="t")
    low = term(batch(student.bfloat16(), teacher.bfloat16()))
    assert low.dtype == torch.float32
    exact = term(batch(student.bfloat16().float(), teacher.bfloat16().float()))
    assert low.item() == pytest.approx(exact.item(), rel=1e-6)
    with torch.autocast("cpu", dtype=torch.bfloat16):  # bf16-mixed: would run the products in bf16
        mixed = term(batch(student, teacher))
    assert mixed.dtype == torch.float32
    assert mixed.item() == pytest.approx(term(batch(student, teacher)).item(), rel=1e-6)


@pytest.mark.parametrize("term_class", TERMS)
def test_a_single_sample_has_no_relation_to_learn(term_class):
    student = torch.randn(1, 3, requires_grad=True)
    loss = term_class(student_layer="s", teacher_layer="t")(batch(student, torch.randn(1, 6)))
    assert loss.item() == 0.0
    loss.backward()  # no NaN from a mean over zero pairs, and the graph is intact
    assert torch.equal(student.grad, torch.zeros_like(student))


@pytest.mark.parametrize("term_class", TERMS)
def test_batches_of_different_sizes_are_refused(term_class):
    term = term_class(student_layer="s", teacher_layer="t")
    with pytest.raises(ValueError, match=r"student's 's' has 4 samples but the teacher's 't' has 3"):
        term(batch(torch.randn(4, 3), torch.randn(3, 6)))


@pytest.mark.parametrize("term_class", TERMS)
def test_missing_feature_names_the_available_ones(term_class):
    term = term_class(student_layer="features.9", teacher_layer="t")
    name = term_class.__name__
    with pytest.raises(ValueError, match=rf"{name}: the student feature 'features\.9' is missing.*'features\.0'"):
        term.build({"features.0": torch.zeros(2, 3)}, {"t": torch.zeros(2, 3)})
    inputs = batch(torch.zeros(2, 3), torch.zeros(2, 3))
    inputs.teacher_features = {}
    with pytest.raises(ValueError, match=rf"{name}: the teacher feature 't' is missing.*available: none"):
        term_class(student_layer="s", teacher_layer="t")(inputs)


@pytest.mark.parametrize("term_class", TERMS)
@pytest.mark.parametrize("name", ["", None, 3])
def test_bad_layer_name_is_rejected(term_class, name):
    with pytest.raises(ValueError, match=f"{term_class.__name__}: student_layer must be the dotted name"):
        term_class(student_layer=name, teacher_layer="t")


@pytest.mark.parametrize(
    ("config", "term_class", "weight"),
    [("rkd_distance", RKDDistance, 25.0), ("rkd_angle", RKDAngle, 50.0), ("sp", SimilarityPreserving, 3000.0),
     ("pkt", PKT, 30000.0)],
)  # fmt: skip
def test_configs_carry_the_authors_weights(config, term_class, weight):
    term = instantiate(OmegaConf.load(CONFIG_DIR / "loss" / f"{config}.yaml"))
    assert type(term) is term_class and term.weight == weight
    assert term.student_layers == ("features.1",) and term.teacher_layers == ("features.1",)
    assert f"weight={weight}" in repr(term) and "student_layer='features.1'" in repr(term)


@pytest.mark.parametrize(
    ("preset", "weights"),
    [("rkd", {"ce": 1.0, "rkd_distance": 25.0, "rkd_angle": 50.0}), ("sp", {"ce": 1.0, "sp": 3000.0}),
     ("pkt", {"ce": 1.0, "pkt": 30000.0})],
)  # fmt: skip
@pytest.mark.heavy
def test_presets_relate_the_penultimate_layers_of_the_mlp_pair(preset, weights, tmp_path):
    # RepDistiller's recipe: cross-entropy at 1, no logit KD, the relation term(s) at the authors' weight(s), on
    # the student's 128-wide and the teacher's 256-wide last hidden layers (the MLP 256-128 and 512-256).
    cfg = compose_config(["experiment=distill_mlp", f"distill={preset}", f"paths.root_dir={tmp_path}"])
    terms = build_terms(cfg.distill.losses)
    assert {name: term.weight for name, term in terms.items()} == weights
    student = build_net(cfg.model, cfg.data.input_shape, len(cfg.data.classes))
    teacher = build_net(cfg.teacher.model, cfg.data.input_shape, len(cfg.data.classes))
    for term in (t for t in terms.values() if t.student_layers):
        (student_layer,), (teacher_layer,) = term.student_layers, term.teacher_layers
        assert dict(student.named_modules())[student_layer][0].out_features == 128
        assert dict(teacher.named_modules())[teacher_layer][0].out_features == 256
        assert student_layer == f"features.{len(student.features) - 1}"  # the last hidden block: penultimate
        assert teacher_layer == f"features.{len(teacher.features) - 1}"


@pytest.mark.heavy
@pytest.mark.parametrize("term_class", TERMS)
def test_an_evaluation_batch_is_related_in_training_sized_chunks(term_class):
    """Validation and test batches (1000 on MNIST) would cost RKD angle B^3 floats (4 GB a side): in eval mode
    a batch is related in chunks of EVAL_CHUNK samples, weighted by size; a lone last sample has no pair."""
    from kdlab.losses.relations import EVAL_CHUNK

    torch.manual_seed(0)
    n = 2 * EVAL_CHUNK + 1  # two whole chunks and one lone sample
    student, teacher = torch.randn(n, 3), torch.randn(n, 5)
    term = term_class(student_layer="s", teacher_layer="t")
    first, second = (term(batch(student[i : i + EVAL_CHUNK], teacher[i : i + EVAL_CHUNK])) for i in (0, EVAL_CHUNK))
    whole = term(batch(student, teacher))  # training mode: one relation over the whole batch
    term.eval()
    chunked = term(batch(student, teacher))
    assert chunked.item() == pytest.approx((first.item() + second.item()) / 2, rel=1e-6)
    assert chunked.item() != pytest.approx(whole.item(), rel=1e-6)
