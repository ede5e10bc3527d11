"""`TestAnalysis`: error analysis of every `trainer.test`, with no extra command.

Contract with the LightningModule: `test_step` returns
    {"student_logits": [B, C] (detached), "target": [B], "index": [B] positions in the test set,
     "teacher_logits": [B, C] (distillation runs only)}
and the raw uint8 test images are `trainer.datamodule.data_test.x` ([N, C, H, W]; three channels are drawn in
colour, any other count in grey from the first channel).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.loggers import TensorBoardLogger
from torch import Tensor

from kdlab.analysis import figures
from kdlab.analysis.stats import PredictionStats
from kdlab.tensorboard import IMAGES

log = logging.getLogger(__name__)

ANALYSIS_DIR = "analysis"
CONFUSION_PNG, RELIABILITY_PNG, DISAGREEMENTS_PNG = "confusion_student.png", "reliability.png", "disagreements.png"
REQUIRED = ("student_logits", "target")


class TestAnalysis(Callback):
    """Per-class accuracy, confusion matrix, calibration (ECE, reliability) and student-teacher disagreements.

    Args:
        output_dir: the run folder; figures go to `<output_dir>/analysis/` (default: the trainer's
            `default_root_dir`).
        max_images: most disagreeing test images drawn in the grid.
        net: what the figures call the tested net: "student" in a distillation, "teacher" when training
            one, the run's name for any other supervised run (a from-scratch baseline).

    After `trainer.test`, `results` holds the numbers (`PredictionStats.results`) plus "files", the
    PNGs written, relative to `output_dir`; `images` holds the rendered figures on rank zero.
    """

    __test__ = False  # not a pytest test class, despite the name

    def __init__(self, output_dir: str | Path | None = None, max_images: int = 64, net: str = "student") -> None:
        self.output_dir = None if output_dir is None else Path(output_dir)
        self.max_images = max_images
        self.net = net
        self.stats: PredictionStats | None = None
        self.results: dict[str, Any] = {}
        self.images: dict[str, np.ndarray] = {}
        self._seen: list[tuple[Tensor, Tensor, Tensor, Tensor]] = []
        self._has_teacher: bool | None = None

    # -- per batch: tensor ops only ---------------------------------------------------------------
    def on_test_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        num_classes = getattr(trainer.datamodule, "num_classes", None)
        if not num_classes:
            raise ValueError(
                "TestAnalysis needs the number of classes: use a datamodule with a `num_classes` attribute "
                "(every kdlab.data.ImageDataModule has one)."
            )
        self.stats = PredictionStats(int(num_classes)).to(pl_module.device)
        self.results, self.images, self._seen, self._has_teacher = {}, {}, [], None

    def on_test_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any,
                          batch_idx: int, dataloader_idx: int = 0) -> None:  # fmt: skip
        if not isinstance(outputs, Mapping) or any(key not in outputs for key in REQUIRED):
            got = f"a dict with keys {sorted(outputs)}" if isinstance(outputs, Mapping) else (
                "None" if outputs is None else f"a {type(outputs).__name__}")  # fmt: skip
            raise TypeError(
                f"TestAnalysis reads what test_step returns, but {type(pl_module).__name__}.test_step returned "
                f"{got}. Return {{'student_logits': logits.detach(), 'target': y, 'index': index}} "
                "(plus 'teacher_logits' in distillation runs), or drop the TestAnalysis callback."
            )
        teacher = outputs.get("teacher_logits")
        if self._has_teacher is None:
            self._has_teacher = teacher is not None
        elif self._has_teacher != (teacher is not None):
            raise ValueError(
                f"test_step returned teacher_logits for some batches but not for batch {batch_idx}: return them "
                "for every batch of a distillation run and for none of a supervised run."
            )
        s_pred, t_pred = self.stats.update(outputs["student_logits"], outputs["target"], teacher)
        index = outputs.get("index")
        if t_pred is not None and index is not None and trainer.is_global_zero:
            # Kept on the device, resolved once at the end: a boolean mask here would sync every step.
            self._seen.append((index, s_pred, t_pred, outputs["target"]))

    # -- at the end: numbers on every rank, files on rank zero --------------------------------------
    def on_test_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        results = self.stats.results()  # every rank: the states are summed across ranks here
        results["files"] = []
        if trainer.is_global_zero:
            folder = self.output_dir or Path(trainer.default_root_dir)
            results["files"] = self._draw(trainer, results, folder)
            for logger in trainer.loggers:
                if isinstance(logger, TensorBoardLogger):
                    log_images(logger.experiment, self.images, trainer.global_step)
        self.results = results
        self._seen = []

    def _draw(self, trainer: Trainer, results: dict[str, Any], folder: Path) -> list[str]:
        try:
            figures.require_matplotlib()
        except ImportError:
            log.warning(
                "matplotlib is not installed: the test analysis numbers are in the run record, but its PNGs and "
                "TensorBoard images were skipped (%s to get them).",
                figures.PLOTS_HINT,
            )
            return []
        student = results["student"]  # the tested net, whatever its role: PredictionStats' name for it
        title = f"{self.net}, test acc {figures.percent(student['acc'])}"
        models = {self.net: student, **({"teacher": results["teacher"]} if "teacher" in results else {})}
        drawn = {CONFUSION_PNG: figures.confusion_figure(student["confusion"], title),
                 RELIABILITY_PNG: figures.reliability_figure(models, results["n_bins"])}  # fmt: skip
        if grid := self._disagreement_grid(trainer, results.get("disagreements", 0)):
            drawn[DISAGREEMENTS_PNG] = grid
        written = []
        for name, fig in drawn.items():
            rgb = self.images[name.removesuffix(".png")] = figures.rgb_array(fig)
            figures.save_png(rgb, folder / ANALYSIS_DIR / name)
            written.append(f"{ANALYSIS_DIR}/{name}")
        return written

    def _disagreement_grid(self, trainer: Trainer, total: int):
        """The first `max_images` disagreements in test-set order among the images this rank saw.

        Under DDP that is rank zero's share of the test set: gathering every rank's images for a
        picture is not worth a collective; the count in the title is over all ranks.
        """
        index, s_pred, t_pred, target = first_disagreements(self._seen, self.max_images)
        if not len(index):
            return None
        raw = getattr(getattr(trainer.datamodule, "data_test", None), "x", None)
        if raw is None:
            log.warning(
                "TestAnalysis: no trainer.datamodule.data_test.x to take images from; disagreements.png skipped."
            )
            return None
        return figures.disagreement_figure(raw[index].numpy(), s_pred.tolist(), t_pred.tolist(), target.tolist(), total)


def first_disagreements(seen: list[tuple[Tensor, ...]], limit: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """From per-batch (index, student pred, teacher pred, target): the `limit` lowest-index disagreements, on CPU."""
    if not seen:
        return tuple(torch.zeros(0, dtype=torch.long) for _ in range(4))
    index, s_pred, t_pred, target = (torch.cat(parts).cpu() for parts in zip(*seen, strict=True))
    differ = s_pred != t_pred
    index, s_pred, t_pred, target = index[differ], s_pred[differ], t_pred[differ], target[differ]
    order = index.argsort()[:limit]
    return index[order], s_pred[order], t_pred[order], target[order]


def log_images(writer, images: dict[str, np.ndarray], step: int) -> None:
    """Each rendered figure as a TensorBoard image `visuals/<name>` (a SummaryWriter's add_image): a section
    of their own after the learning curves (kdlab.tensorboard says why that name)."""
    for name, rgb in images.items():
        writer.add_image(f"{IMAGES}/{name}", rgb, global_step=step, dataformats="HWC")
