"""What every loss term receives, the base class the distillation module sums over, and shared checks."""

from __future__ import annotations

import abc
import math
from dataclasses import dataclass, field
from numbers import Real

from torch import Tensor, nn

# How a squared error is reduced to a scalar: "mean" is nn.MSELoss's default (the article's code),
# "half_sum" is the article's formula 1/2 * sum (section 4.3), "sum" the plain sum.
REDUCTIONS = ("mean", "half_sum", "sum")


@dataclass
class LossInputs:
    """One batch's outputs, gathered once so each term reads only what it needs."""

    student_logits: Tensor  # [B, C]
    target: Tensor  # [B] int64
    teacher_logits: Tensor | None = None
    student_features: dict[str, Tensor] = field(default_factory=dict)  # module name -> output
    teacher_features: dict[str, Tensor] = field(default_factory=dict)


class LossTerm(nn.Module, abc.ABC):
    """One weighted term of the total loss; the module sums weight * term(inputs)."""

    needs_teacher: bool = True

    def __init__(self, weight: float = 1.0) -> None:
        super().__init__()
        self.weight = check_number(
            self, "weight", weight, minimum=0.0, inclusive=True, why="It scales this term in the total loss."
        )

    @property
    def student_layers(self) -> tuple[str, ...]:
        """Student submodules whose outputs this term reads; the module hooks exactly these."""
        return ()

    @property
    def teacher_layers(self) -> tuple[str, ...]:
        """Teacher submodules whose outputs this term reads; the module hooks exactly these."""
        return ()

    def build(self, student_features: dict[str, Tensor], teacher_features: dict[str, Tensor]) -> None:
        """Called once, before optimisers are created, with features from a dry forward pass of a
        2-sample batch, so terms can create parameters sized to the real layers. Default: no-op."""

    @abc.abstractmethod
    def forward(self, inputs: LossInputs) -> Tensor:
        """The unweighted scalar term; the caller applies `weight` so it can log both."""

    def teacher_logits(self, inputs: LossInputs) -> Tensor:
        """The teacher's logits as a fixed target: detached, so no gradient can reach the teacher."""
        if inputs.teacher_logits is None:
            raise ValueError(
                f"{type(self).__name__} compares the student with the teacher, but LossInputs.teacher_logits "
                "is None. Pass the teacher's logits for this batch, or drop this term from distill.losses "
                "to train on the labels alone."
            )
        return inputs.teacher_logits.detach()

    def extra_repr(self) -> str:
        return f"weight={self.weight}"


def check_number(term: object, name: str, value: object, *, minimum: float, inclusive: bool, why: str = "") -> float:
    """A config value as a float, or a ValueError that names the term, the key and the allowed range."""
    bound = f">= {minimum}" if inclusive else f"> {minimum}"
    ok = isinstance(value, Real) and not isinstance(value, bool) and math.isfinite(value)
    if ok:
        ok = value >= minimum if inclusive else value > minimum
    if not ok:
        raise ValueError(
            f"{type(term).__name__}: {name} must be a finite number {bound}, got {value!r}. "
            + (f"{why} " if why else "")
            + f"Set {name} in the term's config (conf/loss/*.yaml, or distill.losses.<term>.{name})."
        )
    return float(value)


def check_reduction(term: object, reduction: object) -> str:
    """The reduction name, or a ValueError listing the ones squared_error understands."""
    if reduction not in REDUCTIONS:
        raise ValueError(
            f"{type(term).__name__}: reduction must be one of {', '.join(map(repr, REDUCTIONS))}, "
            f"got {reduction!r}. 'mean' averages over every element like nn.MSELoss, 'half_sum' is "
            "1/2 * sum of squared errors as in the reference article, 'sum' is the plain sum."
        )
    return reduction


def squared_error(prediction: Tensor, target: Tensor, reduction: str) -> Tensor:
    """Squared error reduced as named in REDUCTIONS; shared by LogitMSE and Hint so they agree."""
    squared = (prediction - target).pow(2)
    if reduction == "mean":
        return squared.mean()
    if reduction == "half_sum":
        return 0.5 * squared.sum()
    if reduction == "sum":
        return squared.sum()
    raise ValueError(f"unknown reduction {reduction!r}; expected one of {REDUCTIONS}")
