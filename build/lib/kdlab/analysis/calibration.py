"""Calibration: is a model that says "90% sure" right 90% of the time?

Expected calibration error as Guo et al. 2017 define it ("On Calibration of Modern Neural
Networks"): the top-1 confidences fall into M equal-width bins I_m = ((m-1)/M, m/M], and

    ECE = sum_m |B_m|/n * |acc(B_m) - conf(B_m)|

where acc and conf are the bin's accuracy and mean confidence. Since |B_m| * acc(B_m) is the bin's
number of correct predictions and |B_m| * conf(B_m) its sum of confidences, this is also
sum_m |correct_m - confidence_sum_m| / n: three sums per bin are all a test pass needs to keep,
and sums add up exactly across DDP ranks.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
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


class CalibrationBins(Metric):
    """Per-bin prediction count, confidence sum and number correct: sum states, exact under DDP.

    ``update(confidence, correct)`` takes top-1 confidences in [0, 1] and whether each top-1
    prediction was right; ``compute()`` gives the ECE. Updates are tensor ops only (no host sync).
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
    if n == 0:
        return None
    return float((correct.double() - confidence_sum.double()).abs().sum() / n)


def reliability_table(count: Tensor, confidence_sum: Tensor, correct: Tensor) -> dict[str, list]:
    """Per bin: predictions, accuracy and mean confidence (None for an empty bin) -- a reliability diagram's data."""
    counts = [int(c) for c in count.tolist()]
    return {
        "count": counts,
        "accuracy": [k / c if c else None for k, c in zip(correct.tolist(), counts, strict=True)],
        "confidence": [s / c if c else None for s, c in zip(confidence_sum.tolist(), counts, strict=True)],
    }
