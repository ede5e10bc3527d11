"""Relation terms against numbers from their authors' code, run once outside kdlab on these fixed inputs.

Inputs: torch.manual_seed(0); student = torch.randn(4, 6); teacher = torch.randn(4, 8) (torch 2.13, CPU),
written out below to 9 significant digits (exact in float32). Outputs: the authors' functions called
on them, in float32, printed with repr. Only the numbers are kept here, never the authors' code:
- RKD distance / angle: lenscloth/RKD (Park et al.'s official code), metric/loss.py `RkdDistance`,
  `RKdAngle` (with metric/utils.py `pdist`), commit 0a6c3c0c190722d428322bf71703c0ae86c25242.
- RKD combined: HobbitLong/RepDistiller distiller_zoo/RKD.py `RKDLoss()` (w_d=25, w_a=50),
  commit b84f547c5db6a35318d4671d7d5c4de74c822403.
- SP: same RepDistiller commit, distiller_zoo/SP.py `Similarity.similarity_loss` ("verified by original author").
- PKT: same RepDistiller commit, distiller_zoo/PKT.py `PKT` (code from Passalis' probabilistic_kt).
The authors' PKT computed a NaN gradient when a student row was all zeros; kdlab's does not (see
test_relations.py::test_silent_and_coincident_samples_give_finite_values_and_gradients and PKT's docstring).
"""

import pytest
import torch

from kdlab.losses import PKT, LossInputs, RKDAngle, RKDDistance, SimilarityPreserving

pytestmark = pytest.mark.unit

STUDENT = [
    [-1.12583983, -1.1523602, -0.250578582, -0.433878809, 0.848710358, 0.692009151],
    [-0.31601277, -2.11521935, 0.468096405, -0.157712445, 1.44366014, 0.266049415],
    [0.166455343, 0.87438184, -0.143473849, -0.111609332, 0.931826591, 1.25900924],
    [2.00498056, 0.0537369028, 0.618056655, -0.412802219, -0.841064811, -2.31604195],
]
TEACHER = [
    [-0.215863258, -0.742548168, 0.562721372, 0.259627402, -0.173960999, -0.678746223, 0.938260734, 0.488869816],
    [1.20322371, 0.0845346972, -1.2001394, -0.00478573795, -0.518074811, -0.306704193, -1.58099389, 1.70664334],
    [0.205525666, -0.450329751, -0.573077083, -0.55535841, 0.594323039, 1.5419426, 0.507334411, -0.591033161],
    [-1.32532597, 0.188553572, -0.0690726861, -0.49492535, -1.49591494, -0.193837121, 0.445512176, 1.32527483],
]
REFERENCE = {  # the authors' outputs on STUDENT, TEACHER
    RKDDistance: 0.0632137730717659,  # lenscloth/RKD RkdDistance()(student, teacher)
    RKDAngle: 0.033837687224149704,  # lenscloth/RKD RKdAngle()(student, teacher)
    SimilarityPreserving: 0.22300060093402863,  # RepDistiller Similarity().similarity_loss(student, teacher)
    PKT: 0.03846050053834915,  # RepDistiller PKT()(student, teacher)
}
REPDISTILLER_RKD = 3.272228717803955  # RepDistiller RKDLoss()(student, teacher): 25 * distance + 50 * angle


def inputs():
    student, teacher = torch.tensor(STUDENT), torch.tensor(TEACHER)
    return LossInputs(
        student_logits=torch.zeros(4, 10),
        target=torch.zeros(4, dtype=torch.long),
        student_features={"features.1": student},
        teacher_features={"features.1": teacher},
    )


def term(term_class, weight=1.0):
    return term_class(weight=weight, student_layer="features.1", teacher_layer="features.1")


@pytest.mark.parametrize("term_class", list(REFERENCE), ids=lambda c: c.__name__)
def test_agrees_with_the_authors_code(term_class):
    # float32 throughout on both sides; PKT's unit normalisation differs in the last bits (see its docstring).
    assert term(term_class)(inputs()).item() == pytest.approx(REFERENCE[term_class], rel=1e-5)


def test_weighted_rkd_agrees_with_repdistillers_combined_loss():
    # The distill=rkd preset's two terms at 25 and 50, summed as the distillation module sums weight * term.
    total = sum(t.weight * t(inputs()) for t in (term(RKDDistance, 25.0), term(RKDAngle, 50.0)))
    assert total.item() == pytest.approx(REPDISTILLER_RKD, rel=1e-5)
