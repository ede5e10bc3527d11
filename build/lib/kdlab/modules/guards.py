"""Catch a diverged run where it happens, without a host sync per step (see kdlab.modules.tally)."""

from __future__ import annotations


class DivergenceError(RuntimeError):
    """The loss went non-finite: the run's numbers would be meaningless, so it stops."""


def divergence_error(first_bad: dict[str, int], hint: str = "") -> DivergenceError:
    """The error for values that went NaN or inf; `first_bad` maps a value's name to its first bad step."""
    step = min(first_bad.values())
    terms = [name for name, s in first_bad.items() if s == step and name != "total"] or ["total"]
    return DivergenceError(
        f"Training diverged: the loss became non-finite (NaN or inf) at optimiser step {step}, "
        f"first in the term(s) {', '.join(terms)}. The run stops here instead of reporting "
        f"numbers from a broken model. {hint}".strip()
    )
