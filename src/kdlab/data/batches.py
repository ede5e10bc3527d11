"""Whole batches cut from in-memory tensors, in a seeded order that a resumed run replays exactly.

This replaces torch's DataLoader for every dataset, for two reasons. Speed: the sampler, fetcher
and collate machinery costs more per step than a small MLP's forward and backward; here a batch is one
indexing op. Exactness: DataLoader shuffles with the global RNG, so anything else that draws random
numbers (initialisation, dropout) changes the data order, and a run resumed mid-epoch cannot get the
rest of its epoch back. Here epoch ``e``'s order is ``randperm(N)`` from a generator seeded by
(seed, e) alone, and the position within the epoch is state Lightning saves in checkpoints.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping

import numpy as np
import torch
from torch import Tensor

# The independent random streams of a run, each seeded by derive_seed(seed, <stream>, ...).
ORDER_STREAM = 0  # data order: derive_seed(seed, ORDER_STREAM, epoch), the same on every rank
AUGMENT_STREAM = 1  # training shifts: derive_seed(seed, AUGMENT_STREAM, global_rank)

_LAYOUT = ("num_samples", "batch_size", "world_size", "drop_last")  # what fixes the grid of batches


def derive_seed(seed: int, *words: int) -> int:
    """A 64-bit seed for one random stream, hashed from the run's seed and the stream's coordinates.

    numpy's SeedSequence mixes every bit, so (seed 1, epoch 0) and (seed 0, epoch 1) give unrelated
    streams, which ``seed + epoch`` (DistributedSampler's rule) does not.
    """
    return int(np.random.SeedSequence([seed, *words]).generate_state(1, np.uint64)[0])


def _count_batches(n: int, batch_size: int, world_size: int, rank: int, drop_last: bool, pad: bool) -> int:
    # padded: every rank gets ceil(n / world_size), e.g. 1000 images on 3 ranks = 334 each (2 repeated);
    # exact: rank r gets images r, r + world_size, ..., e.g. 401 on 2 ranks = 201 + 200
    per_rank = math.ceil(n / world_size) if pad else len(range(rank, n, world_size))
    return per_rank // batch_size if drop_last else math.ceil(per_rank / batch_size)


class ShuffledBatches:
    """Batches ``(images[i], labels[i], i)`` of one split held in memory, for one process.

    Args:
        images: uint8 [N, C, H, W]; batches leave as uint8 (4x less to copy to the device).
        labels: int64 [N].
        batch_size: images per batch; the last batch of an epoch may be smaller unless ``drop_last``.
        shuffle: a fresh seeded order every epoch (training); False keeps the stored order (evaluation).
        drop_last: drop the last, smaller batch of each epoch.
        seed: seed of the order; see ``derive_seed``. Equal seeds give equal orders on every rank.
        rank, world_size: this process's share under DDP, strided like torch's DistributedSampler.
        pad_shards: True (training) pads the order by repeating its head so every rank takes the
            same number of steps, as DistributedSampler does; False (evaluation) splits it exactly,
            so every image is counted once and ranks may differ by one image.

    Lightning protocols: the fit loop calls ``loader.sampler.set_epoch(epoch)`` before every epoch
    (this loader is its own ``sampler``), and saves ``state_dict()`` in checkpoints, restoring it
    with ``load_state_dict()`` before a resumed epoch continues. Iterating the loader again without
    ``set_epoch`` starts the next epoch if the last pass finished, else restarts the current one.
    """

    batch_sampler = None  # Lightning looks for either a sampler or a batch sampler

    def __init__(
        self,
        images: Tensor,
        labels: Tensor,
        batch_size: int,
        *,
        shuffle: bool = True,
        drop_last: bool = False,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        pad_shards: bool = True,
    ) -> None:
        if len(images) != len(labels) or len(labels) == 0:
            raise ValueError(
                f"ShuffledBatches needs as many labels as images, and at least one; got {len(images)} images "
                f"and {len(labels)} labels"
            )
        for name, value, low in (("batch_size", batch_size, 1), ("world_size", world_size, 1), ("seed", seed, 0)):
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"ShuffledBatches: {name} must be an integer >= {low}, got {value!r}")
        if not 0 <= rank < world_size:
            raise ValueError(f"ShuffledBatches: rank must lie in 0..{world_size - 1} for world_size={world_size}")
        self.images, self.labels = images, labels
        self.batch_size, self.shuffle, self.drop_last, self.seed = batch_size, shuffle, drop_last, seed
        self.rank, self.world_size, self.pad_shards = rank, world_size, pad_shards
        self.epoch = 0
        self.position = 0  # batches of this epoch handed out (the last one is the step now running)
        self._resume_at = 0  # set by load_state_dict: where the next pass starts

    def __len__(self) -> int:
        """Batches per epoch for this rank: what limit_train_batches, progress bars and schedulers count."""
        n = len(self.labels)
        return _count_batches(n, self.batch_size, self.world_size, self.rank, self.drop_last, self.pad_shards)

    @property
    def sampler(self) -> ShuffledBatches:
        """Lightning calls ``loader.sampler.set_epoch(epoch)`` before each epoch; this loader takes it."""
        return self

    def set_epoch(self, epoch: int) -> None:
        if epoch != self.epoch:
            self.epoch, self.position, self._resume_at = epoch, 0, 0

    def shard(self, epoch: int) -> Tensor:
        """Positions this rank visits in ``epoch``, in order, before being cut into batches."""
        n = len(self.labels)
        if self.shuffle:
            generator = torch.Generator().manual_seed(derive_seed(self.seed, ORDER_STREAM, epoch))
            order = torch.randperm(n, generator=generator)
        else:
            order = torch.arange(n)
        if self.pad_shards:
            total = math.ceil(n / self.world_size) * self.world_size
            order = order.repeat(math.ceil(total / n))[:total]  # pad with the head of the order
        return order[self.rank :: self.world_size]

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor, Tensor]]:
        # A generator: nothing here runs until the first batch is asked for. Lightning calls iter()
        # before set_epoch(), so the order must be drawn only then.
        epoch, start = self.epoch, self._resume_at
        self._resume_at = 0
        shard, size = self.shard(epoch), self.batch_size
        for b in range(start, len(self)):
            index = shard[b * size : (b + 1) * size]
            # Counted as handed out: the fetcher asks for batch b + 1 only once step b is done (it
            # prefetches nothing from a loader with a length), so at a checkpoint this is the number
            # of batches trained on.
            self.position = b + 1
            # index_select, not images[index]: the same rows, many times faster on CPU
            yield self.images.index_select(0, index), self.labels.index_select(0, index), index
        self.epoch, self.position = epoch + 1, 0

    def _layout(self) -> dict[str, int]:
        values = (len(self.labels), self.batch_size, self.world_size, int(self.drop_last))
        return dict(zip(_LAYOUT, values, strict=True))

    def state_dict(self) -> dict[str, int]:
        """Where the data order stands; Lightning stores it in checkpoints (rank zero's: all ranks agree)."""
        return {"seed": self.seed, "epoch": self.epoch, "position": self.position, **self._layout()}

    def load_state_dict(self, state: Mapping[str, int]) -> None:
        """Continue where ``state`` was saved: its seed, its epoch, the batch after the last one trained."""
        epoch, position = int(state["epoch"]), int(state["position"])
        saved, ours = {key: int(state[key]) for key in _LAYOUT}, self._layout()
        if saved != ours:
            n, size, world, drop = (saved[key] for key in _LAYOUT)
            if 0 < position < _count_batches(n, size, world, self.rank, bool(drop), self.pad_shards):
                raise ValueError(
                    f"Cannot resume the data order: the checkpoint stopped {position} batches into epoch {epoch} "
                    f"of {n} images in batches of {size} on {world} process(es); this run has "
                    f"{ours['num_samples']} images in batches of {ours['batch_size']} on {ours['world_size']}, "
                    "so the rest of that epoch cannot be replayed. Resume with the same data, batch size and "
                    "device count, or from a checkpoint saved at the end of an epoch."
                )
            if position:  # that epoch was finished: start the next one in the new layout
                epoch, position = epoch + 1, 0
        self.seed, self.epoch, self.position, self._resume_at = int(state["seed"]), epoch, position, position
