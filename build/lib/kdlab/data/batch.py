"""The batch every training, validation and test step receives."""

from __future__ import annotations

from typing import NamedTuple

from torch import Tensor


class Batch(NamedTuple):
    """One batch after ``MNISTDataModule.on_after_batch_transfer``, on the model's device.

    A NamedTuple, so Lightning moves and inspects it like any tuple, and steps read fields by name.
    """

    x: Tensor  # float32 [B, 1, 28, 28], normalised (and shifted first, when augmented)
    y: Tensor  # int64 [B] labels
    index: Tensor  # int64 [B] positions in the batch's split (dm.data_train / data_val / data_test)
    shift: Tensor | None  # int64 [B, 2] (dy, dx) each image was shifted by; None when not augmented
