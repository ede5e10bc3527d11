"""The Trainer hands every step a Batch made by the datamodule's hook: augmented for training only."""

import torch
from lightning.pytorch import LightningModule, Trainer

from kdlab.data import Batch
from kdlab.data import datamodule as datamodule_module
from kdlab.data import mnist as mnist_module


class Probe(LightningModule):
    def __init__(self):
        super().__init__()
        self.net = torch.nn.Linear(784, 10)
        self.seen = []

    def _step(self, batch, stage):
        assert isinstance(batch, Batch)
        self.seen.append((stage, batch.x.dtype, batch.shift is None))
        return torch.nn.functional.cross_entropy(self.net(batch.x.flatten(1)), batch.y)

    def training_step(self, batch, batch_idx):
        return self._step(batch, "train")

    def validation_step(self, batch, batch_idx):
        self._step(batch, "val")

    def test_step(self, batch, batch_idx):
        self._step(batch, "test")

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_trainer_routes_batches_through_the_datamodule_hook(mnist_dir, make_dm, monkeypatch):
    shifts = []
    real_shift = datamodule_module.random_shift
    monkeypatch.setattr(
        datamodule_module, "random_shift", lambda x, m, generator: shifts.append(m) or real_shift(x, m, generator)
    )

    dm = make_dm(mnist_dir, augment_shift=2)
    model = Probe()
    trainer = Trainer(
        fast_dev_run=2, accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False
    )
    trainer.fit(model, datamodule=dm)
    trainer.test(model, datamodule=dm, verbose=False)
    assert [s for s, _, _ in model.seen] == ["train", "train", "val", "val", "test", "test"]
    assert all(dtype == torch.float32 for _, dtype, _ in model.seen)
    assert [none for _, _, none in model.seen] == [False, False, True, True, True, True]
    assert shifts == [2, 2]  # once per training batch, never for val/test


def test_files_are_fetched_and_checked_once_per_datamodule_not_again_at_every_fit_and_test(mnist_dir, make_dm,
                                                                                           monkeypatch):  # fmt: skip
    """kdlab.run prepares and reads the data before the Trainer exists; Lightning's fit and test then call
    prepare_data() again, which re-verified MNIST's four files (MD5s and IDX reads) twice per run for nothing."""
    calls = []
    real = mnist_module.ensure_files
    monkeypatch.setattr(mnist_module, "ensure_files", lambda *a, **k: calls.append(a[0]) or real(*a, **k))
    dm = make_dm(mnist_dir)
    dm.prepare_data()  # as kdlab.run.fit.prepare_data does, before it reads the spec
    dm.prepare_data()  # not read yet: checked again (another process may be fetching into the folder)
    assert len(calls) == 2
    dm.setup("fit")
    trainer = Trainer(
        fast_dev_run=2, accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False
    )
    trainer.fit(Probe(), datamodule=dm)
    trainer.test(Probe(), datamodule=dm, verbose=False)
    assert len(calls) == 2  # fit and test served the tensors read once, without a third and fourth survey
