"""Re-run the test pass of a finished run from its folder and write the analysis into it.

The folder is read by kdlab.runfolder (the same reader as export): the student, and the teacher or
each ensemble member, every net fed the test images normalised by the data it was trained on. An
ensemble is tested as in training: its members' logits combined by `teacher.combine` at T=1. The test set
is the run's own datamodule's, so any dataset a run can train on can be evaluated again.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import lightning as L
import torch
from torch.utils.data import DataLoader

from kdlab.analysis.callback import TestAnalysis, log_images
from kdlab.record import RunRecord
from kdlab.runfolder import RunFolder, read_run_folder

log = logging.getLogger(__name__)

TENSORBOARD_DIR = "tensorboard"


class FrozenNets(L.LightningModule):
    """The folder's trained nets on the raw test tensors; test_step follows TestAnalysis's contract."""

    def __init__(self, run: RunFolder, images: torch.Tensor, labels: torch.Tensor) -> None:
        super().__init__()
        self.run = run
        self.models = torch.nn.ModuleList(n.model for n in run.nets)  # each behind its own normalisation
        self.register_buffer("images", images, persistent=False)  # uint8 [N, C, H, W]: 7.8 MB for MNIST's 10k
        self.register_buffer("labels", labels, persistent=False)
        self.register_buffer("member_hits", torch.zeros(len(run.record.members), dtype=torch.long), persistent=False)

    def test_step(self, index: torch.Tensor, batch_idx: int) -> dict[str, torch.Tensor]:
        pixels, target = self.images[index], self.labels[index]
        logits = [model(pixels) for model in self.models]
        out = {"student_logits": logits[0], "target": target, "index": index}
        if len(logits) > 1:
            out["teacher_logits"] = self.run.teacher_logits(logits[1:])
        if self.run.combine is not None:  # each member too, as training's test/member<i>_acc
            self.member_hits += torch.stack([(m.argmax(1) == target).sum() for m in logits[1:]])
        return out


class TestIndices(L.LightningDataModule):
    """Batches of test-set positions; `data_test` is the real datamodule's (its `.x` feeds the image grid)."""

    __test__ = False

    def __init__(self, data_test, num_classes: int, batch_size: int) -> None:
        super().__init__()
        self.data_test, self.num_classes, self.batch_size = data_test, num_classes, batch_size

    def test_dataloader(self) -> DataLoader:
        return DataLoader(torch.arange(len(self.data_test.x)), batch_size=self.batch_size)


def evaluate_run(
    run_dir: str | os.PathLike, data_dir: str | None = None, accelerator: str = "cpu", batch_size: int = 1000
) -> RunRecord:
    """Test the run's saved student (and teacher or ensemble) again; write PNGs, TensorBoard images and
    `record.analysis` (plus `analysis.members`, each ensemble member's accuracy)."""
    run_dir = Path(run_dir)
    run = read_run_folder(run_dir)
    test = run.datamodule(data_dir).data_test
    module = FrozenNets(run, test.x, test.y)

    analysis = TestAnalysis(run_dir, net="student" if run.record.is_distillation else run.record.name)
    trainer = L.Trainer(accelerator=accelerator, devices=1, callbacks=[analysis], default_root_dir=run_dir,
                        logger=False, enable_progress_bar=False, enable_model_summary=False,
                        enable_checkpointing=False)  # fmt: skip
    trainer.test(module, datamodule=TestIndices(test, run.spec.num_classes, batch_size), verbose=False)

    if analysis.images and (run_dir / TENSORBOARD_DIR).is_dir():  # only runs that logged to TensorBoard
        from torch.utils.tensorboard import SummaryWriter

        with SummaryWriter(log_dir=str(run_dir / TENSORBOARD_DIR)) as writer:
            log_images(writer, analysis.images, run.record.global_step)
    record, results = run.record, analysis.results
    if run.combine is not None:
        results["members"] = [{"acc": hits / len(test)} for hits in module.member_hits.tolist()]
    measured = {"test/acc": results["student"]["acc"], "test/teacher_acc": results.get("teacher", {}).get("acc")}
    measured.update({f"test/member{i}_acc": m["acc"] for i, m in enumerate(results.get("members", []))})
    for key, value in measured.items():
        recorded = record.metric(key)
        if recorded is not None and value is not None and abs(recorded - value) > 1e-6:
            log.warning("%s: the saved nets score %s=%.4f on the test set, the record says %.4f; the weights "
                        "file may not be the tested checkpoint, or the test set is another.",
                        run_dir, key, value, recorded)  # fmt: skip
    if "omitted" in record.analysis:  # training's omitted-class numbers: this pass does not recompute them
        results["omitted"] = record.analysis["omitted"]
    record.analysis = results
    record.write(run_dir)
    return record
