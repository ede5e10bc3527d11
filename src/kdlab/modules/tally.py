"""Training-step values kept on the device and read back once per window: metrics and the divergence check.

Updating torchmetrics objects per step costs Python bookkeeping, and reading a value back (`.item()`,
`if not loss.isfinite()`) would stall a GPU on every step; even a few small tensor ops per step are
noticeable on a small net. So a step only keeps references to its detached loss values, logits and
labels. Every CHECK_EVERY steps and at the end of the epoch the window is folded into the epoch's sums
by a handful of batched ops and one host read, which also finds the first step at which any value
went NaN or inf: the run stops there instead of reporting numbers from a broken model.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor

PENDING = ("values", "logits", "targets", "sizes", "steps")  # what a step keeps until the next fold


class DivergenceError(RuntimeError):
    """The loss went non-finite: the run's numbers would be meaningless, so it stops."""


class StepTally:
    """Sums of `names` (weighted by batch size), correct predictions and images over one training epoch.

    `add` never syncs; `fold` syncs once and raises DivergenceError if a value went non-finite.
    """

    def __init__(self, names: Sequence[str]) -> None:
        self.names = list(names)
        self._sums: Tensor | None = None  # [len(names) + 2]: weighted value sums, correct, images
        self.reset()

    @property
    def pending(self) -> int:
        """Steps added since the last fold."""
        return len(self._sizes)

    def add(self, step: int, values: Sequence[Tensor], logits: Tensor, target: Tensor) -> None:
        """Keep this step's values (detached: no graph is kept alive); no tensor op, no sync."""
        self._values.extend(v.detach() for v in values)  # len(names) scalars per step
        self._logits.append(logits.detach())  # the student's logits [B, C]
        self._targets.append(target)
        self._sizes.append(len(target))  # known on the host: no sync
        self._steps.append(step)  # the optimiser step, for the error message

    def fold(self, hint: Callable[[], str] = str) -> None:
        """Add the pending steps to the epoch's sums; one host read. Raises DivergenceError on NaN/inf."""
        if not self._sizes:
            return
        values = torch.stack(self._values).view(len(self._sizes), len(self.names))
        # float64 where the device has it: exact image counts and no drift over long epochs
        dtype = torch.float32 if values.device.type == "mps" else torch.float64
        values = values.to(dtype)
        sizes = torch.tensor(self._sizes, dtype=dtype, device=values.device)
        correct = (torch.cat(self._logits).argmax(1) == torch.cat(self._targets)).sum().to(dtype)
        sums = torch.cat([(values * sizes[:, None]).sum(0), correct[None], sizes.sum()[None]])
        self._sums = sums if self._sums is None else self._sums + sums
        finite = torch.isfinite(values).all(1)
        steps = self._steps
        self.reset(keep_sums=True)
        if bool(finite.all()):  # the one sync
            return
        bad = torch.isfinite(values).logical_not().T.tolist()  # per name, per step
        first = {name: steps[row.index(True)] for name, row in zip(self.names, bad, strict=True) if any(row)}
        step = min(first.values())
        terms = [name for name, s in first.items() if s == step and name != "total"] or ["total"]
        raise DivergenceError(
            f"Training diverged: the loss became non-finite (NaN or inf) at optimiser step {step}, "
            f"first in the term(s) {', '.join(terms)}. The run stops here instead of reporting "
            f"numbers from a broken model. {hint()}".strip()
        )

    def take(self) -> tuple[dict[str, Tensor], Tensor, Tensor] | None:
        """The epoch's means of `names`, its accuracy and its image count (tensors, no sync); then reset.

        None when no step was folded (a rank that trained on nothing). Fold first: pending steps are dropped.
        """
        sums = self._sums
        self.reset()
        if sums is None:
            return None
        count = sums[-1]
        means = {name: sums[i] / count for i, name in enumerate(self.names)}
        return means, sums[-2] / count, count

    def state_dict(self) -> dict:
        """The epoch so far, as it stands (folded sums and the pending window): a resumed epoch adds up the same."""
        return {"sums": self._sums, **{key: list(getattr(self, f"_{key}")) for key in PENDING}}

    def load_state_dict(self, state: dict) -> None:
        self._sums = state["sums"]
        for key in PENDING:
            setattr(self, f"_{key}", list(state[key]))

    def reset(self, keep_sums: bool = False) -> None:
        self._values, self._logits, self._targets, self._sizes, self._steps = [], [], [], [], []
        if not keep_sums:
            self._sums = None
