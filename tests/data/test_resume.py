"""A run resumed from a mid-epoch checkpoint trains on exactly the batches, and shifts, it had left."""

import contextlib
import functools
import warnings

import pytest
import torch
from lightning.pytorch import Callback, LightningModule, Trainer

BATCHES_PER_EPOCH = 16  # 1000 training images / 64 = 15 full batches + 1 of 40


class Recorder(LightningModule):
    """Records what every training step receives."""

    def __init__(self):
        super().__init__()
        self.net = torch.nn.Linear(784, 10)
        self.seen = []

    def training_step(self, batch, batch_idx):
        affine = None if batch.affine is None else batch.affine.tolist()
        pixels = batch.pixels.sum((1, 2, 3), dtype=torch.int64).tolist()  # each view's fingerprint: elastic's too
        self.seen.append((self.current_epoch, batch_idx, batch.index.tolist(), batch.shift.tolist(), affine, pixels))
        return torch.nn.functional.cross_entropy(self.net(batch.x.flatten(1)), batch.y)

    def validation_step(self, batch, batch_idx):
        pass

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


class Crash(Exception):
    pass


class CheckpointThenCrash(Callback):
    """Saves a checkpoint after a given training step, then dies as a preempted job would."""

    def __init__(self, path, epoch, batch_idx):
        self.path, self.at = path, (epoch, batch_idx)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if (trainer.current_epoch, batch_idx) == self.at:
            trainer.save_checkpoint(self.path)
            raise Crash


@pytest.fixture
def fit(mnist_dir, make_dm):
    return functools.partial(_fit, make_dm, mnist_dir)


def _fit(make_dm, mnist_dir, callbacks=(), ckpt_path=None, model=None, **data) -> Recorder:
    dm = make_dm(mnist_dir, val_size=200, batch_size=64, augment_shift=2, **data)  # seed=None: torch.initial_seed()
    model = model or Recorder()
    trainer = Trainer(
        max_epochs=3,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        limit_val_batches=1,
        callbacks=list(callbacks),
    )
    with contextlib.suppress(Crash):  # the interrupted run's records stop at the crash
        trainer.fit(model, datamodule=dm, ckpt_path=ckpt_path)
    return model


@pytest.mark.parametrize(("epoch", "batch_idx"), [(0, 4), (1, 0), (1, 9), (0, BATCHES_PER_EPOCH - 1)])
def test_resumed_run_replays_the_rest_of_the_epoch(fit, tmp_path, epoch, batch_idx):
    torch.manual_seed(11)
    full = fit().seen
    assert len(full) == 3 * BATCHES_PER_EPOCH

    torch.manual_seed(11)
    ckpt = tmp_path / "mid.ckpt"
    before = fit([CheckpointThenCrash(ckpt, epoch, batch_idx)]).seen
    assert len(before) == epoch * BATCHES_PER_EPOCH + batch_idx + 1

    torch.manual_seed(22)  # another process, another initial seed: the checkpoint's seed must win
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        after = fit(ckpt_path=ckpt).seen
    assert not [w for w in caught if "resumable" in str(w.message)]
    assert before + after == full


def test_the_data_order_is_not_perturbed_by_the_global_rng(fit):
    """Dropout-like draws from torch's RNG between steps leave the order and the shifts alone."""

    class Noisy(Recorder):
        def training_step(self, batch, batch_idx):
            torch.rand(1000)
            return super().training_step(batch, batch_idx)

    torch.manual_seed(5)
    quiet = fit().seen
    torch.manual_seed(5)
    assert fit(model=Noisy()).seen == quiet  # same batches, same shifts


@pytest.mark.parametrize("elastic", [None, {"alpha": 34, "sigma": 4}], ids=["affine", "affine+elastic"])
def test_a_resumed_run_draws_the_affine_distortions_it_had_left(fit, tmp_path, elastic):
    ranges = {"rotate": 10, "scale": [0.9, 1.1], "translate": 1, "shear": 5}
    affine = {"augment_affine": ranges if elastic is None else {**ranges, "elastic": elastic}}
    torch.manual_seed(3)
    full = fit(**affine).seen
    assert full[0][4] is not None and len(full) == 3 * BATCHES_PER_EPOCH
    torch.manual_seed(3)
    ckpt = tmp_path / "mid.ckpt"
    before = fit([CheckpointThenCrash(ckpt, 1, 3)], **affine).seen
    torch.manual_seed(4)
    after = fit(ckpt_path=ckpt, **affine).seen
    assert before + after == full  # the same images, shifts and distortions, bit for bit
