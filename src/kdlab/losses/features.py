"""Loss terms on intermediate features: the base of terms that read one student and one teacher layer, and
FitNets hints (the relation terms in kdlab.losses.relations build on the same base)."""

from __future__ import annotations

from torch import Tensor, nn

from kdlab.losses.base import LossInputs, LossTerm, check_reduction, squared_error


class LayerTerm(LossTerm):
    """A term reading one student layer and one teacher layer by dotted module name; the module hooks exactly
    these. `feature()` finds a layer's output in a batch's inputs, or says which names there are."""

    def __init__(self, weight: float, student_layer: str, teacher_layer: str, member: int | None) -> None:
        super().__init__(weight, member)
        for key, name in (("student_layer", student_layer), ("teacher_layer", teacher_layer)):
            if not isinstance(name, str) or not name:
                raise ValueError(
                    f"{type(self).__name__}: {key} must be the dotted name of a submodule (e.g. 'features.1', "
                    f"as listed by model.named_modules()), got {name!r}."
                )
        self.student_layer, self.teacher_layer = student_layer, teacher_layer
        self.student_layers, self.teacher_layers = (student_layer,), (teacher_layer,)

    def feature(self, features: dict[str, Tensor], name: str, side: str) -> Tensor:
        if name not in features:
            available = ", ".join(map(repr, sorted(features))) or "none"
            raise ValueError(
                f"{type(self).__name__}: the {side} feature '{name}' is missing from the inputs (available: "
                f"{available}). Set the term's {side}_layer to one of the {side} model's submodule names "
                "(see model.named_modules()), and make sure the module hooks that layer."
            )
        return features[name]


class Hint(LayerTerm):
    """FitNets (Romero et al. 2015): squared error between regressor(student feature) and the teacher's.

    The student's layer is usually narrower than the teacher's, so a learnable regressor maps it
    into the teacher's shape; it is trained with the student and thrown away after distillation.
    build() sizes it from real features: identity when the shapes already match, a 1x1 Conv2d for
    4-D maps of equal spatial size, otherwise a Linear on the flattened features. With an ensemble
    as teacher, `member` names the member whose `teacher_layer` is the target.
    """

    shown = ("student_layer", "teacher_layer", "reduction")

    def __init__(
        self, *, weight: float = 1.0, student_layer: str, teacher_layer: str, reduction: str = "mean",
        member: int | None = None,
    ) -> None:  # fmt: skip
        super().__init__(weight, student_layer, teacher_layer, member)
        self.reduction = check_reduction(self, reduction)
        self.regressor: nn.Module | None = None
        self.flatten = False  # set by build(): compare flattened features when shapes are incompatible

    def build(self, student_features: dict[str, Tensor], teacher_features: dict[str, Tensor]) -> None:
        student = self.feature(student_features, self.student_layer, "student")
        teacher = self.feature(teacher_features, self.teacher_layer, "teacher")
        s_shape, t_shape = tuple(student.shape[1:]), tuple(teacher.shape[1:])
        self.flatten = False
        if s_shape == t_shape:
            regressor: nn.Module = nn.Identity()
        elif student.dim() == 2 and teacher.dim() == 2:
            regressor = nn.Linear(s_shape[0], t_shape[0])
        elif student.dim() == 4 and teacher.dim() == 4 and s_shape[1:] == t_shape[1:]:
            regressor = nn.Conv2d(s_shape[0], t_shape[0], kernel_size=1)
        else:
            self.flatten = True
            regressor = nn.Linear(student[0].numel(), teacher[0].numel())
        self.regressor = regressor.to(student.device)

    def forward(self, inputs: LossInputs) -> Tensor:
        if self.regressor is None:
            raise RuntimeError(
                "Hint.forward was called before Hint.build: the regressor's shape depends on the real "
                f"features of '{self.student_layer}' and '{self.teacher_layer}', so call "
                "build(student_features, teacher_features) once (the distillation module does this "
                "with a dry forward pass) before computing the loss."
            )
        student = self.feature(inputs.student_features, self.student_layer, "student")
        # The teacher's feature is a fixed target: no gradient may reach the teacher.
        teacher = self.feature(self.teacher_features(inputs), self.teacher_layer, "teacher").detach()
        if self.flatten:
            student, teacher = student.flatten(1), teacher.flatten(1)
        return squared_error(self.regressor(student), teacher, self.reduction)
