"""Any image classification dataset as a LightningDataModule: splits in memory as uint8, one DataSpec.

A dataset's own module only reads its files (`read_splits`) and fetches them (`prepare_data`, a no-op once
`loaded`); this base does the rest the same way for all: a seeded validation split carved out of the training set,
``ShuffledBatches`` that cut each batch with one indexing op in an order a resumed run replays, and
augmentation (continuous affine distortions, random shifts, i.e. padded crops, and flips, in that order)
plus normalisation on the device in ``on_after_batch_transfer``, which hands every step a ``Batch``.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any

import torch
from lightning.pytorch import LightningDataModule
from torch import Tensor

from kdlab.data.affine import AffineAugment, random_affine
from kdlab.data.batch import Batch
from kdlab.data.batches import AUGMENT_STREAM, ShuffledBatches, derive_seed
from kdlab.data.spec import DataSpec, RawSplits, Split
from kdlab.data.transforms import normalize, random_flip, random_shift

log = logging.getLogger(__name__)


def _distributed() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized()


class ImageDataModule(LightningDataModule):
    """Train/val/test of one image dataset, with a seeded val split carved out of the training set.

    Args:
        name: the dataset, for the spec (the config group option: mnist, fashion_mnist, cifar10, ...).
        input_shape: (channels, height, width) the files must hold; models size themselves from it.
        classes: the class names, by label.
        mean, std: per-channel normalisation on the 0..1 pixel scale (one value: every channel).
        batch_size, eval_batch_size: training and validation/test batch sizes.
        val_size: images moved from the training set into the validation set.
        split_seed: seed of the train/val split, independent of the run's seed, so runs with
            different seeds are scored on the same validation images.
        augment_shift: max random translation in pixels of training images (0 = none); with a zero
            border this is the padded random crop of CIFAR recipes.
        augment_flip: mirror training images left-right with probability 1/2.
        augment_affine: continuous random distortions of training images (kdlab.data.affine.AffineAugment:
            rotate, scale, translate, shear, elastic: {alpha, sigma}), or None. Applied first, then the shift, then
            the flip: each image is distorted about its own centre before it is moved and mirrored, all on uint8
            pixels.
        seed: seed of the training order and the augmentation draws; None takes
            ``torch.initial_seed()`` at setup (which ``seed_everything`` sets). These streams never
            touch the global RNG, so dropout and the like cannot change which batches a run sees.
        exclude_classes: labels removed from the training split only (Hinton's omitted-class transfer
            set); validation and test keep every class, and the val split is carved out first.
    """

    def __init__(
        self,
        name: str,
        input_shape: Sequence[int],
        classes: Sequence[str],
        mean: float | Sequence[float],
        std: float | Sequence[float],
        batch_size: int = 128,
        eval_batch_size: int = 1000,
        val_size: int = 5000,
        split_seed: int = 0,
        augment_shift: int = 0,
        augment_flip: bool = False,
        augment_affine: Mapping[str, Any] | None = None,
        seed: int | None = None,
        exclude_classes: Sequence[int] = (),
        **dataset: Any,
    ) -> None:
        super().__init__()
        owner = type(self).__name__
        for key, value, low in (("batch_size", batch_size, 1), ("eval_batch_size", eval_batch_size, 1),
                                ("val_size", val_size, 1), ("augment_shift", augment_shift, 0),
                                ("seed", 0 if seed is None else seed, 0)):  # fmt: skip
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"{owner}: {key} must be an integer >= {low}, got {value!r}")
        spec = DataSpec(name, input_shape, classes, mean, std)  # checks the shape and one mean and std per channel
        if augment_shift >= min(spec.input_shape[1:]):
            raise ValueError(
                f"{owner}: augment_shift={augment_shift} would shift whole {spec.input_shape[1]}x"
                f"{spec.input_shape[2]} images out of view; use a few pixels (2 for MNIST, 4 for CIFAR)"
            )
        self.augment_affine = AffineAugment.from_config(augment_affine, spec.input_shape[1:], owner)
        n = spec.num_classes
        if isinstance(exclude_classes, str) or not all(
            isinstance(c, int) and not isinstance(c, bool) and 0 <= c < n for c in exclude_classes
        ):
            raise ValueError(
                f"{owner}: exclude_classes must list labels 0..{n - 1} to remove from the training split, "
                f"got {exclude_classes!r} (e.g. exclude_classes=[3]; [] keeps every class)"
            )
        if len(set(exclude_classes)) == n:
            raise ValueError(f"{owner}: exclude_classes lists every class, which leaves nothing to train on")
        # Plain lists in the saved hparams: weights-only checkpoint loading refuses tuples of custom types.
        # logger=False: the run logs its own keys (data.batch_size, ...); these (`seed` is the data's, often
        # null) would clash with them on a tracker that refuses a changed value (MLflow).
        self.save_hyperparameters(dict(
            name=name, input_shape=list(spec.input_shape), classes=list(spec.classes), mean=list(spec.mean),
            std=list(spec.std), batch_size=batch_size, eval_batch_size=eval_batch_size, val_size=val_size,
            split_seed=split_seed, augment_shift=augment_shift, augment_flip=bool(augment_flip),
            augment_affine=None if self.augment_affine is None else self.augment_affine.to_dict(), seed=seed,
            exclude_classes=list(exclude_classes), **dataset), logger=False)  # fmt: skip
        self.static_spec = spec  # everything but the fingerprint, known before any file is read
        self.exclude_classes = sorted(set(exclude_classes))
        self.spec: DataSpec | None = None  # set by setup(): the static spec plus the fingerprint of what was read
        self.data_train: Split | None = None
        self.data_val: Split | None = None
        self.data_test: Split | None = None
        self.train_indices: Tensor | None = None  # positions in the training file
        self.val_indices: Tensor | None = None
        self._seed: int | None = None
        self._augment_rng: torch.Generator | None = None
        self._augment_resume: dict[str, Any] | None = None  # streams from a checkpoint, for the next batch
        self._order_resume: dict[str, int] | None = None  # the training order's place, from a checkpoint

    # -- what a dataset provides -------------------------------------------------------------------------
    def read_splits(self) -> RawSplits:
        """The dataset's training and test images (uint8 [N, C, H, W]) and labels, from its files."""
        raise TypeError(f"{type(self).__name__} is not a dataset: a subclass reads its files in read_splits()")

    # -- the contract ------------------------------------------------------------------------------------
    @property
    def num_classes(self) -> int:
        return self.static_spec.num_classes

    @property
    def input_shape(self) -> tuple[int, ...]:
        return self.static_spec.input_shape

    @property
    def loaded(self) -> bool:
        """The splits are in memory: setup() has read them. Lightning calls prepare_data() again at every fit and
        test, and fetching or re-checking the files then cannot change the tensors this object serves, so a
        dataset's prepare_data() returns at once (on MNIST that is four MD5s and IDX reads, twice per run)."""
        return self.data_train is not None

    @property
    def augmented(self) -> bool:
        return self.hparams.augment_shift > 0 or self.hparams.augment_flip or self.augment_affine is not None

    @property
    def seed(self) -> int:
        """The seed in use: the ``seed`` argument, else ``torch.initial_seed()`` (rank zero's) at setup."""
        if self._seed is None:
            self._seed = self.hparams.seed if self.hparams.seed is not None else torch.initial_seed()
        return self._seed

    def _checked(self, split: Split, what: str) -> Split:
        shape, n = self.static_spec.input_shape, self.static_spec.num_classes
        if split.x.dtype != torch.uint8 or tuple(split.x.shape[1:]) != shape or split.y.shape != (len(split.x),):
            raise ValueError(
                f"{type(self).__name__}: the {what} images have shape {tuple(split.x.shape[1:])} ({split.x.dtype}) "
                f"and {tuple(split.y.shape)} labels, but data.input_shape says {list(shape)} uint8. The folder "
                f"holds another dataset than data.name={self.static_spec.name!r}: choose the matching data= option."
            )
        if len(split.y) and not 0 <= int(split.y.min()) <= int(split.y.max()) < n:
            raise ValueError(
                f"{type(self).__name__}: the {what} labels run from {int(split.y.min())} to {int(split.y.max())}, "
                f"but data.classes names {n} classes (labels 0..{n - 1}). Give every class a name in data.classes."
            )
        return split

    def setup(self, stage: str | None = None) -> None:
        # The seed is resolved when the Trainer sets the data up (after seed_everything), not when a run
        # reads the data early for its spec: an early setup must not fix the data order from an unseeded RNG.
        if self._seed is None and self.trainer is not None:
            self._seed = self.hparams.seed if self.hparams.seed is not None else torch.initial_seed()
            if self.hparams.seed is None and _distributed():
                # Without seed_everything each process has its own initial seed; all must share one order.
                shared = [self._seed]
                torch.distributed.broadcast_object_list(shared, src=0)
                self._seed = shared[0]
        if self.data_train is not None:  # every stage uses the same tensors; load once
            return
        raw = self.read_splits()
        train, test = self._checked(raw.train, "training"), self._checked(raw.test, "test")
        n, val_size = len(train), self.hparams.val_size
        if val_size >= n:
            raise ValueError(
                f"{type(self).__name__}: val_size={val_size} leaves no training images out of the {n} read; "
                f"choose data.val_size < {n}"
            )
        order = torch.randperm(n, generator=torch.Generator().manual_seed(self.hparams.split_seed))
        self.val_indices, train_indices = order[:val_size], order[val_size:]
        if self.exclude_classes:  # after the val split, so val is the same with and without exclusion
            train_indices = train_indices[~torch.isin(train.y[train_indices], torch.tensor(self.exclude_classes))]
            if len(train_indices) == 0:
                raise ValueError(f"exclude_classes={self.exclude_classes} removes every training image")
        self.train_indices = train_indices
        self.data_train = Split(train.x[train_indices], train.y[train_indices])
        self.data_val = Split(train.x[self.val_indices], train.y[self.val_indices])
        self.data_test = test
        self.spec = replace(self.static_spec, fingerprint=raw.fingerprint)

    def _loader(self, split: Split | None, training: bool) -> ShuffledBatches:
        if split is None:
            raise RuntimeError(f"{type(self).__name__}: call setup() before asking for a dataloader")
        trainer = self.trainer
        rank, world_size = (trainer.global_rank, trainer.world_size) if trainer is not None else (0, 1)
        if training:
            return ShuffledBatches(split.x, split.y, self.hparams.batch_size, seed=self.seed, rank=rank,
                                   world_size=world_size)  # fmt: skip
        # Evaluation splits images exactly across ranks: padding would count some images twice.
        return ShuffledBatches(split.x, split.y, self.hparams.eval_batch_size, shuffle=False, rank=rank,
                               world_size=world_size, pad_shards=False)  # fmt: skip

    def train_dataloader(self) -> ShuffledBatches:
        loader = self._loader(self.data_train, training=True)
        if self._order_resume is not None:
            loader.load_state_dict(self._order_resume)
            self._order_resume = None
        return loader

    def _fit_loader(self) -> ShuffledBatches | None:
        """The training loader of the Trainer's fit, once it has one."""
        loader = getattr(self.trainer, "train_dataloader", None)  # None without a Trainer
        return loader if isinstance(loader, ShuffledBatches) else None

    def val_dataloader(self) -> ShuffledBatches:
        return self._loader(self.data_val, training=False)

    def test_dataloader(self) -> ShuffledBatches:
        return self._loader(self.data_test, training=False)

    # -- augmentation stream: one per rank, saved in checkpoints -----------------------------------------
    def _augment_generator(self, device: torch.device) -> torch.Generator:
        """This rank's generator of distortions, shifts and flips, made on the device of the first batch it serves."""
        if self._augment_rng is None:
            rank = self.trainer.global_rank if self.trainer is not None else 0
            generator = torch.Generator(device=device)
            generator.manual_seed(derive_seed(self.seed, AUGMENT_STREAM, rank))
            if (saved := self._augment_resume) is not None and saved["states"]:
                if saved["device"] == generator.device.type and rank in saved["states"]:
                    generator.set_state(saved["states"][rank])
                else:
                    log.warning("The checkpoint holds augmentation streams of ranks %s on %s; rank %d on %s cannot "
                                "continue one, so its draws restart from the seed.", sorted(saved["states"]),
                                saved["device"], rank, generator.device.type)  # fmt: skip
            self._augment_resume = None
            self._augment_rng = generator
        return self._augment_rng

    def state_dict(self) -> dict[str, Any]:
        """What Lightning saves in checkpoints: the seed, where the training order stands, every rank's augmentation.

        The order's place is in Lightning's loop state too, but restored only into a loader built after the
        checkpoint is read, and `estimated_stepping_batches` (a schedule's length) builds one before: the place
        is dropped (Lightning issue #20550) and a resumed epoch would start over. The datamodule is restored
        before any loader is built, so its loader starts where the checkpoint stopped.
        """
        state: dict[str, Any] = {"seed": self.seed}
        if (loader := self._fit_loader()) is not None:
            state["order"] = loader.state_dict()
        if self.augmented:
            rng = self._augment_rng
            rank = self.trainer.global_rank if self.trainer is not None else 0
            own = None if rng is None else (rank, rng.device.type, rng.get_state())
            streams = [own]
            if _distributed() and torch.distributed.get_world_size() > 1:
                # Lightning builds the checkpoint on every rank and rank zero writes it: gather the streams.
                streams = [None] * torch.distributed.get_world_size()
                torch.distributed.all_gather_object(streams, own)
            streams = [s for s in streams if s is not None]  # none yet before the first training batch
            states = {r: rng_state for r, _, rng_state in streams}  # by global rank
            state["augment_rng"] = {"device": streams[0][1] if streams else None, "states": states}
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue a checkpoint's streams: its seed, and each rank's draws where it left off."""
        self._seed = int(state["seed"])
        self._augment_rng = None  # rebuilt at the next training batch, from the seed and the saved stream
        self._augment_resume = state.get("augment_rng")
        self._order_resume = state.get("order")
        if self._order_resume is not None and (loader := self._fit_loader()) is not None:
            loader.load_state_dict(self._order_resume)  # built already (strategies that restore after setup)
            self._order_resume = None

    # -- the batch every step sees -------------------------------------------------------------------------
    def preprocess_batch(self, batch: Sequence[Tensor], training: bool = False) -> Batch:
        """A loader's uint8 ``(x, y, index)`` to a ``Batch``: augmented when training, then normalised.

        Public for code that iterates the dataloaders without a Trainer.
        """
        if len(batch) != 3:
            raise ValueError(
                f"preprocess_batch expects (x_uint8, y, index) as the dataloaders yield, got {len(batch)} items; "
                "for a whole split pass (split.x, split.y, torch.arange(len(split)))"
            )
        x, y, index = batch
        affine = shift = flip = None
        # One order, one stream: distortion, shift, flip, each drawing from the generator in turn.
        if training and self.augment_affine is not None:
            x, affine, _ = random_affine(x, self.augment_affine, self._augment_generator(x.device))
        if training and self.hparams.augment_shift > 0:
            x, shift = random_shift(x, self.hparams.augment_shift, self._augment_generator(x.device))
        if training and self.hparams.augment_flip:
            x, flip = random_flip(x, self._augment_generator(x.device))
        return Batch(normalize(x, self.static_spec.mean, self.static_spec.std), y, index, shift, flip, x, affine)

    def on_after_batch_transfer(self, batch: Sequence[Tensor], dataloader_idx: int) -> Batch:
        # Lightning routes this hook to the DataModule when one is attached (trainer.fit(model,
        # datamodule=dm)); trainer.training is False during validation, sanity checks and test.
        training = self.trainer is not None and self.trainer.training
        return self.preprocess_batch(batch, training=training)
