"""KD variants on logits from the recent literature: DIST, logit-standardised KD and NKD.

Each follows its authors' published code to float tolerance (tests/losses/test_reference_numbers.py keeps
the numbers their code gave on fixed inputs); where their code divides by a small constant, the same
constant is used here, so a run reproduces the paper's method and not a near relative of it.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from kdlab.losses.base import LossInputs, LossTerm, check_number
from kdlab.losses.logits import check_temperature, kd_divergence


def pearson_rows(a: Tensor, b: Tensor, eps: float = 1e-8) -> Tensor:
    """Pearson correlation of each row of `a` with the same row of `b`, as in DIST's code: the cosine of the
    centred rows with `eps` added to the product of their norms, so a constant row correlates 0, not NaN."""
    a = a - a.mean(dim=1, keepdim=True)
    b = b - b.mean(dim=1, keepdim=True)
    return (a * b).sum(dim=1) / (a.norm(dim=1) * b.norm(dim=1) + eps)


class DIST(LossTerm):
    """DIST (Huang et al., NeurIPS 2022, "Knowledge Distillation from A Stronger Teacher"):
    T^2 * (beta * inter + gamma * intra) on the probabilities softmax(logits / T).

    KL asks the student to match the teacher's probabilities exactly, which a much stronger teacher makes
    hard; DIST asks only for the same relations, measured by Pearson correlation, which ignores shift and
    scale. inter = 1 - mean over samples of corr(student row, teacher row), the ranking of the classes for
    each sample; intra = 1 - mean over classes of corr(student column, teacher column), how each class's
    probability varies across the batch. Both lie in [0, 2].

    As in the authors' code, a row or column that is constant (e.g. every column of a one-sample batch)
    correlates 0: intra is then the constant 1 and gives no gradient, so a batch of one is distilled on
    inter alone.
    """

    shown = ("beta", "gamma", "temperature")

    def __init__(
        self, *, weight: float = 2.0, beta: float = 1.0, gamma: float = 1.0, temperature: float = 4.0,
        member: int | None = None,
    ) -> None:  # fmt: skip
        super().__init__(weight, member)
        self.beta = check_number(
            self, "beta", beta, minimum=0.0, inclusive=True, why="It weights the inter-class relation."
        )
        self.gamma = check_number(
            self, "gamma", gamma, minimum=0.0, inclusive=True, why="It weights the intra-class relation."
        )
        if self.beta == 0.0 and self.gamma == 0.0:
            raise ValueError(
                "DIST: beta and gamma are both 0, so the term is 0 whatever the teacher says and a run would report "
                "distillation while learning from the labels alone. Give beta (inter-class) or gamma (intra-class) "
                "a value above 0, or set the term's weight to 0 to drop it."
            )
        self.temperature = check_temperature(self, temperature)

    def parts(self, inputs: LossInputs) -> tuple[Tensor, Tensor]:
        """(inter, intra), each already T^2-scaled; forward weights them by beta and gamma."""
        t = self.temperature
        student = F.softmax(inputs.student_logits / t, dim=1)
        teacher = F.softmax(self.teacher_logits(inputs) / t, dim=1)
        inter = 1 - pearson_rows(student, teacher).mean()
        intra = 1 - pearson_rows(student.t(), teacher.t()).mean()
        return t * t * inter, t * t * intra

    def forward(self, inputs: LossInputs) -> Tensor:
        inter, intra = self.parts(inputs)
        return self.beta * inter + self.gamma * intra


def standardize(logits: Tensor, eps: float = 1e-7) -> Tensor:
    """Each row's z-score, as in the logit-standardisation code: (z - mean) / (eps + std), with the unbiased
    (n - 1) standard deviation torch.std gives; a constant row becomes 0 rather than NaN."""
    return (logits - logits.mean(dim=1, keepdim=True)) / (eps + logits.std(dim=1, keepdim=True))


class LogitStandardKD(LossTerm):
    """Logit-standardised KD (Sun et al., CVPR 2024, "Logit Standardization in Knowledge Distillation"):
    KD on each sample's z-scored logits, T^2 * KL(softmax(zscore(t) / T) || softmax(zscore(s) / T)).

    Plain KD with a shared temperature asks the student to match the teacher's logit range as well as its
    ranking; the z-score removes each sample's mean and scale, so only the relations between logits are
    distilled. The paper reads it as a per-sample temperature (the logits' standard deviation) times a base
    temperature T, the one set here. Its value does not change when either net's logits are shifted or scaled.
    """

    shown = ("temperature",)

    def __init__(self, *, weight: float = 9.0, temperature: float = 2.0, member: int | None = None) -> None:
        super().__init__(weight, member)
        self.temperature = check_temperature(self, temperature)

    def forward(self, inputs: LossInputs) -> Tensor:
        student, teacher = standardize(inputs.student_logits), standardize(self.teacher_logits(inputs))
        return kd_divergence(student, teacher, self.temperature)


class NKD(LossTerm):
    """Normalized KD (Yang et al., ICCV 2023, "From Knowledge Distillation to Self-Knowledge Distillation:
    A Unified Approach with Normalized Loss and Customized Soft Labels"): target + gamma * T^2 * non-target.

    KD's KL splits into a term on the target class and one on the non-target classes whose sum is
    (1 - teacher's target probability), so the non-target knowledge fades as the teacher grows confident.
    NKD normalises the non-target part: target = -mean_i p_t(y_i) * log q(y_i), at T = 1; non-target =
    -mean_i sum_{k != y_i} p'_k log q'_k, with p', q' the softmax over the non-target logits at T.

    As in the authors' code the non-target part is a cross-entropy, not a KL: its value includes the
    teacher's non-target entropy, so it is not 0 when student and teacher agree (the gradient is the KL's).
    """

    shown = ("gamma", "temperature")

    def __init__(
        self, *, weight: float = 1.0, gamma: float = 1.5, temperature: float = 1.0, member: int | None = None
    ) -> None:
        super().__init__(weight, member)
        self.gamma = check_number(
            self, "gamma", gamma, minimum=0.0, inclusive=True, why="It weights the non-target part."
        )
        self.temperature = check_temperature(self, temperature)

    def parts(self, inputs: LossInputs) -> tuple[Tensor, Tensor]:
        """(target, non-target); the non-target part is T^2-scaled but not yet weighted by gamma."""
        teacher = self.teacher_logits(inputs)
        label = inputs.target.unsqueeze(1)
        student_log_target = F.log_softmax(inputs.student_logits, dim=1).gather(1, label)
        teacher_target = F.softmax(teacher, dim=1).gather(1, label)
        target = -(teacher_target * student_log_target).mean()

        t = self.temperature
        is_target = F.one_hot(inputs.target, teacher.shape[1]).bool()
        # The target slot is -inf before the softmax (probability 0) and 0 in the student's log: 0 * 0 adds nothing.
        student_log = F.log_softmax(inputs.student_logits.masked_fill(is_target, float("-inf")) / t, dim=1)
        teacher_probs = F.softmax(teacher.masked_fill(is_target, float("-inf")) / t, dim=1)
        non_target = -(teacher_probs * student_log.masked_fill(is_target, 0.0)).sum(dim=1).mean()
        return target, t * t * non_target

    def forward(self, inputs: LossInputs) -> Tensor:
        target, non_target = self.parts(inputs)
        return target + self.gamma * non_target
