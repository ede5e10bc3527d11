"""The batch every training, validation and test step receives."""

from __future__ import annotations

from typing import NamedTuple

from torch import Tensor


class Batch(NamedTuple):
    """One batch after the datamodule's ``on_after_batch_transfer``, on the model's device.

    A NamedTuple, so Lightning moves and inspects it like any tuple, and steps read fields by name.
    """

    x: Tensor  # float32 [B, C, H, W], augmented then normalised by the data's spec
    y: Tensor  # int64 [B] labels
    index: Tensor  # int64 [B] positions in the batch's split (dm.data_train / data_val / data_test)
    shift: Tensor | None  # int64 [B, 2] (dy, dx) each image was shifted by; None when not augmented
    flip: Tensor | None  # bool [B] whether each image was mirrored; None when flips are off
    pixels: Tensor  # uint8 [B, C, H, W], augmented, before normalisation: a teacher with its own spec starts here
    # float32 [B, 5] (angle, scale, shear, dy, dx) of each image's affine distortion (kdlab.data.affine); None when
    # off (elastic displacements come on top of it: kdlab.data.affine.random_affine). Continuous: no cached teacher
    # output exists for such a view, only the live teacher scores it.
    affine: Tensor | None = None
