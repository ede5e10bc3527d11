"""MNIST as a LightningDataModule: the whole dataset lives in memory as uint8 tensors.

``ShuffledBatches`` cuts each batch with one indexing op, in a seeded order a resumed run replays;
batches leave it as uint8 (4x less to copy to the device). Normalisation and augmentation run on the
device in ``on_after_batch_transfer``, which hands every step a ``Batch``.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import LightningDataModule
from torch import Tensor

from kdlab.data.batch import Batch
from kdlab.data.batches import AUGMENT_STREAM, ShuffledBatches, derive_seed
from kdlab.data.idx import read_idx
from kdlab.data.sources import DEFAULT_MIRRORS, DEFAULT_PYPI_PACKAGE, MNIST_FILES, ensure_mnist
from kdlab.data.transforms import MNIST_MEAN, MNIST_STD, normalize, random_shift

log = logging.getLogger(__name__)

NUM_CLASSES = 10


@dataclass(frozen=True)
class Split:
    """One split in memory: images uint8 [N, 1, 28, 28] and labels int64 [N]."""

    x: Tensor
    y: Tensor

    def __len__(self) -> int:
        return len(self.y)


def _distributed() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized()


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
        seed: seed of the training order and of the augmentation shifts; ``None`` takes
            ``torch.initial_seed()`` at setup (which ``seed_everything`` sets). These streams never
            touch the global RNG, so dropout and the like cannot change which batches a run sees.
        exclude_classes: digits removed from the training split only, e.g. ``[3]`` for the
            omitted-class transfer set of Hinton et al. (2015). Validation and test keep every digit,
            and the val split is carved out before the removal, so it is the same either way.
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
        seed: int | None = None,
        exclude_classes: Sequence[int] = (),
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
        ):
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"MNISTDataModule: {name} must be an integer >= {low}, got {value!r}")
        if augment_shift >= 28:
            raise ValueError(
                f"MNISTDataModule: augment_shift={augment_shift} would shift whole 28x28 digits out of view; "
                "use a few pixels (2 is typical)"
            )
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int) or seed < 0):
            raise ValueError(f"MNISTDataModule: seed must be an integer >= 0 or None (the run's seed), got {seed!r}")
        if (
            isinstance(exclude_classes, str)
            or not isinstance(exclude_classes, Sequence)
            or not all(isinstance(c, int) and not isinstance(c, bool) and 0 <= c < NUM_CLASSES for c in exclude_classes)
        ):
            raise ValueError(
                f"MNISTDataModule: exclude_classes must list digits 0..{NUM_CLASSES - 1} to remove from the "
                f"training split, got {exclude_classes!r} (e.g. exclude_classes=[3]; [] keeps every digit)"
            )
        if len(set(exclude_classes)) == NUM_CLASSES:
            raise ValueError("MNISTDataModule: exclude_classes lists every digit, which leaves nothing to train on")
        if not std > 0:
            raise ValueError(f"MNISTDataModule: std must be > 0, got {std!r}")
        if not str(data_dir):
            raise ValueError("MNISTDataModule: data_dir is empty; point it at a folder for the MNIST files")
        data_dir = os.fspath(data_dir)  # a str in the saved hparams: weights-only checkpoint loading refuses Path
        self.save_hyperparameters()
        self.data_dir = Path(data_dir)
        self.exclude_classes = sorted(set(exclude_classes))
        self.data_train: Split | None = None
        self.data_val: Split | None = None
        self.data_test: Split | None = None
        self.train_indices: Tensor | None = None  # positions in the 60k training file, for the record
        self.val_indices: Tensor | None = None
        self._seed: int | None = None
        self._augment_rng: torch.Generator | None = None
        self._augment_resume: dict[str, Any] | None = None  # streams from a checkpoint, for the next batch

    @property
    def num_classes(self) -> int:
        return NUM_CLASSES

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return (1, 28, 28)

    @property
    def seed(self) -> int:
        """The seed in use: the ``seed`` argument, else ``torch.initial_seed()`` (rank zero's) at setup."""
        if self._seed is None:
            self._seed = self.hparams.seed if self.hparams.seed is not None else torch.initial_seed()
        return self._seed

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
        if self._seed is None:
            self._seed = self.hparams.seed if self.hparams.seed is not None else torch.initial_seed()
            if self.hparams.seed is None and _distributed():
                # Without seed_everything each process has its own initial seed; all must share one order.
                shared = [self._seed]
                torch.distributed.broadcast_object_list(shared, src=0)
                self._seed = shared[0]
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
        self.val_indices, train_indices = order[:val_size], order[val_size:]
        if self.exclude_classes:  # after the val split, so val is the same with and without exclusion
            train_indices = train_indices[~torch.isin(y[train_indices], torch.tensor(self.exclude_classes))]
            if len(train_indices) == 0:
                raise ValueError(
                    f"MNISTDataModule: exclude_classes={self.exclude_classes} removes all {n - val_size} "
                    f"training images in {self.data_dir}; exclude fewer digits"
                )
        self.train_indices = train_indices
        self.data_train = Split(x[train_indices], y[train_indices])
        self.data_val = Split(x[self.val_indices], y[self.val_indices])
        self.data_test = Split(*self._load("t10k"))

    def _loader(self, split: Split | None, training: bool) -> ShuffledBatches:
        if split is None:
            raise RuntimeError(
                "MNISTDataModule: call setup() before asking for a dataloader (the Trainer does this itself)"
            )
        trainer = self.trainer
        rank, world_size = (trainer.global_rank, trainer.world_size) if trainer is not None else (0, 1)
        if training:
            return ShuffledBatches(
                split.x, split.y, self.hparams.batch_size, seed=self.seed, rank=rank, world_size=world_size
            )
        # Evaluation splits images exactly across ranks: padding would count some images twice.
        return ShuffledBatches(
            split.x,
            split.y,
            self.hparams.eval_batch_size,
            shuffle=False,
            rank=rank,
            world_size=world_size,
            pad_shards=False,
        )

    def train_dataloader(self) -> ShuffledBatches:
        return self._loader(self.data_train, training=True)

    def val_dataloader(self) -> ShuffledBatches:
        return self._loader(self.data_val, training=False)

    def test_dataloader(self) -> ShuffledBatches:
        return self._loader(self.data_test, training=False)

    # -- augmentation stream: one per rank, saved in checkpoints -----------------------------------
    def _augment_generator(self, device: torch.device) -> torch.Generator:
        """This rank's generator of shifts, made on the device of the first batch it serves."""
        if self._augment_rng is None:
            rank = self.trainer.global_rank if self.trainer is not None else 0
            generator = torch.Generator(device=device)
            generator.manual_seed(derive_seed(self.seed, AUGMENT_STREAM, rank))
            if (saved := self._augment_resume) is not None and saved["states"]:
                if saved["device"] == generator.device.type and rank in saved["states"]:
                    generator.set_state(saved["states"][rank])
                else:
                    log.warning(
                        "The checkpoint holds augmentation streams of ranks %s on %s; rank %d on %s cannot "
                        "continue one, so its shifts restart from the seed.",
                        sorted(saved["states"]),
                        saved["device"],
                        rank,
                        generator.device.type,
                    )
            self._augment_resume = None
            self._augment_rng = generator
        return self._augment_rng

    def state_dict(self) -> dict[str, Any]:
        """What Lightning saves in checkpoints: the seed in use and every rank's augmentation stream."""
        state: dict[str, Any] = {"seed": self.seed}
        if self.hparams.augment_shift > 0:
            rng = self._augment_rng
            rank = self.trainer.global_rank if self.trainer is not None else 0
            own = None if rng is None else (rank, rng.device.type, rng.get_state())
            streams = [own]
            if _distributed() and torch.distributed.get_world_size() > 1:
                # Lightning builds the checkpoint on every rank and rank zero writes it: gather the streams.
                streams = [None] * torch.distributed.get_world_size()
                torch.distributed.all_gather_object(streams, own)
            streams = [s for s in streams if s is not None]  # none yet before the first training batch
            state["augment_rng"] = {
                "device": streams[0][1] if streams else None,
                "states": {r: rng_state for r, _, rng_state in streams},  # by global rank
            }
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue a checkpoint's streams: its seed, and each rank's shifts where it left off."""
        self._seed = int(state["seed"])
        self._augment_rng = None  # rebuilt at the next training batch, from the seed and the saved stream
        self._augment_resume = state.get("augment_rng")

    # -- the batch every step sees ------------------------------------------------------------------
    def preprocess_batch(self, batch: Sequence[Tensor], training: bool = False) -> Batch:
        """A loader's uint8 ``(x, y, index)`` to a ``Batch``: normalised, shifted first when training.

        Shifting before normalising makes the uncovered border black (0), as in real digits.
        Public for code that iterates the dataloaders without a Trainer.
        """
        if len(batch) != 3:
            raise ValueError(
                f"preprocess_batch expects (x_uint8, y, index) as the dataloaders yield, got {len(batch)} items; "
                "for a whole split pass (split.x, split.y, torch.arange(len(split)))"
            )
        x, y, index = batch
        shift = None
        if training and self.hparams.augment_shift > 0:
            x, shift = random_shift(x, self.hparams.augment_shift, self._augment_generator(x.device))
        return Batch(normalize(x, self.hparams.mean, self.hparams.std), y, index, shift)

    def transfer_batch_to_device(self, batch: Sequence[Tensor], device: torch.device, dataloader_idx: int) -> Any:
        # Already there when training on the CPU: Lightning's generic walk over the batch would
        # only find that out, at ~60 us a step.
        if isinstance(batch, (tuple, list)) and all(isinstance(t, Tensor) and t.device == device for t in batch):
            return batch
        return super().transfer_batch_to_device(batch, device, dataloader_idx)

    def on_after_batch_transfer(self, batch: Sequence[Tensor], dataloader_idx: int) -> Batch:
        # Lightning routes this hook to the DataModule when one is attached (trainer.fit(model,
        # datamodule=dm)); trainer.training is False during validation, sanity checks and test.
        training = self.trainer is not None and self.trainer.training
        return self.preprocess_batch(batch, training=training)
