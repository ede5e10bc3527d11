"""The epoch lines: a resumed epoch's time is how long it took, not the time since the machine booted."""

import logging
import re

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader

from kdlab.callbacks import EpochLines


class Tiny(L.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(4, 1)

    def training_step(self, batch, batch_idx):
        return self.layer(batch).pow(2).mean()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)

    def train_dataloader(self):
        return DataLoader(torch.randn(8, 4), batch_size=2)  # 4 steps an epoch


class StopMidEpoch(L.Callback):
    """Saves a checkpoint after step 2 of the second epoch and dies, as a run stopped by a signal leaves it."""

    def __init__(self, path) -> None:
        self.path = path

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.current_epoch == 1 and batch_idx == 1:
            trainer.save_checkpoint(self.path)
            raise RuntimeError("stopped")


def fit(tmp_path, *callbacks, ckpt_path=None) -> None:
    off = dict(logger=False, enable_progress_bar=False, enable_checkpointing=False, enable_model_summary=False)
    trainer = L.Trainer(max_epochs=3, callbacks=[EpochLines("tiny"), *callbacks], default_root_dir=tmp_path, **off)
    trainer.fit(Tiny(), ckpt_path=ckpt_path, weights_only=False)


def test_an_epoch_resumed_midway_shows_the_time_since_the_resume(tmp_path, caplog):
    ckpt = tmp_path / "stopped.ckpt"
    with pytest.raises(RuntimeError, match="stopped"):
        fit(tmp_path, StopMidEpoch(ckpt))
    caplog.set_level(logging.INFO, logger="kdlab.progress")
    fit(tmp_path, ckpt_path=ckpt)
    lines = [r.getMessage() for r in caplog.records if " epoch " in r.getMessage()]
    assert [line.split("  ")[0] for line in lines] == ["[tiny] epoch 2/3", "[tiny] epoch 3/3"]
    took = re.search(r"  (\S+)( since resume)?  ETA ", lines[0])
    assert took.group(2), lines[0]  # the resumed epoch's time is its part since the resume, and says so
    assert re.fullmatch(r"[0-5]s", took.group(1)), lines[0]  # seconds, not the machine's uptime ("3h53m")
    assert " since resume" not in lines[1]


class LogsValAcc(Tiny):
    """Logs val/acc = 0.1 x (epoch + 1) at each validation, so a line shows which epoch's value it prints."""

    def val_dataloader(self):
        return DataLoader(torch.randn(4, 4), batch_size=2)

    def validation_step(self, batch, batch_idx):
        self.log("val/acc", 0.1 * (self.current_epoch + 1))


def test_an_epoch_that_did_not_validate_shows_no_validation_accuracy(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="kdlab.progress")
    off = dict(logger=False, enable_progress_bar=False, enable_checkpointing=False, enable_model_summary=False)
    trainer = L.Trainer(max_epochs=4, check_val_every_n_epoch=2, callbacks=[EpochLines("tiny")],
                        default_root_dir=tmp_path, **off)  # fmt: skip
    trainer.fit(LogsValAcc())
    shown = [
        re.search(r"val acc (\S+)", r.getMessage()).group(1) for r in caplog.records if " epoch " in r.getMessage()
    ]
    # epochs 1 and 3 did not validate: Lightning still holds epoch 2's 20.00% at epoch 3, which is not epoch 3's
    assert shown == ["-", "20.00%", "-", "40.00%"]
