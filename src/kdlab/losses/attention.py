"""Attention transfer (Zagoruyko and Komodakis 2017) for CNN students, as the authors' code has it
(szagoruyko/attention-transfer utils.py `at`, `at_loss`)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from kdlab.losses.base import LossInputs
from kdlab.losses.features import LayerTerm


def attention_map(features: Tensor) -> Tensor:
    """A [B, C, H, W] map's spatial attention: the mean over channels of the squared activations, flattened
    and L2-normalised per sample (p = 2, the authors' `at`), [B, H * W]."""
    return F.normalize(features.pow(2).mean(1).flatten(1), p=2, dim=1)


class AttentionTransfer(LayerTerm):
    """The squared difference of the student's and the teacher's attention maps of one pair of conv layers,
    averaged over the B x H x W entries (the authors' `at_loss`). The authors weight it beta = 1000 per pair
    of layers (README: `--beta 1e+3`; RepDistiller the same), one such term per pair.

    Both layers must be 4-D feature maps [B, C, H, W] of the same spatial size (the channels may differ):
    the maps are compared position by position. build() refuses anything else before training starts.
    """

    shown = ("student_layer", "teacher_layer")

    def __init__(
        self, *, weight: float = 1000.0, student_layer: str, teacher_layer: str, member: int | None = None
    ) -> None:
        super().__init__(weight, student_layer, teacher_layer, member)

    def build(self, student_features: dict[str, Tensor], teacher_features: dict[str, Tensor]) -> None:
        """No parameters; the layers' shapes are checked on the dry pass, before anything trains."""
        self.check_maps(
            self.feature(student_features, self.student_layer, "student"),
            self.feature(teacher_features, self.teacher_layer, "teacher"),
        )

    def check_maps(self, student: Tensor, teacher: Tensor) -> None:
        if student.dim() != 4 or teacher.dim() != 4:
            raise ValueError(
                f"AttentionTransfer compares spatial attention maps, so both layers must give 4-D feature maps "
                f"[batch, channels, height, width]; the student's '{self.student_layer}' gives "
                f"{list(student.shape)} and the teacher's '{self.teacher_layer}' {list(teacher.shape)}. Tap conv "
                "blocks of a CNN student and a CNN teacher (SmallCNN: features.0, features.1, ...); an MLP has no "
                "spatial maps (use hint, rkd or crd there)."
            )
        if student.shape[2:] != teacher.shape[2:]:
            raise ValueError(
                f"AttentionTransfer compares the two attention maps position by position, but the student's "
                f"'{self.student_layer}' is {student.shape[2]}x{student.shape[3]} and the teacher's "
                f"'{self.teacher_layer}' {teacher.shape[2]}x{teacher.shape[3]}. Pair layers of the same spatial "
                "size (for SmallCNNs on the same input: the same block index, features.<i> with features.<i>)."
            )

    def forward(self, inputs: LossInputs) -> Tensor:
        student = self.feature(inputs.student_features, self.student_layer, "student")
        # The teacher's map is a fixed target: no gradient may reach the teacher.
        teacher = self.feature(self.teacher_features(inputs), self.teacher_layer, "teacher").detach()
        self.check_maps(student, teacher)
        dtype = torch.promote_types(student.dtype, torch.float32)  # squares of half-precision activations overflow
        with torch.autocast(device_type=student.device.type, enabled=False):
            return (attention_map(student.to(dtype)) - attention_map(teacher.to(dtype))).pow(2).mean()
