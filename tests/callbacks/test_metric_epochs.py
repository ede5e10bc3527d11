"""metrics.json says which epoch each metric comes from: val/* the last, val/acc_best the best, test/* the tested."""

import json
from pathlib import Path

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from torch.utils.data import DataLoader
from torchmetrics import MaxMetric

from kdlab.record import RunRecord

VAL_ACC = [0.5, 0.9, 0.7, 0.9, 0.8]  # the best epoch is the 2nd: the first to reach 0.9, as the checkpoint keeps


class Scripted(L.LightningModule):
    """Validation accuracies from VAL_ACC, one per epoch, and val/acc_best as kdlab's modules keep it."""

    def __init__(self) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(4, 1)
        self.val_acc_best = MaxMetric()
        self.val_acc_best.persistent(True)

    def training_step(self, batch, batch_idx):
        return self.layer(batch).pow(2).mean()

    def validation_step(self, batch, batch_idx):
        pass

    def on_validation_epoch_end(self):
        if self.trainer.sanity_checking:
            return
        acc = torch.tensor(VAL_ACC[self.current_epoch])
        self.val_acc_best(acc)
        self.log_dict({"val/acc": acc, "val/acc_best": self.val_acc_best.compute()})

    def test_step(self, batch, batch_idx):
        pass

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)

    def test_dataloader(self):
        return DataLoader(torch.randn(2, 4), batch_size=2)

    def train_dataloader(self):
        return DataLoader(torch.randn(4, 4), batch_size=2)

    def val_dataloader(self):
        return DataLoader(torch.randn(2, 4), batch_size=2)


def fit(tmp_path, epochs: int, ckpt_path=None):
    from kdlab.callbacks.metric_epochs import MetricEpochs

    tracked = MetricEpochs()
    best = ModelCheckpoint(dirpath=tmp_path, filename="best_{epoch}", monitor="val/acc", mode="max")
    last = ModelCheckpoint(dirpath=tmp_path, filename="last", monitor=None)
    trainer = L.Trainer(max_epochs=epochs, callbacks=[tracked, best, last], logger=False, enable_progress_bar=False,
                        enable_model_summary=False, default_root_dir=tmp_path)  # fmt: skip
    trainer.fit(Scripted(), ckpt_path=ckpt_path, weights_only=False)
    return tracked, best, trainer


def test_the_last_and_the_best_epoch_are_followed_through_a_resume(tmp_path):
    from kdlab.checkpoints import checkpoint_epoch

    tracked, best, trainer = fit(tmp_path, 5)
    trainer.test(ckpt_path=best.best_model_path, weights_only=False, verbose=False)  # restores callbacks' states too
    assert (tracked.last_val, tracked.best) == (5, 2)
    assert checkpoint_epoch(best.best_model_path) == 2  # the tested checkpoint is the best epoch's
    assert tracked.of(["val/acc", "val/acc_best", "val/loss", "test/acc"]) == {"val/acc": 5, "val/acc_best": 2,
                                                                              "val/loss": 5}  # fmt: skip
    tracked.tested = 2
    assert tracked.of(["test/acc", "test/kl"]) == {"test/acc": 2, "test/kl": 2}

    stopped, *_ = fit(tmp_path / "parts", 3)  # stopped after epoch 3, then resumed to 5
    resumed, *_ = fit(tmp_path / "parts", 5, ckpt_path=tmp_path / "parts" / "last.ckpt")
    assert (stopped.last_val, stopped.best) == (3, 2) and (resumed.last_val, resumed.best) == (5, 2)

    fit(tmp_path / "old", 3)  # a checkpoint that does not say when its best was: no best epoch is claimed
    checkpoint = torch.load(tmp_path / "old" / "last.ckpt", weights_only=False)
    del checkpoint["kdlab_metric_epochs"]
    torch.save(checkpoint, tmp_path / "old" / "last.ckpt")
    unknown, *_ = fit(tmp_path / "old", 5, ckpt_path=tmp_path / "old" / "last.ckpt")
    assert (unknown.last_val, unknown.best) == (5, None)


def test_a_run_records_the_epoch_of_each_metric(make_cfg):
    from kdlab.run import train

    cfg = make_cfg("experiment=student_scratch_mlp", "trainer.max_epochs=3")
    record, _ = train(cfg)
    epochs = json.loads((Path(cfg.paths.output_dir) / "metrics.json").read_text())["metric_epochs"]
    best = int(Path(record.files["best_checkpoint"]).stem.removeprefix("epoch_")) + 1  # epoch_{0-based}.ckpt
    assert epochs["val/acc"] == epochs["val/loss"] == record.epochs == 3
    assert epochs["val/acc_best"] == epochs["test/acc"] == epochs["test/loss"] == best
    assert set(epochs) == set(record.metrics)


@pytest.mark.unit
def test_a_record_written_before_metric_epochs_still_reads():
    data = json.loads(RunRecord(name="x", kind="supervised", metrics={"val/acc": 0.9}).to_json())
    del data["metric_epochs"]
    assert RunRecord.from_json(json.dumps(data)).metric_epochs == {}
