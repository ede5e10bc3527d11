"""The progress bar a terminal shows: one line of 80 columns, epochs counted from 1, kdlab's three numbers."""

import io

import lightning as L
import torch
from rich.console import Console
from torch.utils.data import DataLoader

from kdlab.callbacks import RichBar


class Logged(L.LightningModule):
    """Logs to the bar what kdlab's systems log (train/val loss and acc, val/acc_best), and more that it leaves out."""

    def __init__(self) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(4, 1)

    def training_step(self, batch, batch_idx):
        if batch_idx == 0:
            self.log_dict({"train/loss": 0.1234, "train/acc": 0.5, "train/loss_kd": 1.5}, prog_bar=True)
        return None  # no optimisation: the bar is all this test looks at, over as many steps as MNIST's epoch

    def validation_step(self, batch, batch_idx):
        self.log_dict({"val/loss": 0.2, "val/acc": 0.9812, "val/acc_best": 0.982, "val/agreement": 0.99}, prog_bar=True)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.0)

    def train_dataloader(self):
        return DataLoader(torch.zeros(1875, 4), batch_size=1)  # MNIST's 60k images in batches of 32

    def val_dataloader(self):
        return DataLoader(torch.zeros(2, 4), batch_size=1)


class Snapshot(L.Callback):
    """What an 80-column terminal shows of the bar at the end of the first epoch (after its validation)."""

    def __init__(self, bar: RichBar) -> None:
        self.bar, self.lines = bar, []

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        console = Console(width=80, file=io.StringIO(), record=True, color_system=None)
        console.print(self.bar.progress.get_renderable())
        self.lines = [line.rstrip() for line in console.export_text().splitlines() if line.strip()]
        trainer.should_stop = True  # the widest case is the first of many epochs: one is enough


def test_the_bar_is_one_line_of_80_columns_counting_epochs_from_1(tmp_path):
    bar = RichBar(refresh_rate=1)
    snapshot = Snapshot(bar)
    trainer = L.Trainer(max_epochs=150, callbacks=[bar, snapshot], logger=False, enable_checkpointing=False,
                        enable_model_summary=False, num_sanity_val_steps=0, default_root_dir=tmp_path)  # fmt: skip
    trainer.fit(Logged())
    assert len(snapshot.lines) == 1, "\n".join(snapshot.lines)  # the bar's line, not wrapped
    (line,) = snapshot.lines
    assert line.startswith("epoch 1/150 ") and "1875/1875" in line
    assert line.endswith("loss: 0.1234 val: 98.12% best: 98.20%")
    assert len(line) <= 80


def test_epoch_description_counts_from_1():
    from kdlab.callbacks.progress import epoch_description

    assert epoch_description(0, 30) == "epoch 1/30"
    assert epoch_description(29, 30) == "epoch 30/30"
    assert epoch_description(4, None) == "epoch 5"  # max_steps alone: no total
    assert epoch_description(4, -1) == "epoch 5"
