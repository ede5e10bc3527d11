"""Trains any classifier on hard labels: teachers, and the student-from-scratch baseline."""

from collections.abc import Mapping, Sequence

from kdlab.modules.base import ClassifierSystem


class TeacherModule(ClassifierSystem):
    """The distillation path with no teacher and a single cross-entropy term."""

    def __init__(
        self, net: Mapping, optimizer: Mapping, scheduler: Mapping | None = None, label_smoothing: float = 0.0, *,
        num_classes: int, input_shape: Sequence[int], compile: bool = False,  # sizes from the data's spec
    ) -> None:  # fmt: skip
        ce = {"_target_": "kdlab.losses.CE", "weight": 1.0, "label_smoothing": label_smoothing}
        super().__init__(
            net, {"ce": ce}, optimizer, scheduler, num_classes=num_classes, input_shape=input_shape,
            compile=compile, label_smoothing=label_smoothing,
        )  # fmt: skip
