"""CRD (Tian et al. 2020): a value and bank update derived by hand, the authors' code's numbers on fixed inputs,
the negatives (other classes, seeded, resumable), what validation leaves alone, refusals and the configs.

Reference numbers: HobbitLong/RepDistiller commit b84f547c5db6a35318d4671d7d5c4de74c822403 (crd/ last changed
in 1fb2343fb5a61b37bedacac7630f07e3077d49cd), `CRDLoss` of crd/criterion.py with `ContrastMemory` of
crd/memory.py, run once outside kdlab (torch 2.13, CPU, float32; `AliasMethod.cuda` made a no-op, its sampler
unused as fixed contrast indices are given) with feat_dim 4, nce_k 4, nce_t 0.07, nce_m 0.5, n_data 8. Its
embedding heads' weights, both initial banks and the features are `values()` below; two calls of the criterion
in a row, the second with the banks and Z the first left. Only the printed numbers are kept here.
"""

import math

import pytest
import torch
from omegaconf import OmegaConf

from kdlab.losses import CRD, LossInputs, build_terms

pytestmark = pytest.mark.unit


def values(shape, phase, scale=1.0):
    """Fixed inputs without a random generator: sin(0.37 i + phase) * scale over the elements, in float32."""
    n = torch.Size(shape).numel()
    return (torch.sin(torch.arange(n, dtype=torch.float64) * 0.37 + phase) * scale).float().reshape(shape)


def batch(student, teacher, index=None, target=None):
    return LossInputs(
        student_logits=torch.zeros(len(student), 2),
        target=torch.zeros(len(student), dtype=torch.long) if target is None else target,
        student_features={"s": student},
        teacher_features={"t": teacher},
        index=index,
    )


def crd(student_dim, teacher_dim, labels, **settings):
    """A CRD term built for these widths and set up with this training split, as a Trainer's setup does."""
    term = CRD(student_layer="s", teacher_layer="t", **settings)
    term.build({"s": torch.zeros(2, student_dim)}, {"t": torch.zeros(2, teacher_dim)})
    term.see_training_split(torch.tensor(labels))
    return term


def fixed_negatives(term, negatives):
    """Replace the random draw by the given [B, nce_k] rows (what the authors' loader passes as contrast_idx)."""
    term.draw_negatives = lambda labels, generator: torch.tensor(negatives)


# -- by hand ---------------------------------------------------------------------------------------------------


def test_the_nce_loss_and_the_bank_update_by_hand():
    # One sample (row 0), one negative (row 1), a bank of N = 4 rows, feat_dim 2, T = 1, momentum 0.75; identity
    # heads, so the embeddings are the features: s = [1, 0] (student), t = [0, 1] (teacher).
    term = crd(2, 2, [0, 1, 0, 1], feat_dim=2, nce_k=1, nce_t=1.0, nce_m=0.75)
    with torch.no_grad():
        for head in (term.embed_student, term.embed_teacher):
            head.weight.copy_(torch.eye(2))
            head.bias.zero_()
        term.teacher_bank.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 1.0], [0.0, 1.0]]))
        term.student_bank.copy_(torch.tensor([[0.0, 1.0], [1.0, 0.0], [1.0, 0.0], [1.0, 0.0]]))
    fixed_negatives(term, [[1]])
    loss = term(batch(torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 1.0]]), index=torch.tensor([0])))
    # Student-anchored: s . teacher_bank[0] = 1, s . teacher_bank[1] = 0: exp scores e, 1. Teacher-anchored:
    # t . student_bank[0] = 1, t . student_bank[1] = 0: the same. Z (first batch) = mean(e, 1) x N = 2 (e + 1),
    # so P = e / Z for the positive and 1 / Z for the negative on each side; the noise m Pn = K / N = 1/4.
    z = 2 * (math.e + 1)
    positive, negative, noise = math.e / z, 1 / z, 0.25
    side = -(math.log(positive / (positive + noise + 1e-7)) + math.log(noise / (negative + noise + 1e-7)))
    assert loss.item() == pytest.approx(2 * side, rel=1e-6)
    # Z = 7.4366, P = 0.36553 and 0.13447: -(log(0.36553 / 0.61553) + log(0.25 / 0.38447)) = 0.52114 + 0.43044
    assert 2 * side == pytest.approx(2 * (0.52114 + 0.43044), abs=1e-4)
    assert term.normalisers.tolist() == pytest.approx([z, z], rel=1e-6)
    # Row 0 of each bank keeps 0.75 of itself, takes 0.25 of the embedding, and is renormalised:
    # student 0.75 [0, 1] + 0.25 [1, 0] = [0.25, 0.75], |.| = sqrt 0.625; teacher 0.75 [1, 0] + 0.25 [0, 1]
    norm = math.sqrt(0.625)
    assert term.student_bank[0].tolist() == pytest.approx([0.25 / norm, 0.75 / norm], rel=1e-6)
    assert term.teacher_bank[0].tolist() == pytest.approx([0.75 / norm, 0.25 / norm], rel=1e-6)
    assert term.student_bank[1:].tolist() == [[1.0, 0.0]] * 3  # no other row is written


# -- against the authors' code ---------------------------------------------------------------------------------

STEPS = [  # (student features phase, teacher features phase, index, contrast rows: the positive, then nce_k negatives)
    (1.0, 1.1, [1, 4, 6], [[1, 0, 2, 2, 7], [4, 3, 5, 0, 1], [6, 7, 0, 3, 2]]),
    (2.0, 2.1, [0, 4, 7], [[0, 5, 6, 1, 3], [4, 2, 2, 6, 7], [7, 1, 4, 5, 0]]),
]
REFERENCE_LOSS = [8.003711700439453, 16.486909866333008]  # CRDLoss(opt)(f_s, f_t, idx, contrast_idx), both calls
REFERENCE_Z = [42.46463394165039, 34.64805221557617]  # contrast.params[2:4] (Z_v1, Z_v2), set by the first call
REFERENCE_GRAD = [  # d loss / d f_s of each call
    [
        [0.007313437759876251, 0.008469047024846077, 0.008478404022753239, 0.007340259850025177, 0.005208645015954971],
        [0.30371180176734924, 0.22192952036857605, 0.11011017858982086, -0.016612142324447632, -0.14108598232269287],
        [-0.09300105273723602, -0.006820857524871826, 0.08028249442577362, 0.15651999413967133, 0.2115732729434967],
    ],
    [
        [-0.15567979216575623, 0.4626240134239197, 1.0183137655258179, 1.4361796379089355, 1.6596652269363403],
        [-0.0622626468539238, -0.039863355457782745, -0.012068739160895348, 0.01735929399728775, 0.044437848031520844],
        [1.5710443258285522, 1.5012761354446411, 1.2283176183700562, 0.7891117930412292, 0.24310344457626343],
    ],
]
REFERENCE_STUDENT_BANK = [  # contrast.memory_v1 after both calls
    [0.34968826174736023, 0.928403913974762, -0.05112728849053383, 0.11476170271635056],
    [0.741005003452301, 0.5424891114234924, -0.39048418402671814, 0.06433746963739395],
    [-0.15652717649936676, -0.317654013633728, -0.4357878863811493, -0.4949398934841156],
    [-0.4871041178703308, -0.41334107518196106, -0.2836342751979828, -0.11553889513015747],
    [-0.5491675138473511, -0.009489882737398148, 0.8356147408485413, -0.008547767996788025],
    [0.49947068095207214, 0.4573526382446289, 0.3533340394496918, 0.20149336755275726],
    [-0.433120995759964, -0.717421293258667, 0.4494859278202057, -0.3093142509460449],
    [0.08695416897535324, -0.7067100405693054, -0.6357883214950562, 0.2979479730129242],
]
REFERENCE_TEACHER_BANK = [  # contrast.memory_v2 after both calls
    [0.1636163592338562, 0.8066446781158447, -0.1438128650188446, 0.5494287014007568],
    [0.792466938495636, 0.2190735638141632, -0.2533116340637207, 0.5097413659095764],
    [-0.2031528502702713, -0.3546156883239746, -0.45808297395706177, -0.49955084919929504],
    [-0.4734068810939789, -0.38318949937820435, -0.241109237074852, -0.06639595329761505],
    [-0.561826229095459, 0.3374907374382019, 0.632742166519165, -0.41241785883903503],
    [0.49467912316322327, 0.4348953366279602, 0.3162505328655243, 0.15480268001556396],
    [0.45122000575065613, -0.8734776973724365, 0.06864649057388306, -0.16948451101779938],
    [0.1372518241405487, -0.703741192817688, -0.5845310091972351, 0.37978124618530273],
]


def test_agrees_with_the_authors_code_over_two_steps():
    term = crd(5, 6, [0, 1, 2, 3, 0, 1, 2, 3], feat_dim=4, nce_k=4)
    with torch.no_grad():  # the inputs the reference run was given
        term.embed_student.weight.copy_(values((4, 5), 0.1))
        term.embed_student.bias.copy_(values((4,), 0.2, 0.1))
        term.embed_teacher.weight.copy_(values((4, 6), 0.3))
        term.embed_teacher.bias.copy_(values((4,), 0.4, 0.1))
        term.student_bank.copy_(values((8, 4), 0.5, 0.5))
        term.teacher_bank.copy_(values((8, 4), 0.6, 0.5))
    for (s_phase, t_phase, index, rows), loss, grad in zip(STEPS, REFERENCE_LOSS, REFERENCE_GRAD, strict=True):
        fixed_negatives(term, [r[1:] for r in rows])
        student = values((3, 5), s_phase).requires_grad_(True)
        value = term(batch(student, values((3, 6), t_phase), index=torch.tensor(index)))
        value.backward()
        assert value.item() == pytest.approx(loss, rel=1e-5)
        assert torch.allclose(student.grad, torch.tensor(grad), rtol=1e-4, atol=1e-6)
        assert term.normalisers.tolist() == pytest.approx(REFERENCE_Z, rel=1e-6)  # set once, by the first step
    assert torch.allclose(term.student_bank, torch.tensor(REFERENCE_STUDENT_BANK), atol=1e-6)
    assert torch.allclose(term.teacher_bank, torch.tensor(REFERENCE_TEACHER_BANK), atol=1e-6)


# -- negatives, state and what validation leaves alone ---------------------------------------------------------

LABELS = [0, 1, 2, 0, 1, 2, 0, 1, 2, 0] * 10  # 100 training samples, 3 classes


def training_batch(term, index):
    torch.manual_seed(1)
    index = torch.tensor(index)
    return batch(torch.randn(len(index), 5), torch.randn(len(index), 6), index=index)


def test_negatives_are_other_classes_drawn_uniformly_and_reproducibly_from_the_seed():
    labels = torch.tensor(LABELS)
    term = crd(5, 6, LABELS, nce_k=3000, seed=7)
    drawn = term.draw_negatives(labels[:3], term.negatives_generator(torch.device("cpu")))
    assert drawn.shape == (3, 3000)
    for row, label in zip(drawn, labels[:3], strict=True):
        assert (labels[row] != label).all()  # never the positive's class
        counts = torch.bincount(row, minlength=100)[labels != label]  # 60 or 70 others: about 3000 / 60 = 50 each
        assert counts.min() > 10 and counts.max() < 100  # every one of them, about as often
    again = crd(5, 6, LABELS, nce_k=3000, seed=7)
    assert torch.equal(again.draw_negatives(labels[:3], again.negatives_generator(torch.device("cpu"))), drawn)


def test_a_held_out_class_absent_from_training_draws_from_every_sample():
    term = crd(5, 6, [0, 1] * 5, nce_k=500)  # labels 0, 1 in training; 2 only in validation
    drawn = term.draw_negatives(torch.tensor([2]), term.negatives_generator(torch.device("cpu")))
    assert set(drawn.flatten().tolist()) == set(range(10))


def test_the_state_dict_carries_banks_z_and_the_negatives_generator_so_a_resumed_term_goes_on_the_same():
    whole = crd(5, 6, LABELS, nce_k=8, seed=3)
    whole(training_batch(whole, [0, 1, 2, 3]))
    saved = {k: v.clone() if torch.is_tensor(v) else v for k, v in whole.state_dict().items()}
    assert {"student_bank", "teacher_bank", "normalisers", "_extra_state"} <= set(saved)
    assert "labels" not in saved and "by_class" not in saved  # the data's, given again at setup
    expected = whole(training_batch(whole, [4, 5, 6, 7]))
    resumed = crd(5, 6, LABELS, nce_k=8, seed=99)  # a fresh term: other heads, banks and seed until loaded
    resumed.load_state_dict(saved)
    assert resumed(training_batch(resumed, [4, 5, 6, 7])).item() == expected.item()
    for key in ("student_bank", "teacher_bank", "normalisers"):
        assert torch.equal(getattr(resumed, key), getattr(whole, key)), key


def test_a_system_loaded_outside_a_fit_takes_the_checkpoints_bank_size_and_another_size_is_refused():
    trained = crd(5, 6, LABELS, nce_k=8)
    trained(training_batch(trained, [0, 1, 2]))
    loaded = CRD(student_layer="s", teacher_layer="t", nce_k=8)
    loaded.build({"s": torch.zeros(2, 5)}, {"t": torch.zeros(2, 6)})
    loaded.load_state_dict(trained.state_dict())  # no see_training_split yet: an empty bank takes the saved size
    assert torch.equal(loaded.student_bank, trained.student_bank)
    loaded.see_training_split(torch.tensor(LABELS))  # then set up with the same split: the loaded bank is kept
    assert torch.equal(loaded.student_bank, trained.student_bank)
    with pytest.raises(ValueError, match="bank has 100 rows, but the training split now has 50"):
        loaded.see_training_split(torch.tensor(LABELS[:50]))


def test_validation_writes_nothing_and_draws_nothing_from_the_training_stream():
    term = crd(5, 6, LABELS, nce_k=16)
    term(training_batch(term, [0, 1, 2]))
    before = {k: v.clone() if torch.is_tensor(v) else v for k, v in term.state_dict().items()}
    generator_state = term.negatives_generator(torch.device("cpu")).get_state()
    torch.manual_seed(2)
    held_out = batch(torch.randn(40, 5), torch.randn(40, 6), target=torch.randint(0, 3, (40,)))
    term.eval()
    first, second = term(held_out), term(held_out)
    assert torch.isfinite(first) and first.item() == second.item()  # the same draws for every held-out batch
    indexed_in_eval = term(training_batch(term, [5, 6]))  # eval mode with indices (a caller's): reads, never writes
    assert torch.isfinite(indexed_in_eval)
    assert torch.equal(term.negatives_generator(torch.device("cpu")).get_state(), generator_state)
    for key, value in term.state_dict().items():
        if torch.is_tensor(value):
            assert torch.equal(value, before[key]), key


def test_the_held_out_loss_before_any_training_uses_its_own_batchs_normaliser():
    term = crd(5, 6, LABELS, nce_k=16).eval()
    torch.manual_seed(2)
    loss = term(batch(torch.randn(8, 5), torch.randn(8, 6), target=torch.randint(0, 3, (8,))))
    assert torch.isfinite(loss) and term.normalisers.tolist() == [-1.0, -1.0]  # Z stays unset: nothing trained


def test_gradients_reach_both_heads_and_the_student_never_the_teacher():
    term = crd(5, 6, LABELS, nce_k=16)
    torch.manual_seed(3)
    student, teacher = torch.randn(4, 5, requires_grad=True), torch.randn(4, 6, requires_grad=True)
    term(batch(student, teacher, index=torch.tensor([0, 1, 2, 3]))).backward()
    assert student.grad.abs().sum() > 0 and teacher.grad is None
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in term.parameters())
    assert len(list(term.parameters())) == 4  # the two heads' weights and biases: trained with the student


# -- refusals ----------------------------------------------------------------------------------------------------


def test_no_training_split_is_refused_at_setup_and_a_term_never_set_up_says_so():
    term = CRD(student_layer="s", teacher_layer="t")
    term.build({"s": torch.zeros(2, 5)}, {"t": torch.zeros(2, 6)})
    with pytest.raises(ValueError, match="gives no training split"):
        term.see_training_split(None)
    with pytest.raises(ValueError, match="has not seen the training split"):
        term(batch(torch.zeros(2, 5), torch.zeros(2, 6), index=torch.tensor([0, 1])))
    with pytest.raises(ValueError, match="every one of the 4 training samples has label 3"):
        term.see_training_split(torch.tensor([3, 3, 3, 3]))
    with pytest.raises(RuntimeError, match="before CRD.build"):
        CRD(student_layer="s", teacher_layer="t")(batch(torch.zeros(2, 5), torch.zeros(2, 6)))


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("feat_dim", 0, "feat_dim must be a whole number >= 1"),
        ("nce_k", 2.5, "nce_k must be a whole number >= 1"),
        ("nce_t", 0.0, "nce_t must be a finite number > 0.0"),
        ("nce_m", 1.5, "nce_m must be a finite number >= 0.0 and <= 1.0"),
        ("seed", -1, "seed must be a whole number >= 0 or null"),
    ],
)
def test_bad_settings_are_refused(key, value, message):
    with pytest.raises(ValueError, match=message):
        CRD(student_layer="s", teacher_layer="t", **{key: value})


# -- configs ------------------------------------------------------------------------------------------------------


@pytest.mark.heavy
def test_the_yaml_has_the_authors_defaults_and_the_preset_their_weights():
    from kdlab.config import CONFIG_DIR, compose_config

    term = build_terms({"crd": OmegaConf.load(f"{CONFIG_DIR}/loss/crd.yaml")})["crd"]
    assert (term.feat_dim, term.nce_k, term.nce_t, term.nce_m, term.weight) == (128, 16384, 0.07, 0.5, 0.8)
    preset = compose_config(["experiment=distill_mlp", "distill=crd"]).distill
    terms = build_terms(preset.losses)
    assert {name: t.weight for name, t in terms.items()} == {"ce": 1.0, "kd": 1.0, "crd": 0.8}
    assert preset.temperature == 4.0  # RepDistiller's KD temperature beside CRD


def test_the_heads_are_built_with_the_system_and_trained_with_the_student(tmp_path):
    from kdlab.models import SmallCNN
    from kdlab.modules import DistillationModule

    teacher = {"_target_": "kdlab.models.SmallCNN", "channels": [4, 8], "hidden": 16}
    torch.save(SmallCNN((1, 28, 28), 10, channels=(4, 8), hidden=16).state_dict(), tmp_path / "teacher.pt")
    crd_term = {"_target_": "kdlab.losses.CRD", "student_layer": "features.1", "teacher_layer": "neck", "feat_dim": 8}
    module = DistillationModule(
        net={"_target_": "kdlab.models.MLP", "hidden": [32, 24]}, teacher_net=teacher,
        teacher_ckpt=str(tmp_path / "teacher.pt"), losses={"ce": {"_target_": "kdlab.losses.CE"}, "crd": crd_term},
        optimizer={"_target_": "torch.optim.SGD", "_partial_": True, "lr": 0.1}, num_classes=10,
        input_shape=(1, 28, 28),
    )  # fmt: skip
    heads = module.losses["crd"]
    assert (heads.embed_student.in_features, heads.embed_teacher.in_features) == (24, 16)  # sized by the dry pass
    optimised = {id(p) for group in module.configure_optimizers().param_groups for p in group["params"]}
    assert {id(p) for p in heads.parameters()} <= optimised
    assert {"losses.crd.student_bank", "losses.crd.normalisers", "losses.crd._extra_state"} <= set(module.state_dict())
