"""Everything a test pass accumulates for error analysis, and the numbers it ends with.

Per batch only tensor ops run (softmax, max, index_add_): no `.item()`, no host sync. Every state is a
sum, summed across DDP ranks once at the end, so each test image counts exactly once when the sampler
splits the test set without repeats (kdlab's datamodules do). Confusion is counted with `index_add_`
into a fixed C*C table: torchmetrics' MulticlassConfusionMatrix uses `torch.bincount`, which on CUDA
reads the largest label back to the host on every update.

Calibration: is a model that says "90% sure" right 90% of the time? Expected calibration error as Guo
et al. 2017 define it ("On Calibration of Modern Neural Networks"): the top-1 confidences fall into M
equal-width bins I_m = ((m-1)/M, m/M], and

    ECE = sum_m |B_m|/n * |acc(B_m) - conf(B_m)|

where acc and conf are the bin's accuracy and mean confidence. Since |B_m| * acc(B_m) is the bin's
number of correct predictions and |B_m| * conf(B_m) its sum of confidences, this is also
sum_m |correct_m - confidence_sum_m| / n: three sums per bin are all a test pass needs to keep.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn
from torchmetrics import Metric

N_BINS = 15  # Guo et al.'s choice


def top1(logits: Tensor) -> tuple[Tensor, Tensor]:
    """(confidence, prediction) per row: the largest softmax probability and its class."""
    return logits.detach().float().softmax(dim=-1).max(dim=-1)


def bin_index(confidence: Tensor, n_bins: int = N_BINS) -> Tensor:
    """0-based bin of each confidence: bin m holds (m/M, (m+1)/M]; a confidence of 0 goes to bin 0.

    e.g. M = 15: 0.95 * 15 = 14.25 -> ceil 15 -> bin 14, i.e. (14/15, 1]. (torchmetrics bins
    [lo, hi) instead; the two differ only for confidences exactly on an edge.)
    """
    return (confidence * n_bins).ceil().long().sub(1).clamp(0, n_bins - 1)


class ConfusionCounts(Metric):
    """``counts[true, predicted]``: how often class ``true`` was predicted as ``predicted``.

    ``update(pred, target)`` takes class indices ([B] integer tensors); pass the teacher's predictions
    as ``target`` to count student-teacher (dis)agreements instead.
    """

    full_state_update = False
    is_differentiable = False

    def __init__(self, num_classes: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
            raise ValueError(f"ConfusionCounts: num_classes must be an integer >= 2, got {num_classes!r}")
        self.num_classes = num_classes
        self.add_state("counts", torch.zeros(num_classes, num_classes, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, pred: Tensor, target: Tensor) -> None:
        if pred.shape != target.shape or pred.ndim != 1:
            raise ValueError(
                "ConfusionCounts.update takes predicted and true class indices as two [B] tensors "
                f"(argmax the logits first), got shapes {tuple(pred.shape)} and {tuple(target.shape)}."
            )
        cell = target.long() * self.num_classes + pred.long()  # row-major position of (true, predicted)
        self.counts.view(-1).index_add_(0, cell, torch.ones_like(cell))

    def compute(self) -> Tensor:
        return self.counts.clone()


class CalibrationBins(Metric):
    """Per-bin prediction count, confidence sum and number correct.

    ``update(confidence, correct)`` takes top-1 confidences in [0, 1] and whether each top-1
    prediction was right; ``compute()`` gives the ECE.
    """

    full_state_update = False
    is_differentiable = False
    higher_is_better = False

    def __init__(self, n_bins: int = N_BINS, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if isinstance(n_bins, bool) or not isinstance(n_bins, int) or n_bins < 1:
            raise ValueError(f"CalibrationBins: n_bins must be a positive integer (15 is standard), got {n_bins!r}")
        self.n_bins = n_bins
        self.add_state("count", torch.zeros(n_bins, dtype=torch.long), dist_reduce_fx="sum")
        # float64: 10k confidences summed in float32 would drift in the 4th-5th digit of the ECE
        self.add_state("confidence_sum", torch.zeros(n_bins, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("correct", torch.zeros(n_bins, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, confidence: Tensor, correct: Tensor) -> None:
        if confidence.shape != correct.shape or confidence.ndim != 1:
            raise ValueError(
                f"CalibrationBins.update takes one confidence and one right/wrong flag per prediction "
                f"(two [B] tensors), got shapes {tuple(confidence.shape)} and {tuple(correct.shape)}."
            )
        bins = bin_index(confidence, self.n_bins)
        self.count.index_add_(0, bins, torch.ones_like(bins))
        self.confidence_sum.index_add_(0, bins, confidence.to(self.confidence_sum.dtype))
        self.correct.index_add_(0, bins, correct.long())

    def compute(self) -> Tensor:
        ece = expected_calibration_error(self.count, self.confidence_sum, self.correct)
        return torch.tensor(float("nan") if ece is None else ece)


def expected_calibration_error(count: Tensor, confidence_sum: Tensor, correct: Tensor) -> float | None:
    """ECE from per-bin sums: sum_m |correct_m - confidence_sum_m| / n; None when no predictions."""
    n = int(count.sum())
    return float((correct.double() - confidence_sum.double()).abs().sum() / n) if n else None


def reliability_table(count: Tensor, confidence_sum: Tensor, correct: Tensor) -> dict[str, list]:
    """Per bin: predictions, accuracy and mean confidence (None for an empty bin) -- a reliability diagram's data."""
    counts = [int(c) for c in count.tolist()]
    return {
        "count": counts,
        "accuracy": [k / c if c else None for k, c in zip(correct.tolist(), counts, strict=True)],
        "confidence": [s / c if c else None for s, c in zip(confidence_sum.tolist(), counts, strict=True)],
    }


def per_class_accuracy(counts: Tensor) -> list[float | None]:
    """Recall of each class: diagonal / row total; None for a class with no test images."""
    totals = counts.sum(dim=1).tolist()
    return [int(hit) / total if total else None for hit, total in zip(counts.diagonal().tolist(), totals, strict=True)]


def accuracy(counts: Tensor) -> float | None:
    """Overall top-1 accuracy: trace / total; None when nothing was counted."""
    total = int(counts.sum())
    return int(counts.trace()) / total if total else None


def synced_states(metric: Metric, **sync: Any) -> dict[str, Tensor]:
    """The metric's states summed over all ranks (a collective: every rank must call it), local ones kept.

    `sync` goes to `Metric.sync_context` (tests pass `dist_sync_fn`/`distributed_available` to
    stand in for a process group). Unlike `compute()`, this reads a never-updated metric without a warning.
    """
    with metric.sync_context(**sync):
        return {name: state.detach().cpu().clone() for name, state in metric.metric_state.items()}


def model_summary(confusion: dict[str, Tensor], calibration: dict[str, Tensor]) -> dict[str, Any]:
    """One model's numbers, as plain JSON-ready values."""
    counts = confusion["counts"]
    bins = (calibration["count"], calibration["confidence_sum"], calibration["correct"])
    return {
        "acc": accuracy(counts),
        "ece": expected_calibration_error(*bins),
        "per_class_acc": per_class_accuracy(counts),
        "confusion": counts.tolist(),  # rows: true class, columns: predicted class
        "reliability": reliability_table(*bins),
    }


class PredictionStats(nn.Module):
    """Confusion and calibration of the student (and teacher), and how often the two disagree."""

    def __init__(self, num_classes: int, n_bins: int = N_BINS) -> None:
        super().__init__()
        self.n_bins = n_bins
        self.metrics = nn.ModuleDict(
            {
                "student_confusion": ConfusionCounts(num_classes),
                "student_calibration": CalibrationBins(n_bins),
                "teacher_confusion": ConfusionCounts(num_classes),
                "teacher_calibration": CalibrationBins(n_bins),
                "agreement": ConfusionCounts(num_classes),  # rows: teacher's prediction, columns: student's
            }
        )

    def update(self, student_logits: Tensor, target: Tensor, teacher_logits: Tensor | None = None):
        """Add one batch; returns the (student, teacher) predictions (teacher None without one)."""
        m = self.metrics
        s_conf, s_pred = top1(student_logits)
        m["student_confusion"].update(s_pred, target)
        m["student_calibration"].update(s_conf, s_pred == target)
        if teacher_logits is None:
            return s_pred, None
        t_conf, t_pred = top1(teacher_logits)
        m["teacher_confusion"].update(t_pred, target)
        m["teacher_calibration"].update(t_conf, t_pred == target)
        m["agreement"].update(s_pred, t_pred)
        return s_pred, t_pred

    def results(self, **sync: Any) -> dict[str, Any]:
        """The numbers over all ranks' images (a collective: call it on every rank).

        {"n_test", "n_bins", "student": {...}} plus "teacher", "disagreements" and "agreement"
        when teacher logits were seen on any rank; see `model_summary` for a model's keys.
        """
        states = {name: synced_states(metric, **sync) for name, metric in self.metrics.items()}
        out: dict[str, Any] = {
            "n_test": int(states["student_calibration"]["count"].sum()),
            "n_bins": self.n_bins,
            "student": model_summary(states["student_confusion"], states["student_calibration"]),
        }
        if int(states["teacher_calibration"]["count"].sum()):
            agreement = states["agreement"]["counts"]
            total, agreed = int(agreement.sum()), int(agreement.trace())
            out["teacher"] = model_summary(states["teacher_confusion"], states["teacher_calibration"])
            out["disagreements"] = total - agreed
            out["agreement"] = agreed / total
        return out
