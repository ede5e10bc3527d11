"""Confusion counts and per-class accuracy.

torchmetrics' MulticlassConfusionMatrix counts with ``torch.bincount``, which on CUDA reads the
largest label back to the host on every update; ``index_add_`` into a fixed C*C table does not.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from torchmetrics import Metric


class ConfusionCounts(Metric):
    """``counts[true, predicted]``: how often class ``true`` was predicted as ``predicted``.

    A sum state, so DDP ranks add their tables exactly. ``update(pred, target)`` takes class
    indices ([B] integer tensors); pass the teacher's predictions as ``target`` to count
    student-teacher (dis)agreements instead.
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


def per_class_accuracy(counts: Tensor) -> list[float | None]:
    """Recall of each class: diagonal / row total; None for a class with no test images."""
    totals = counts.sum(dim=1).tolist()
    return [int(hit) / total if total else None for hit, total in zip(counts.diagonal().tolist(), totals, strict=True)]


def accuracy(counts: Tensor) -> float | None:
    """Overall top-1 accuracy: trace / total; None when nothing was counted."""
    total = int(counts.sum())
    return int(counts.trace()) / total if total else None
