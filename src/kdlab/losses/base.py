"""What every loss term receives, the base class the distillation module sums over, and shared checks."""

from __future__ import annotations

import abc
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from numbers import Real
from pathlib import Path

from torch import Tensor, nn

# How a squared error is reduced to a scalar: "mean" is nn.MSELoss's default (the article's code),
# "half_sum" is the article's formula 1/2 * sum (section 4.3), "sum" the plain sum.
REDUCTIONS = {"mean": Tensor.mean, "half_sum": lambda squared: 0.5 * squared.sum(), "sum": Tensor.sum}


@dataclass(frozen=True)
class TrainingProgress:
    """Where training stands when a term is called: what a schedule (a warm-up, a ramp) reads.

    The system fills it for every batch of every stage (ClassifierSystem.shared_step). In training it
    is the epoch and step being trained; in validation it is the epoch just trained (Lightning's
    current_epoch, before it moves on) and the steps taken so far, so `val/loss_<term>` is that epoch's
    weighting; in testing after a fit it is where the fit ended. A resumed run continues from the
    checkpoint's epoch and step, so a term that reads progress gives the uninterrupted run's values.
    """

    epoch: int  # 0-based, Lightning's current_epoch: the first epoch is 0
    step: int  # optimiser steps taken so far (Lightning's global_step), 0 at the first training batch
    max_epochs: int | None  # trainer.max_epochs; None when the run is bounded by steps alone
    total_steps: int | None  # optimiser steps the whole fit takes (estimated_stepping_batches); None: unbounded

    @property
    def fraction(self) -> float | None:
        """Share of the fit's optimiser steps taken, in [0, 1]; None when the fit has no known end."""
        return None if not self.total_steps else min(self.step / self.total_steps, 1.0)


@dataclass
class LossInputs:
    """One batch's outputs, gathered once so each term reads only what it needs.

    `progress` and `index` are filled by the training system for every term (terms that need neither
    ignore them); a term called on its own (a test, a numerics probe) sees what its caller passes.
    """

    student_logits: Tensor  # [B, C]
    target: Tensor  # [B] int64
    teacher_logits: Tensor | None = None  # an ensemble's: its members combined (kdlab.modules.ensemble)
    student_features: dict[str, Tensor] = field(default_factory=dict)  # module name -> output
    teacher_features: dict[str, Tensor] = field(default_factory=dict)
    member_logits: list[Tensor] | None = None  # an ensemble's members', in member order; None for one teacher
    member_features: list[dict[str, Tensor]] = field(default_factory=list)  # per member: module name -> output
    progress: TrainingProgress | None = None  # None outside a Trainer
    # int64 [B]: each sample's position in the training split (Batch.index), e.g. a memory bank's row; None in
    # validation and testing (positions in another split: a training-split bank must not be read or written there)
    index: Tensor | None = None


class LossTerm(nn.Module, abc.ABC):
    """One weighted term of the total loss; the module sums weight * term(inputs).

    `member` (terms that read the teacher): None reads the teacher, or an ensemble's combined
    output; an index reads that one member of an ensemble (multi-teacher distillation).

    A term is a submodule of the system (its `losses` ModuleDict): its parameters train with the
    student, and its buffers (`register_buffer`, persistent, e.g. a memory bank) are saved in every
    checkpoint and restored on resume. A term that writes such state in forward should do so only
    when `self.training` (the system is in eval mode for validation and testing) and `inputs.index`
    is given.
    """

    needs_teacher: bool = True
    # Submodules whose outputs this term reads: the module hooks exactly these.
    student_layers: tuple[str, ...] = ()
    teacher_layers: tuple[str, ...] = ()
    shown: tuple[str, ...] = ()  # the settings extra_repr shows after the weight (and member)

    def __init__(self, weight: float = 1.0, member: int | None = None) -> None:
        super().__init__()
        self.weight = check_number(
            self, "weight", weight, minimum=0.0, inclusive=True, why="It scales this term in the total loss."
        )
        if member is not None and (isinstance(member, bool) or not isinstance(member, int) or member < 0):
            raise ValueError(
                f"{type(self).__name__}: member must be the index of a teacher in teacher.members (0, 1, ...) or "
                f"null for the single (or combined) teacher, got {member!r}. Set distill.losses.<term>.member."
            )
        self.member = member

    def build(self, student_features: dict[str, Tensor], teacher_features: dict[str, Tensor]) -> None:
        """Called once, before optimisers are created, with features from a dry forward pass of a
        2-sample batch, so terms can create parameters sized to the real layers. Default: no-op."""

    def see_training_split(self, labels: Tensor | None) -> None:
        """Called when a Trainer sets the system up (before a checkpoint is restored and before optimisers
        exist), with the training split's labels by position, the rows `inputs.index` points at (their
        length is the number of training samples: a memory bank's size); None when the datamodule does
        not say. Default: no-op."""

    @abc.abstractmethod
    def forward(self, inputs: LossInputs) -> Tensor:
        """The unweighted scalar term; the caller applies `weight` so it can log both."""

    def teacher_logits(self, inputs: LossInputs) -> Tensor:
        """The teacher's logits (or member `member`'s) as a fixed target: detached, so no gradient reaches it."""
        if self.member is not None:
            return self._member_entry(inputs.member_logits, "logits").detach()
        if inputs.teacher_logits is None:
            raise ValueError(
                f"{type(self).__name__} compares the student with the teacher, but LossInputs.teacher_logits "
                "is None. Pass the teacher's logits for this batch, or drop this term from distill.losses "
                "to train on the labels alone."
            )
        return inputs.teacher_logits.detach()

    def progress(self, inputs: LossInputs) -> TrainingProgress:
        """The training progress of this batch, or a ValueError when the caller gave none."""
        if inputs.progress is None:
            raise ValueError(
                f"{type(self).__name__} follows a schedule over training (e.g. a warm-up), but LossInputs.progress "
                "is None: it is filled by the training system. Called on its own, pass "
                "progress=TrainingProgress(epoch=..., step=..., max_epochs=..., total_steps=...)."
            )
        return inputs.progress

    def teacher_features(self, inputs: LossInputs) -> dict[str, Tensor]:
        """The teacher's tapped features, or those of ensemble member `member`."""
        return (
            inputs.teacher_features if self.member is None else self._member_entry(inputs.member_features, "features")
        )

    def _member_entry(self, entries: list | None, what: str):
        if not entries or self.member >= len(entries):
            raise ValueError(
                f"{type(self).__name__} reads teacher member {self.member}, but this batch has the {what} of "
                f"{len(entries or ())} member(s). `member` indexes teacher.members (0 is the first); set it within "
                "range, or drop it to read the single (or combined) teacher."
            )
        return entries[self.member]

    def extra_repr(self) -> str:
        member = f", member={self.member}" if self.member is not None else ""
        return f"weight={self.weight}{member}" + "".join(f", {key}={getattr(self, key)!r}" for key in self.shown)


def build_terms(configs: Mapping[str, Mapping | None], prefix: str = "distill.losses") -> dict[str, LossTerm]:
    """Instantiate the loss terms, or say which key is wrong and how to fix it.

    A term's config must name its class (`_target_`); `+distill.losses.bogus.weight=1` creates a
    node without one, which would otherwise surface as a cryptic error minutes later. At least one
    term must have a weight above 0, or there is nothing to train on.
    """
    from hydra.errors import InstantiationException
    from hydra.utils import instantiate

    from kdlab.config import CONFIG_DIR

    terms: dict[str, LossTerm] = {}
    for name, conf in configs.items():
        if conf is None:
            continue
        if not isinstance(conf, Mapping) or "_target_" not in conf:
            shown = dict(conf) if isinstance(conf, Mapping) else conf
            known = sorted(p.stem for p in (Path(CONFIG_DIR) / "loss").glob("*.yaml"))  # the terms in conf/loss/
            raise ValueError(
                f"{prefix}.{name} is not a loss term: it has no `_target_` (got {shown!r}). "
                f"Add a term from conf/loss/ with +loss@{prefix}.{name}=<one of {', '.join(known)}>, "
                f"or change only the weight of a term the preset already has ({prefix}.<term>.weight=...)."
            )
        try:
            term = instantiate(conf)
        except InstantiationException as err:  # the term's own message, not Hydra's wrapping of it
            raise ValueError(f"{prefix}.{name}: {err.__cause__ or err}") from err
        if not isinstance(term, LossTerm):
            raise TypeError(
                f"{prefix}.{name} builds a {type(term).__name__}, not a kdlab.losses.LossTerm: its `_target_` "
                f"({conf['_target_']}) must name a LossTerm subclass, e.g. one of conf/loss/*.yaml."
            )
        terms[name] = term
    if not any(term.weight for term in terms.values()):
        weights = ", ".join(f"{prefix}.{n}.weight={t.weight}" for n, t in terms.items()) or "no terms at all"
        raise ValueError(
            f"No loss term is active ({weights}): the total loss would be 0 and nothing would train. "
            f"Give at least one term a weight above 0, e.g. {prefix}.ce.weight=1."
        )
    return terms


def finite_number(value: object) -> bool:
    """A real number that is neither inf nor NaN (not a bool, not a string of digits)."""
    return isinstance(value, Real) and not isinstance(value, bool) and math.isfinite(value)


def check_number(
    term: object, name: str, value: object, *, minimum: float, inclusive: bool, maximum: float = math.inf, why: str = ""
) -> float:
    """A config value as a float, or a ValueError that names the term, the key and the allowed range."""
    bound = (f">= {minimum}" if inclusive else f"> {minimum}") + (f" and <= {maximum}" if maximum < math.inf else "")
    if not (finite_number(value) and (value >= minimum if inclusive else value > minimum) and value <= maximum):
        raise ValueError(
            f"{type(term).__name__}: {name} must be a finite number {bound}, got {value!r}. "
            + (f"{why} " if why else "")
            + f"Set {name} in the term's config (conf/loss/*.yaml, or distill.losses.<term>.{name})."
        )
    return float(value)


def check_term_members(terms: Mapping[str, LossTerm], members: int | None, prefix: str = "distill.losses") -> None:
    """Each term's `member` names a member of this run's ensemble (`members` of them, None for one
    teacher), and a term that reads teacher features from an ensemble names whose."""
    for name, term in terms.items():
        key = f"{prefix}.{name}.member"
        if term.member is not None and not members:
            raise ValueError(
                f"{key}={term.member} reads one member of an ensemble, but this run has a single teacher. "
                f"Drop {key}, or distil from an ensemble (teacher=ensemble)."
            )
        if term.member is not None and term.member >= members:
            raise ValueError(
                f"{key}={term.member} names no member: the ensemble (teacher.members) has {members}, "
                f"numbered 0 to {members - 1}. Set {key} within that range."
            )
        if term.member is None and members and term.teacher_layers:
            raise ValueError(
                f"{prefix}.{name} reads teacher layer(s) {list(term.teacher_layers)}, but the teacher is an ensemble "
                f"of {members} nets: set {key}=<index> to the member whose features it reads "
                f"(+{key}=0 if the term's config has no `member` key)."
            )


def check_reduction(term: object, reduction: object) -> str:
    """The reduction name, or a ValueError listing the ones squared_error understands."""
    if not isinstance(reduction, str) or reduction not in REDUCTIONS:
        raise ValueError(
            f"{type(term).__name__}: reduction must be one of {', '.join(map(repr, REDUCTIONS))}, "
            f"got {reduction!r}. 'mean' averages over every element like nn.MSELoss, 'half_sum' is "
            "1/2 * sum of squared errors as in the reference article, 'sum' is the plain sum."
        )
    return reduction


def squared_error(prediction: Tensor, target: Tensor, reduction: str) -> Tensor:
    """Squared error reduced as named in REDUCTIONS; shared by LogitMSE and Hint so they agree."""
    return REDUCTIONS[reduction]((prediction - target).pow(2))
