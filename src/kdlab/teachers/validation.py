"""The frozen teacher's logits of the validation images, computed at the first validation of a fit and reused.

Validation images are not augmented and the teacher never changes, so every later epoch would run the
teacher on exactly the same inputs again; in a short distillation that is most of what validation costs.
The logits are kept in memory for one fit only (never on disk, never in a checkpoint), by each image's
position in the validation split (`Batch.index`), in the dtype the teacher computed them in, so a reused
logit is the very value the live teacher gave.

What keeps it exact is the DistillationModule's: used only when the loss terms read the teacher's logits
alone (a feature term needs the teacher to run), dropped when a fit reloads its dataloaders, and the first
validation batch of every epoch is scored live again and must agree with what is kept, so a split whose
images changed under the same positions stops the run instead of being scored against stale logits.
"""

from __future__ import annotations

import torch
from torch import Tensor


class ValidationLogitsError(RuntimeError):
    """The live teacher disagrees with its kept validation logits: the split's images changed within the fit."""


class ValidationLogits:
    """Logits [N, C] per teacher net (an ensemble's members in order), by position in the validation split."""

    def __init__(self) -> None:
        self.tables: list[Tensor] = []
        self.kept = torch.zeros(0, dtype=torch.bool)  # which positions hold a logit

    def get(self, index: Tensor) -> list[Tensor] | None:
        """The kept logits of these positions, one tensor per net; None unless every position is kept."""
        if not self.tables or int(index.max()) >= len(self.kept) or not bool(self.kept[index].all()):
            return None
        return [table[index] for table in self.tables]

    def put(self, index: Tensor, logits: list[Tensor]) -> None:
        """Keep the live teacher's logits of these positions, growing the tables to the largest position seen."""
        size = int(index.max()) + 1
        if not self.tables:
            self.tables = [torch.empty(size, *x.shape[1:], dtype=x.dtype, device=x.device) for x in logits]
            self.kept = torch.zeros(size, dtype=torch.bool, device=index.device)
        elif size > len(self.kept):
            self.tables = [_grown(table, size) for table in self.tables]
            self.kept = torch.cat([self.kept, self.kept.new_zeros(size - len(self.kept))])
        for table, x in zip(self.tables, logits, strict=True):
            table[index] = x.detach()
        self.kept[index] = True

    def check(self, index: Tensor, live: list[Tensor], tolerance: float) -> None:
        """Refuse the kept logits of these positions if the live teacher, scoring them now, gives other values."""
        known = self.kept[index] if int(index.max()) < len(self.kept) else None
        if known is None or not bool(known.any()):
            return
        for table, x in zip(self.tables, live, strict=True):
            kept, now = table[index][known].float(), x[known].float()
            if not torch.allclose(kept, now, rtol=tolerance, atol=tolerance):
                worst = float((kept - now).abs().max())
                raise ValidationLogitsError(
                    "The teacher's logits of the first validation batch differ from those it gave for the same "
                    f"positions earlier in this fit (max |difference| {worst:.3g}): the validation split's images "
                    "changed during the fit, so logits kept from an earlier epoch would score the wrong images. "
                    "Keep the validation split fixed within a fit, or set trainer.reload_dataloaders_every_n_epochs "
                    "(which keeps the teacher live on validation) if it must change."
                )


def _grown(table: Tensor, size: int) -> Tensor:
    grown = table.new_empty(size, *table.shape[1:])
    grown[: len(table)] = table
    return grown
