"""Loss terms on the relations between a batch's samples (RKD, similarity-preserving KD, PKT).

Each compares a B x B (or B x B x B) structure built from the student's features with the same
structure built from the teacher's, so the two layers may have different widths and need no
regressor. Features are flattened per sample (a CNN's maps become vectors, as the authors'
`view(bsz, -1)` does) and computed in float32 at least, with autocast off. With fewer than two
samples there is no pair to relate: the terms return 0 (with a gradient path) instead of a NaN.
"""

from __future__ import annotations

import abc

import torch
import torch.nn.functional as F
from torch import Tensor

from kdlab.losses.base import LossInputs
from kdlab.losses.features import LayerTerm

# The authors' guard against sqrt(0) (RKD's pdist clamps squared distances at it): an exactly
# coincident pair gets distance 1e-6 and a zero gradient instead of an infinite one.
SQUARED_DISTANCE_FLOOR = 1e-12
PKT_EPS = 1e-7  # PKT's eps in the log ratio (Passalis and Tefas' code)
# Validation and test batches (data.eval_batch_size, 1000 for MNIST) are related in chunks of this many
# samples, the training batch size of the recipes: RKD angle's B^3 structure at B = 1000 would be 4 GB a side.
EVAL_CHUNK = 128


class RelationTerm(LayerTerm):
    """A term relating the samples of a batch: reads one student and one teacher layer by module name."""

    shown = ("student_layer", "teacher_layer")

    def __init__(
        self, *, weight: float = 1.0, student_layer: str, teacher_layer: str, member: int | None = None
    ) -> None:
        super().__init__(weight, student_layer, teacher_layer, member)

    def build(self, student_features: dict[str, Tensor], teacher_features: dict[str, Tensor]) -> None:
        """Nothing to size (no parameters), but a misnamed layer is reported before training starts."""
        self.feature(student_features, self.student_layer, "student")
        self.feature(teacher_features, self.teacher_layer, "teacher")

    def forward(self, inputs: LossInputs) -> Tensor:
        student = self.feature(inputs.student_features, self.student_layer, "student")
        # The teacher's feature is a fixed target: no gradient may reach the teacher.
        teacher = self.feature(self.teacher_features(inputs), self.teacher_layer, "teacher").detach()
        if student.shape[0] != teacher.shape[0]:
            raise ValueError(
                f"{type(self).__name__}: the student's '{self.student_layer}' has {student.shape[0]} samples but "
                f"the teacher's '{self.teacher_layer}' has {teacher.shape[0]}: both must see the same batch, "
                "sample for sample, since the term compares their sample-to-sample relations."
            )
        dtype = torch.promote_types(student.dtype, torch.float32)  # half precision is computed in float32
        student, teacher = student.flatten(1).to(dtype), teacher.flatten(1).to(dtype)
        if student.shape[0] < 2:
            return student.sum() * 0.0  # no pair to relate; keeps the graph so backward() still works
        # Autocast would run the Gram products in bf16/fp16 (8 or 11 bits): off, so they stay in float32.
        with torch.autocast(device_type=student.device.type, enabled=False):
            if self.training or student.shape[0] <= EVAL_CHUNK:
                return self.relation_loss(student, teacher)
            return self._chunked(student, teacher)

    def _chunked(self, student: Tensor, teacher: Tensor) -> Tensor:
        """An evaluation batch's term: the mean over consecutive chunks of EVAL_CHUNK samples, weighted by their
        sizes (a last chunk of one sample has no pair and is left out). What val/ and test/ report for these
        terms is therefore the relation at the training batch's scale, not over the whole evaluation batch."""
        total, counted = student.new_zeros(()), 0
        for s, t in zip(student.split(EVAL_CHUNK), teacher.split(EVAL_CHUNK), strict=True):
            if s.shape[0] >= 2:
                total, counted = total + s.shape[0] * self.relation_loss(s, t), counted + s.shape[0]
        return total / counted

    @abc.abstractmethod
    def relation_loss(self, student: Tensor, teacher: Tensor) -> Tensor:
        """The term on [B, D_s] and [B, D_t] float32 features, B >= 2; the teacher is already detached."""


def pairwise_distances(features: Tensor) -> Tensor:
    """Euclidean distances between the rows, [B, B], zero on the diagonal (RKD's pdist).

    Squared distances are clamped at SQUARED_DISTANCE_FLOOR before the square root, so a coincident
    pair gives a finite gradient, and every off-diagonal distance is positive.
    """
    squared_norms = features.pow(2).sum(dim=1)
    squared = squared_norms.unsqueeze(1) + squared_norms.unsqueeze(0) - 2 * features @ features.t()
    distances = squared.clamp(min=SQUARED_DISTANCE_FLOOR).sqrt()
    return distances * (1 - torch.eye(len(features), dtype=distances.dtype, device=distances.device))


def mean_normalised_distances(features: Tensor) -> Tensor:
    """Pairwise distances divided by their mean over the B(B-1) off-diagonal pairs.

    The authors average `d[d > 0]`; with distances clamped as above those are exactly the
    off-diagonal entries, and averaging them by mask cannot divide by an empty mean.
    """
    distances = pairwise_distances(features)
    off_diagonal = ~torch.eye(len(features), dtype=torch.bool, device=features.device)
    return distances / distances[off_diagonal].mean()


def triplet_angles(features: Tensor) -> Tensor:
    """cos of the angle at sample i between samples j and k, [B, B, B] (zero where j or k is i)."""
    differences = F.normalize(features.unsqueeze(0) - features.unsqueeze(1), p=2, dim=2)  # [i, j] = x_j - x_i
    return differences @ differences.transpose(1, 2)


class RKDDistance(RelationTerm):
    """RKD distance (Park et al. 2019, eq. 4-5): the student's pairwise distances, each divided by
    their mean over the batch, should match the teacher's; Huber (smooth-L1, delta 1) loss averaged
    over the B x B entries, as in the authors' `RkdDistance` (lenscloth/RKD, metric/loss.py).
    The authors weight it 25 on the penultimate (embedding) layer for classification."""

    def relation_loss(self, student: Tensor, teacher: Tensor) -> Tensor:
        with torch.no_grad():
            target = mean_normalised_distances(teacher)
        return F.smooth_l1_loss(mean_normalised_distances(student), target)


class RKDAngle(RelationTerm):
    """RKD angle (Park et al. 2019, eq. 6-7): the cosines of the angles every triplet of samples
    forms should match the teacher's; Huber (smooth-L1, delta 1) loss averaged over the B^3 entries,
    as in the authors' `RKdAngle`. The authors weight it 50, beside distance at 25.

    Cost grows as B^3 x width (every anchor's difference vectors, multiplied pairwise): cheap at a
    training batch of 128; validation and test batches are related in chunks of EVAL_CHUNK samples
    (at B = 1000 the whole batch would be ~500x the work and 4 GB per side). The direct
    differences are kept, not the cheaper Gram-matrix form, whose cancellation would corrupt the
    angles of nearly coincident samples."""

    def relation_loss(self, student: Tensor, teacher: Tensor) -> Tensor:
        with torch.no_grad():
            target = triplet_angles(teacher)
        return F.smooth_l1_loss(triplet_angles(student), target)


class SimilarityPreserving(RelationTerm):
    """Similarity-preserving KD (Tung and Mori 2019, eq. 2-4): the batch's Gram matrices of the
    flattened features, each row L2-normalised, should agree; squared Frobenius distance / B^2, as
    in the authors' `Similarity` (RepDistiller distiller_zoo/SP.py; weight 3000 there). Row
    normalisation uses F.normalize's eps, so an all-zero feature row gives a zero row, not NaN."""

    def relation_loss(self, student: Tensor, teacher: Tensor) -> Tensor:
        batch = student.shape[0]
        student_gram = F.normalize(student @ student.t(), p=2, dim=1)
        teacher_gram = F.normalize(teacher @ teacher.t(), p=2, dim=1)
        return (teacher_gram - student_gram).pow(2).sum() / batch**2


class PKT(RelationTerm):
    """Probabilistic knowledge transfer (Passalis and Tefas 2018): cosine similarities mapped to
    [0, 1] by (cos + 1) / 2, each row divided by its sum into a conditional distribution p(j | i),
    then mean over the B x B entries of p_t * log((p_t + eps) / (p_s + eps)), eps = 1e-7, as in the
    authors' code (RepDistiller distiller_zoo/PKT.py; weight 30000 there).

    One deliberate difference: rows are unit-normalised with F.normalize (x / max(|x|, 1e-12))
    instead of x / (|x| + 1e-7). The values agree to float32 rounding for any row that is not
    almost zero, but the authors' square root has an infinite derivative at an all-zero row (a
    sample whose ReLU layer is silent), which makes every gradient NaN; F.normalize's is finite.
    """

    def relation_loss(self, student: Tensor, teacher: Tensor) -> Tensor:
        target = conditional_similarities(teacher)
        prediction = conditional_similarities(student)
        return (target * torch.log((target + PKT_EPS) / (prediction + PKT_EPS))).mean()


def conditional_similarities(features: Tensor) -> Tensor:
    """PKT's p(j | i): cosine similarity in [0, 1], each row summing to 1 (its diagonal is 1 or 1/2, so
    no row sums to 0)."""
    unit = F.normalize(features, p=2, dim=1)
    similarity = (unit @ unit.t() + 1.0) / 2.0
    return similarity / similarity.sum(dim=1, keepdim=True)
