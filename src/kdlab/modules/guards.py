"""Catch a diverged run where it happens, without a host sync per step."""

from __future__ import annotations

import torch
from torch import Tensor


class DivergenceError(RuntimeError):
    """The loss went non-finite: the run's numbers would be meaningless, so it stops."""


class NonFiniteWatch:
    """Remembers, on the loss's device, the first step at which each named value went NaN or inf.

    `update` is a few tiny tensor ops and never syncs; `check` syncs once and raises. Reading a
    Python bool per step instead (`if not loss.isfinite()`) would stall a GPU on every step.
    """

    def __init__(self, names: list[str]) -> None:
        self.names = list(names)
        self.first_bad: Tensor | None = None  # per name: first non-finite step, -1 while finite

    def update(self, step: int, values: list[Tensor]) -> None:
        bad = ~torch.isfinite(torch.stack([v.detach().float() for v in values]))
        if self.first_bad is None or self.first_bad.device != bad.device:
            self.first_bad = torch.full(bad.shape, -1, dtype=torch.long, device=bad.device)
        self.first_bad = torch.where(bad & (self.first_bad < 0), step, self.first_bad)

    def check(self, hint: str = "") -> None:
        if self.first_bad is None:
            return
        first = self.first_bad.tolist()  # the one sync
        bad = {name: step for name, step in zip(self.names, first, strict=True) if step >= 0}
        if not bad:
            return
        step = min(bad.values())
        terms = [name for name, s in bad.items() if s == step and name != "total"] or ["total"]
        raise DivergenceError(
            f"Training diverged: the loss became non-finite (NaN or inf) at optimiser step {step}, "
            f"first in the term(s) {', '.join(terms)}. The run stops here instead of reporting "
            f"numbers from a broken model. {hint}".strip()
        )

    def reset(self) -> None:
        self.first_bad = None
