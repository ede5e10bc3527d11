"""Where each run's values sit in TensorBoard: learning curves open first, images in a section of their own.

How TensorBoard (2.21, read from the frontend it ships) lays out the TIME SERIES tab:
- a tag's *group* is its part before the first "/" (`val/acc` is in `val`), one section per group;
- sections come in the natural order of their tags (a "/" and digits before letters, then character
  by character), whichever plugin wrote them: scalars, images and histograms share the order;
- only the first two sections are open when the page loads; the others show their title only.
So `analysis/confusion_student` put the confusion matrices first and open, and Lightning's `epoch`
chart and `lr-AdamW` took the next places before the learning curves.

kdlab's layout, in that order: `test/*` (the final numbers, one point per run: they must keep their
metrics.json names, which are also the HPARAMS tab's metric columns; HPARAMS shows the first five
metric tags by name, so `test/acc` shows there without a click), `train/*` (per-term losses, accuracy,
and here also Lightning's `epoch` and learning rate, which belong to the training curve), `val/*`
(per-term losses, `val/acc`, `val/acc_best`), then the images under `IMAGES` = "visuals", a name that
sorts after "val". On opening, `test` and `train` are expanded; `val` is the next title, one click away.
Putting `val` among the first two would take renaming `test/*`, and then HPARAMS would show training
losses instead of the test accuracy by default: the final numbers matter more there.
"""

from __future__ import annotations

from collections.abc import Mapping

from lightning.pytorch.loggers import TensorBoardLogger as LightningTensorBoardLogger

IMAGES = "visuals"  # the section of the test analysis images: after train/ and val/ (see the module docstring)


def tensorboard_tag(name: str) -> str:
    """The tag a logged value gets in TensorBoard: Lightning's bookkeeping under `train/`, the rest as named."""
    return f"train/{name}" if name == "epoch" or name.startswith("lr-") else name


class TensorBoardLogger(LightningTensorBoardLogger):
    """Lightning's TensorBoardLogger with kdlab's tag layout (`tensorboard_tag`): `epoch` and `lr-AdamW`
    become `train/epoch` and `train/lr-AdamW`, so no section of their own opens before the learning curves.
    Only TensorBoard sees these names; metrics.json and the other loggers keep Lightning's."""

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        super().log_metrics({tensorboard_tag(name): value for name, value in metrics.items()}, step)
