"""Re-run the test pass of a finished run from its folder and write the analysis into it.

The folder holds `metrics.json` (a RunRecord) whose `files` name the student's weights
("weights"), its `_target_` config ("model") and the resolved run config ("config"); a
distillation run's record also names its teacher's weights. Test images are normalised here from
the raw uint8 tensors, so this does not depend on the data module's batch format.
"""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path

import lightning as L
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf
from torch import nn
from torch.utils.data import DataLoader

from kdlab.analysis.callback import TestAnalysis, log_images
from kdlab.checkpoints import load_weights
from kdlab.data import normalize
from kdlab.record import RunRecord

log = logging.getLogger(__name__)

DEFAULT_FILES = {"weights": "student.pt", "model": "student_model.yaml", "config": "config.yaml"}
TENSORBOARD_DIR = "tensorboard"


class FrozenNets(L.LightningModule):
    """Trained student (and teacher) on the raw test tensors; test_step follows TestAnalysis's contract."""

    def __init__(
        self,
        student: nn.Module,
        teacher: nn.Module | None,
        images: torch.Tensor,
        labels: torch.Tensor,
        mean: float,
        std: float,
    ) -> None:
        super().__init__()
        self.student, self.teacher = student, teacher
        self.register_buffer("images", images, persistent=False)  # [N, 1, 28, 28] uint8: 7.8 MB for 10k
        self.register_buffer("labels", labels, persistent=False)
        self.mean, self.std = mean, std

    def test_step(self, index: torch.Tensor, batch_idx: int) -> dict[str, torch.Tensor]:
        x = normalize(self.images[index], self.mean, self.std)
        out = {"student_logits": self.student(x), "target": self.labels[index], "index": index}
        if self.teacher is not None:
            out["teacher_logits"] = self.teacher(x)
        return out


class TestIndices(L.LightningDataModule):
    """Batches of test-set positions; `data_test` is the real data module's (its `.x` feeds the image grid)."""

    __test__ = False

    def __init__(self, data_test, num_classes: int, batch_size: int) -> None:
        super().__init__()
        self.data_test, self.num_classes, self.batch_size = data_test, num_classes, batch_size

    def test_dataloader(self) -> DataLoader:
        return DataLoader(torch.arange(len(self.data_test.x)), batch_size=self.batch_size)


def _file(run_dir: Path, record: RunRecord, role: str) -> Path:
    path = run_dir / record.files.get(role, DEFAULT_FILES[role])
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} is missing: scripts/evaluate.py rebuilds a run from its {', '.join(DEFAULT_FILES.values())} "
            f"(named in metrics.json's files as {', '.join(DEFAULT_FILES)}). Runs written before kdlab saved "
            "these cannot be re-evaluated; re-run the experiment instead."
        )
    return path


def teacher_weights(run_dir: Path, record: RunRecord) -> Path:
    """The teacher file the run distilled from, checked against the sha256 in its record."""
    ref = record.teacher
    if ref is None:
        raise ValueError(
            f"{run_dir / 'metrics.json'} is a distillation run without a teacher entry; cannot rebuild it."
        )
    path = Path(ref.checkpoint).expanduser()
    if not path.is_absolute() and not path.is_file():
        path = run_dir / path
    if not path.is_file():
        raise FileNotFoundError(
            f"The teacher weights this run distilled from, {ref.checkpoint}, are gone (teacher caches can be "
            "cleared). Restore the file or re-run the experiment; its teacher numbers cannot be rebuilt without it."
        )
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    if ref.sha256 and not digest.startswith(ref.sha256.lower()):  # the record may keep the full hex or a prefix
        raise ValueError(
            f"{path} has changed since the run read it (sha256 {digest[:16]}..., the record says "
            f"{ref.sha256[:16]}...): the teacher numbers would describe another net. Restore the original file."
        )
    return path


def evaluate_run(
    run_dir: str | os.PathLike, data_dir: str | None = None, accelerator: str = "cpu", batch_size: int = 1000
) -> RunRecord:
    """Test the run's saved student (and teacher) again; write PNGs, TensorBoard images and `record.analysis`."""
    run_dir = Path(run_dir)
    record = RunRecord.read(run_dir)
    cfg = OmegaConf.load(_file(run_dir, record, "config"))
    student = load_weights(
        instantiate(OmegaConf.load(_file(run_dir, record, "model"))), _file(run_dir, record, "weights"), role="student"
    )
    teacher = None
    if record.is_distillation:
        teacher = load_weights(instantiate(cfg.teacher.model), teacher_weights(run_dir, record), role="teacher")

    data_cfg = OmegaConf.to_container(cfg.data, resolve=True)
    if data_dir is not None:
        data_cfg["data_dir"] = str(data_dir)
    datamodule = instantiate(data_cfg, _convert_="all")
    datamodule.prepare_data()
    datamodule.setup("test")
    test = datamodule.data_test
    mean, std = float(datamodule.hparams.mean), float(datamodule.hparams.std)  # the defaults if config.yaml omits them
    module = FrozenNets(student, teacher, test.x, test.y, mean, std)

    analysis = TestAnalysis(run_dir)
    trainer = L.Trainer(
        accelerator=accelerator,
        devices=1,
        logger=False,
        callbacks=[analysis],
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        default_root_dir=run_dir,
    )
    trainer.test(module, datamodule=TestIndices(test, datamodule.num_classes, batch_size), verbose=False)

    if analysis.images and (run_dir / TENSORBOARD_DIR).is_dir():  # only runs that logged to TensorBoard
        from torch.utils.tensorboard import SummaryWriter

        with SummaryWriter(log_dir=str(run_dir / TENSORBOARD_DIR)) as writer:
            log_images(writer, analysis.images, record.global_step)
    recorded, measured = record.metric("test/acc"), analysis.results["student"]["acc"]
    if recorded is not None and measured is not None and abs(recorded - measured) > 1e-6:
        log.warning(
            "%s: the saved student scores %.4f on the test set, the record says test/acc=%.4f; "
            "the weights file may not be the tested checkpoint.",
            run_dir,
            measured,
            recorded,
        )
    record.analysis = analysis.results
    record.write(run_dir)
    return record
