"""Numbers a loss term can compute with: a setting at which it is degenerate in float32 is refused.

A temperature, weight or scale at which a term underflows (its weighted value exactly 0 although student and
teacher disagree), overflows (inf or NaN, in the value or its gradient) or stops depending on the teacher
would let a run report distillation while learning from one side alone. The range that works is found by
computing in float32, the dtype the terms run in (autocast keeps softmax and its logs there), with
subnormals flushed to zero as kdlab's runs compute on the CPU: never a hand-picked constant.
"""

from __future__ import annotations

import copy

import torch

from kdlab.config import ConfigError
from kdlab.losses.base import LossInputs, LossTerm, TrainingProgress

# The probe's batch is the first of a run: a term that ramps in (a warm-up) is probed at its weakest.
FIRST_STEP = TrainingProgress(epoch=0, step=0, max_epochs=None, total_steps=None)


def _probe_value(term: LossTerm, teacher_shift: int, num_classes: int, members: int | None) -> tuple[float, bool]:
    """(weight x term, whether it and its gradient are finite) on fixed float32 logits: the student prefers
    class 0, the teacher class `teacher_shift`, one logit unit between neighbouring classes."""
    torch.set_flush_denormal(True)  # as every kdlab run computes on the CPU (kdlab.run.main): subnormals are 0
    ranked = torch.arange(num_classes, dtype=torch.float32).flip(0)
    student = ranked.repeat(2, 1).requires_grad_(True)
    teacher = torch.roll(ranked, teacher_shift).repeat(2, 1)
    inputs = LossInputs(student, torch.tensor([0, 1]), teacher, progress=FIRST_STEP,
                        member_logits=[teacher] * members if members else None)  # fmt: skip
    value = term.weight * term(inputs)
    (grad,) = torch.autograd.grad(value, student, allow_unused=True)
    finite = bool(value.isfinite()) and (grad is None or bool(grad.isfinite().all()))
    return float(value.detach()), finite


def degenerate(term: LossTerm, num_classes: int, members: int | None) -> str | None:
    """Why `term` computes nothing useful in float32 at its settings (None: it does); see the module docstring."""
    if term.student_layers or term.teacher_layers:
        return None  # reads features, which a probe has not got; the weight is checked alone
    one, finite = _probe_value(term, 1, num_classes, members)
    if not finite:
        return "it overflows: its value or gradient is inf or NaN"
    if one == 0.0:
        wrong = "student and teacher disagree" if term.needs_teacher else "the student is wrong on half the batch"
        return f"it underflows: its weighted value is exactly 0 although {wrong}"
    if term.needs_teacher and _probe_value(term, 2, num_classes, members)[0] == one:
        return "it no longer depends on the teacher: two different teachers give the very same value"
    return None


def working_range(term: LossTerm, key: str, num_classes: int, members: int | None) -> tuple[float, float] | None:
    """The powers of ten of `key` (e.g. temperature) at which the term is not degenerate, lowest and highest."""
    good = []
    for exponent in range(-45, 46):
        probe = copy.deepcopy(term)
        setattr(probe, key, 10.0**exponent)
        if degenerate(probe, num_classes, members) is None:
            good.append(10.0**exponent)
    return (good[0], good[-1]) if good else None


def check_numerics(name: str, term: LossTerm, num_classes: int, members: int | None, prefix: str = "distill.losses"):
    """Refuse a term that is degenerate in float32, naming the key and the range that works.

    A ConfigError, as every refusal of a config value: `train.py` exits 2 with one line saying why.
    """
    if not term.weight:
        return
    if term.student_layers or term.teacher_layers:
        f32 = torch.finfo(torch.float32)  # subnormals are flushed to 0: the smallest weight is the smallest normal
        if not f32.tiny <= term.weight <= f32.max:
            raise ConfigError(f"{prefix}.{name}.weight={term.weight:g} is 0 or inf in float32: use a weight between "
                              f"{f32.tiny:.1e} and {f32.max:.1e}.")  # fmt: skip
        return
    if (why := degenerate(term, num_classes, members)) is None:
        return
    ranges = []
    for key in ("temperature", "weight", "alpha", "beta"):
        value = getattr(term, key, None)
        span = working_range(term, key, num_classes, members) if isinstance(value, float) else None
        if span is not None and not span[0] <= value <= span[1]:
            ranges.append(f"{prefix}.{name}.{key}={value:g} is outside {span[0]:.0e} .. {span[1]:.0e}, "
                          "the range in which it works in float32")  # fmt: skip
    # A term that reads the teacher and adds nothing leaves the labels alone; one that reads the labels, the teacher.
    left = "learning from labels alone" if term.needs_teacher else "learning from the teacher alone"
    raise ConfigError(
        f"{prefix}.{name} would train on nothing: {why} ({type(term).__name__} at its settings, computed in "
        f"float32). {'; '.join(ranges) or 'Change its settings'}. A run would report this term while {left}, "
        "so it is refused."
    )
