"""Loss terms on logits: hard labels (CE), soft targets (KD), logit matching (LogitMSE) and DKD."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from kdlab.losses.base import LossInputs, LossTerm, check_number, check_reduction, squared_error


def check_temperature(term: LossTerm, temperature: object) -> float:
    why = "It divides the logits before the softmax, so 0 or less has no meaning; "
    why += "distill.temperature sets it for every term that reads T."
    return check_number(term, "temperature", temperature, minimum=0.0, inclusive=False, why=why)


def _kl(log_student: Tensor, log_teacher: Tensor) -> Tensor:
    """KL(teacher || student) from log-probabilities, summed over classes and averaged over samples."""
    return F.kl_div(log_student, log_teacher, reduction="batchmean", log_target=True)


class CE(LossTerm):
    """Cross-entropy on the hard labels: keeps the student anchored to the ground truth."""

    needs_teacher = False
    shown = ("label_smoothing",)

    def __init__(self, *, weight: float = 1.0, label_smoothing: float = 0.0) -> None:
        super().__init__(weight)
        why = "It is the share of the target mass spread uniformly over all classes, so 0 means plain one-hot labels."
        self.label_smoothing = check_number(
            self, "label_smoothing", label_smoothing, minimum=0.0, maximum=1.0, inclusive=True, why=why
        )

    def forward(self, inputs: LossInputs) -> Tensor:
        return F.cross_entropy(inputs.student_logits, inputs.target, label_smoothing=self.label_smoothing)


def kd_divergence(student_logits: Tensor, teacher_logits: Tensor, temperature: float) -> Tensor:
    """T^2 * KL(softmax(t/T) || softmax(s/T)), summed over classes, mean over samples (Hinton's KD term)."""
    t = temperature
    return t * t * _kl(F.log_softmax(student_logits / t, dim=1), F.log_softmax(teacher_logits / t, dim=1))


class KD(LossTerm):
    """Hinton et al. 2015 soft targets: T^2 * KL(softmax(t/T) || softmax(s/T)), mean over samples.

    The T^2 factor keeps the gradient scale independent of T, so the weight need not be retuned
    when T is swept. With an ensemble, t is the members combined (teacher.combine); with `member: i`,
    member i alone, so one KD term per member, each with its own weight, is multi-teacher KD.
    """

    shown = ("temperature",)

    def __init__(self, *, weight: float = 0.9, temperature: float = 4.0, member: int | None = None) -> None:
        super().__init__(weight, member)
        self.temperature = check_temperature(self, temperature)

    def forward(self, inputs: LossInputs) -> Tensor:
        return kd_divergence(inputs.student_logits, self.teacher_logits(inputs), self.temperature)


class LogitMSE(LossTerm):
    """Squared error between student and teacher logits, as in the reference article's code."""

    shown = ("reduction",)

    def __init__(self, *, weight: float = 1.0, reduction: str = "mean", member: int | None = None) -> None:
        super().__init__(weight, member)
        self.reduction = check_reduction(self, reduction)

    def forward(self, inputs: LossInputs) -> Tensor:
        return squared_error(inputs.student_logits, self.teacher_logits(inputs), self.reduction)


class DKD(LossTerm):
    """Decoupled KD (Zhao et al., CVPR 2022): alpha * TCKD + beta * NCKD.

    Classic KD couples the two parts and weights NCKD by (1 - teacher's target probability), which
    shrinks exactly where the teacher is confident; DKD gives each part its own weight.
    TCKD is the KL between the binary [target, non-target] distributions, NCKD the KL between the
    distributions over the non-target classes alone; both are T^2-scaled and averaged over the batch.
    Everything stays in log space, so confident teachers give no log(0).

    `warmup` (epochs, 0 = off) ramps the term in as the authors' code does (mdistiller DKD.py:
    `min(epoch / warmup, 1.0) * dkd_loss`, its epochs counted from 1): kdlab's epochs count from 0,
    so the factor is min((epoch + 1) / warmup, 1): 1/warmup in the first epoch, 1 from epoch warmup - 1 on.
    """

    shown = ("alpha", "beta", "temperature", "warmup")

    def __init__(
        self, *, weight: float = 1.0, alpha: float = 1.0, beta: float = 8.0, temperature: float = 4.0,
        warmup: float = 0.0, member: int | None = None,
    ) -> None:  # fmt: skip
        super().__init__(weight, member)
        self.alpha = check_number(self, "alpha", alpha, minimum=0.0, inclusive=True)
        self.beta = check_number(self, "beta", beta, minimum=0.0, inclusive=True)
        self.temperature = check_temperature(self, temperature)
        self.warmup = check_number(
            self, "warmup", warmup, minimum=0.0, inclusive=True,
            why="It is the number of epochs over which the term ramps up to full strength; 0 switches that off.",
        )  # fmt: skip

    def warmup_factor(self, inputs: LossInputs) -> float:
        """What multiplies the term at this batch's epoch: 1 without a warm-up (progress is then not read)."""
        if not self.warmup:
            return 1.0
        return min((self.progress(inputs).epoch + 1) / self.warmup, 1.0)

    def parts(self, inputs: LossInputs) -> tuple[Tensor, Tensor]:
        """(TCKD, NCKD), each already T^2-scaled and batch-averaged; forward combines them."""
        t = self.temperature
        student = inputs.student_logits / t
        teacher = self.teacher_logits(inputs) / t
        is_target = F.one_hot(inputs.target, student.shape[1]).bool()
        tckd = _kl(_log_binary(student, is_target), _log_binary(teacher, is_target))
        nckd = _kl(_log_non_target(student, is_target), _log_non_target(teacher, is_target))
        return t * t * tckd, t * t * nckd

    def forward(self, inputs: LossInputs) -> Tensor:
        tckd, nckd = self.parts(inputs)
        return self.warmup_factor(inputs) * (self.alpha * tckd + self.beta * nckd)


def _log_binary(logits: Tensor, is_target: Tensor) -> Tensor:
    """log [p_target, 1 - p_target] per row, with 1 - p_target taken as a logsumexp, not a subtraction."""
    log_total = logits.logsumexp(dim=1, keepdim=True)
    log_target = logits.masked_fill(~is_target, float("-inf")).logsumexp(dim=1, keepdim=True)
    log_rest = logits.masked_fill(is_target, float("-inf")).logsumexp(dim=1, keepdim=True)
    return torch.cat([log_target, log_rest], dim=1) - log_total


def _log_non_target(logits: Tensor, is_target: Tensor) -> Tensor:
    """Log-softmax over the non-target classes; the target slot is set to 0 in both inputs to the KL,
    where exp(0) * (0 - 0) adds nothing (a -inf there would give 0 * nan)."""
    log_probs = F.log_softmax(logits.masked_fill(is_target, float("-inf")), dim=1)
    return log_probs.masked_fill(is_target, 0.0)
