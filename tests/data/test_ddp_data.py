"""The data layer under real two-process DDP (gloo, CPU): disjoint shards, per-rank shifts, exact resume."""

import json

import pytest
import torch
from lightning.pytorch import Callback, LightningModule, Trainer

from kdlab.data import MNISTDataModule

pytestmark = pytest.mark.slow

STEPS = 8  # 1000 training images on 2 ranks = 500 each / 64 = 7 full batches + 1 of 52


class Recorder(LightningModule):
    """Each rank writes what its training steps received to ``<out>/rank<r>.json``."""

    def __init__(self, out):
        super().__init__()
        self.out = str(out)
        self.net = torch.nn.Linear(784, 10)
        self.seen = []

    def training_step(self, batch, batch_idx):
        self.seen.append([self.current_epoch, batch_idx, batch.index.tolist(), batch.shift.tolist()])
        return torch.nn.functional.cross_entropy(self.net(batch.x.flatten(1)), batch.y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)

    def on_train_end(self):
        with open(f"{self.out}/rank{self.global_rank}.json", "w") as f:
            json.dump(self.seen, f)


class CheckpointThenStop(Callback):
    def __init__(self, path, epoch, batch_idx):
        self.path, self.at = str(path), (epoch, batch_idx)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if (trainer.current_epoch, batch_idx) == self.at:
            trainer.save_checkpoint(self.path)  # on every rank, as Lightning requires
            trainer.should_stop = True


def fit(mnist_dir, out, callbacks=(), ckpt_path=None):
    out.mkdir()
    dm = MNISTDataModule(
        data_dir=str(mnist_dir),
        val_size=200,
        batch_size=64,
        augment_shift=2,
        verify=False,
        mirrors=[],
        pypi_package=None,
    )
    trainer = Trainer(
        max_epochs=2,
        accelerator="cpu",
        devices=2,
        strategy="ddp_fork",  # ranks fork from this process: seconds, where ddp_spawn takes minutes
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        callbacks=list(callbacks),
    )
    torch.manual_seed(3)  # seed=None: the order and shifts follow this initial seed
    trainer.fit(Recorder(out), datamodule=dm, ckpt_path=ckpt_path)
    return [json.loads((out / f"rank{r}.json").read_text()) for r in range(2)]


def test_ddp_ranks_split_each_epoch_draw_own_shifts_and_resume_exactly(mnist_dir, tmp_path):
    full = fit(mnist_dir, tmp_path / "full")
    for epoch in range(2):
        shards = [[i for e, _, index, _ in rank if e == epoch for i in index] for rank in full]
        assert len(shards[0]) == len(shards[1]) == 500
        assert sorted(shards[0] + shards[1]) == list(range(1000))  # disjoint, together the whole split
    assert len(full[0]) == 2 * STEPS
    shifts = [[shift for *_, shift in rank] for rank in full]
    assert all(a != b for a, b in zip(*shifts, strict=True))  # each rank its own augmentation stream

    ckpt = tmp_path / "mid.ckpt"
    before = fit(mnist_dir, tmp_path / "before", [CheckpointThenStop(ckpt, 0, 2)])
    state = torch.load(ckpt, weights_only=True)["MNISTDataModule"]
    assert sorted(state["augment_rng"]["states"]) == [0, 1]  # both ranks' streams, gathered
    after = fit(mnist_dir, tmp_path / "after", ckpt_path=ckpt)
    for rank in range(2):
        assert before[rank] + after[rank] == full[rank]


def _report_seed(rank, data_dir, init_file, out):
    torch.distributed.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    try:
        torch.manual_seed(100 + rank)  # no seed_everything: every process has its own initial seed
        dm = MNISTDataModule(data_dir=data_dir, val_size=200, verify=False, mirrors=[], pypi_package=None)
        dm.setup()
        (out / f"seed{rank}").write_text(str(dm.seed))
    finally:
        torch.distributed.destroy_process_group()


def test_ranks_share_rank_zeros_seed_without_seed_everything(mnist_dir, tmp_path):
    args = (str(mnist_dir), tmp_path / "init", tmp_path)
    torch.multiprocessing.start_processes(_report_seed, args=args, nprocs=2, start_method="fork")
    assert [(tmp_path / f"seed{rank}").read_text() for rank in range(2)] == ["100", "100"]
