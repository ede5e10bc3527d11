"""MNIST as a LightningDataModule: the whole dataset lives in memory as uint8 tensors.

Batches are cut with one indexing op and leave the loader as uint8 (4x less to copy to the device);
normalisation and augmentation run on the device in ``on_after_batch_transfer``.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import torch
from lightning.pytorch import LightningDataModule
from lightning.pytorch.overrides.distributed import UnrepeatedDistributedSampler
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from kdlab.data.idx import read_idx
from kdlab.data.sources import DEFAULT_MIRRORS, DEFAULT_PYPI_PACKAGE, MNIST_FILES, ensure_mnist
from kdlab.data.transforms import MNIST_MEAN, MNIST_STD, normalize, random_shift

Batch = tuple[Tensor, Tensor]


class BatchedTensorDataset(Dataset):
    """Images and labels in memory, served a whole batch at a time.

    torch's map-style fetcher calls ``__getitems__(indices)`` when it exists and hands the result
    to ``collate_fn``; returning the finished batch here (with ``collate_batch`` passing it
    through) replaces per-sample indexing plus ``default_collate`` stacking with one gather.
    """

    def __init__(self, x: Tensor, y: Tensor) -> None:
        if len(x) != len(y):
            raise ValueError(f"BatchedTensorDataset needs as many labels as images, got {len(x)} and {len(y)}")
        self.x, self.y = x, y

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, index: int) -> Batch:
        return self.x[index], self.y[index]

    def __getitems__(self, indices: Sequence[int]) -> Batch:
        index = torch.as_tensor(indices, dtype=torch.long)
        return self.x[index], self.y[index]


def collate_batch(batch: Batch) -> Batch:
    """Pass through the batch ``__getitems__`` already built (module-level so workers can pickle it)."""
    return batch


class MNISTDataModule(LightningDataModule):
    """MNIST train/val/test with a seeded val split carved out of the 60k training images.

    Args:
        data_dir: folder for the four raw IDX files; fetched there on first use.
        batch_size: training batch size.
        eval_batch_size: validation/test batch size (no gradients, so it can be larger).
        val_size: images moved from the 60k training set into the validation set.
        split_seed: seed of the train/val split, independent of the run's seed so that runs with
            different seeds are still scored on the same validation images.
        augment_shift: max random translation in pixels for training batches (0 = none).
        num_workers: DataLoader worker processes; 0 is fastest here since a batch is one gather.
        mean, std: normalisation constants on the 0..1 pixel scale.
        mirrors, pypi_package, verify: where and how to fetch MNIST; see ``ensure_mnist``.
    """

    def __init__(
        self,
        data_dir: str | os.PathLike,
        batch_size: int = 128,
        eval_batch_size: int = 1000,
        val_size: int = 5000,
        split_seed: int = 0,
        augment_shift: int = 0,
        num_workers: int = 0,
        mean: float = MNIST_MEAN,
        std: float = MNIST_STD,
        mirrors: Sequence[str] = DEFAULT_MIRRORS,
        pypi_package: str | None = DEFAULT_PYPI_PACKAGE,
        verify: bool = True,
    ) -> None:
        super().__init__()
        for name, value, low in (
            ("batch_size", batch_size, 1),
            ("eval_batch_size", eval_batch_size, 1),
            ("val_size", val_size, 1),
            ("augment_shift", augment_shift, 0),
            ("num_workers", num_workers, 0),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"MNISTDataModule: {name} must be an integer >= {low}, got {value!r}")
        if augment_shift >= 28:
            raise ValueError(
                f"MNISTDataModule: augment_shift={augment_shift} would shift whole 28x28 digits out of view; "
                "use a few pixels (2 is typical)"
            )
        if not std > 0:
            raise ValueError(f"MNISTDataModule: std must be > 0, got {std!r}")
        if not str(data_dir):
            raise ValueError("MNISTDataModule: data_dir is empty; point it at a folder for the MNIST files")
        self.save_hyperparameters()
        self.data_dir = Path(data_dir)
        self.data_train: BatchedTensorDataset | None = None
        self.data_val: BatchedTensorDataset | None = None
        self.data_test: BatchedTensorDataset | None = None
        self.train_indices: Tensor | None = None  # positions in the 60k training file, for the record
        self.val_indices: Tensor | None = None

    @property
    def num_classes(self) -> int:
        return 10

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return (1, 28, 28)

    def prepare_data(self) -> None:
        ensure_mnist(
            self.data_dir,
            mirrors=list(self.hparams.mirrors),
            pypi_package=self.hparams.pypi_package,
            verify=self.hparams.verify,
        )

    def _load(self, kind: str) -> tuple[Tensor, Tensor]:
        paths = [self.data_dir / f"{kind}-images-idx3-ubyte", self.data_dir / f"{kind}-labels-idx1-ubyte"]
        if missing := [str(p) for p in paths if not p.exists()]:
            raise FileNotFoundError(
                f"MNISTDataModule: {', '.join(missing)} not found. The Trainer calls prepare_data() to fetch "
                "them; outside a Trainer call dm.prepare_data() before dm.setup(), or place "
                f"{', '.join(MNIST_FILES)} in {self.data_dir}."
            )
        images, labels = read_idx(paths[0]), read_idx(paths[1])
        if images.ndim != 3 or images.shape[1:] != (28, 28) or labels.shape != (len(images),):
            raise ValueError(
                f"MNISTDataModule: {paths[0]} and {paths[1]} hold shapes {images.shape} and {labels.shape}; "
                "expected (n, 28, 28) images with n labels. Replace them with the real MNIST files."
            )
        return torch.from_numpy(images).unsqueeze(1), torch.from_numpy(labels).long()

    def setup(self, stage: str | None = None) -> None:
        if self.data_train is not None:  # every stage uses the same tensors; load once
            return
        x, y = self._load("train")
        n, val_size = len(x), self.hparams.val_size
        if val_size >= n:
            raise ValueError(
                f"MNISTDataModule: val_size={val_size} leaves no training images out of the {n} in "
                f"{self.data_dir}; choose val_size < {n}"
            )
        order = torch.randperm(n, generator=torch.Generator().manual_seed(self.hparams.split_seed))
        self.val_indices, self.train_indices = order[:val_size], order[val_size:]
        self.data_train = BatchedTensorDataset(x[self.train_indices], y[self.train_indices])
        self.data_val = BatchedTensorDataset(x[self.val_indices], y[self.val_indices])
        self.data_test = BatchedTensorDataset(*self._load("t10k"))

    def _loader(self, dataset: BatchedTensorDataset | None, training: bool) -> DataLoader:
        if dataset is None:
            raise RuntimeError(
                "MNISTDataModule: call setup() before asking for a dataloader (the Trainer does this itself)"
            )
        workers = self.hparams.num_workers
        common = dict(num_workers=workers, persistent_workers=workers > 0, collate_fn=collate_batch)
        if training:
            # Under DDP Lightning swaps in a DistributedSampler that shuffles per epoch.
            return DataLoader(dataset, batch_size=self.hparams.batch_size, shuffle=True, drop_last=False, **common)
        sampler = None
        if self.trainer is not None and self.trainer.world_size > 1:
            # Lightning's default DistributedSampler pads ranks to equal length by repeating images,
            # which would count some val/test images twice; this one splits them exactly.
            sampler = UnrepeatedDistributedSampler(
                dataset, num_replicas=self.trainer.world_size, rank=self.trainer.global_rank, shuffle=False
            )
        return DataLoader(dataset, batch_size=self.hparams.eval_batch_size, sampler=sampler, **common)

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.data_train, training=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.data_val, training=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.data_test, training=False)

    def preprocess_batch(self, batch: Batch, training: bool = False) -> Batch:
        """uint8 images to normalised float, shifted first when training with augmentation.

        Shifting before normalising makes the uncovered border black (0), as in real digits.
        Public for code that iterates the dataloaders without a Trainer.
        """
        x, y = batch
        if training and self.hparams.augment_shift > 0:
            x = random_shift(x, self.hparams.augment_shift)
        return normalize(x, self.hparams.mean, self.hparams.std), y

    def on_after_batch_transfer(self, batch: Batch, dataloader_idx: int) -> Batch:
        # Lightning routes this hook to the DataModule when one is attached (trainer.fit(model,
        # datamodule=dm)); trainer.training is False during validation, sanity checks and test.
        training = self.trainer is not None and self.trainer.training
        return self.preprocess_batch(batch, training=training)
