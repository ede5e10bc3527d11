"""`python ddp_data_job.py <scenario> <mnist_dir> <out_dir>`: the data layer under two-process DDP.

Run by test_ddp_data.py in a fresh interpreter: forking the pytest process itself, which earlier tests
left with OpenMP pools and logger threads, can deadlock a child (CI once hung there for an hour).
Each scenario writes what the ranks saw as JSON under <out_dir>; the test makes the assertions.
"""

import json
import socket
import sys
from pathlib import Path
from types import SimpleNamespace

import torch
from hydra.utils import instantiate
from lightning.pytorch import Callback, LightningModule, Trainer
from omegaconf import OmegaConf

from kdlab.config import CONFIG_DIR
from kdlab.data import IDXDataModule


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


def datamodule(mnist_dir: Path, **kwargs) -> IDXDataModule:
    """data=mnist on the generated files: no checksums, no network."""
    cfg = OmegaConf.load(CONFIG_DIR / "data" / "mnist.yaml")
    offline = dict(data_dir=str(mnist_dir), val_size=200, verify=False, mirrors=[], pypi_package=None)
    return instantiate(OmegaConf.merge(cfg, {**offline, **kwargs}), _convert_="all")


def fit(mnist_dir: Path, out: Path, callbacks=(), ckpt_path=None) -> None:
    out.mkdir()
    trainer = Trainer(
        max_epochs=2,
        accelerator="cpu",
        devices=2,
        strategy="ddp_fork",  # ranks fork from this fresh process: seconds, where ddp_spawn takes minutes
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        callbacks=list(callbacks),
    )
    torch.manual_seed(3)  # seed=None: the order and shifts follow this initial seed
    trainer.fit(Recorder(out), datamodule=datamodule(mnist_dir, batch_size=64, augment_shift=2), ckpt_path=ckpt_path)


def shards_and_resume(mnist_dir: Path, out: Path) -> None:
    """Writes full/, before/ (checkpoint after epoch 0 batch 2, then stop) and after/ (resumed from it)."""
    fit(mnist_dir, out / "full")
    ckpt = out / "mid.ckpt"
    fit(mnist_dir, out / "before", [CheckpointThenStop(ckpt, 0, 2)])
    state = torch.load(ckpt, weights_only=True)["IDXDataModule"]  # Lightning keys it by the class name
    (out / "streams.json").write_text(json.dumps(sorted(state["augment_rng"]["states"])))
    fit(mnist_dir, out / "after", ckpt_path=ckpt)


def _report_seed(rank: int, mnist_dir: Path, address: str, out: Path) -> None:
    torch.distributed.init_process_group("gloo", init_method=address, rank=rank, world_size=2)
    try:
        torch.manual_seed(100 + rank)  # no seed_everything: every process has its own initial seed
        dm = datamodule(mnist_dir)
        dm.trainer = SimpleNamespace(global_rank=rank, world_size=2, training=False)  # as a Trainer sets it up
        dm.setup()
        (out / f"seed{rank}").write_text(str(dm.seed))
    finally:
        torch.distributed.destroy_process_group()


def shared_seed(mnist_dir: Path, out: Path) -> None:
    """Writes seed0 and seed1: the data seed each rank settled on."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    address = f"tcp://127.0.0.1:{port}"
    torch.multiprocessing.start_processes(_report_seed, args=(mnist_dir, address, out), nprocs=2, start_method="fork")


if __name__ == "__main__":
    scenario, mnist_dir, out = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3])
    {"shards_and_resume": shards_and_resume, "shared_seed": shared_seed}[scenario](mnist_dir, out)
