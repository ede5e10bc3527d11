"""ShuffledBatches: seeded epoch orders, DDP shards, Lightning's epoch and state protocols."""

import pytest
import torch
from lightning.fabric.utilities.data import _set_sampler_epoch
from lightning.fabric.utilities.types import _Stateful
from lightning.pytorch.overrides.distributed import UnrepeatedDistributedSampler
from torch.utils.data import DistributedSampler

from kdlab.data import ShuffledBatches, derive_seed

pytestmark = pytest.mark.unit


def make(n=100, batch_size=8, **kw) -> ShuffledBatches:
    images = torch.arange(n, dtype=torch.int64).to(torch.uint8).reshape(n, 1, 1, 1).expand(n, 1, 28, 28)
    return ShuffledBatches(images, torch.arange(n) % 10, batch_size, **kw)


def epoch_order(loader: ShuffledBatches, epoch: int) -> list[int]:
    loader.set_epoch(epoch)
    return [i for _, _, index in loader for i in index.tolist()]


def test_batches_are_the_indexed_images_and_labels():
    loader = make()
    x, y, index = next(iter(loader))
    assert x.dtype == torch.uint8 and x.shape == (8, 1, 28, 28)
    assert index.dtype == torch.int64 and y.dtype == torch.int64
    assert torch.equal(x, loader.images[index]) and torch.equal(y, loader.labels[index])


def test_each_epoch_visits_every_image_once_in_its_own_order():
    loader = make(seed=3)
    orders = [epoch_order(loader, epoch) for epoch in range(3)]
    assert all(sorted(order) == list(range(100)) for order in orders)
    assert len({tuple(order) for order in orders}) == 3  # every epoch reshuffles
    assert epoch_order(make(seed=3), 1) == orders[1]  # a pure function of (seed, epoch)
    assert epoch_order(make(seed=4), 1) != orders[1]
    # (seed 3, epoch 1) and (seed 4, epoch 0) would collide under DistributedSampler's seed + epoch
    assert epoch_order(make(seed=4), 0) != orders[1]


def test_order_ignores_the_global_rng():
    torch.manual_seed(0)
    first = epoch_order(make(seed=1), 0)
    torch.manual_seed(12345)
    torch.rand(1000)  # what dropout or an initialisation would consume
    assert epoch_order(make(seed=1), 0) == first


def test_unshuffled_order_is_the_stored_one():
    assert epoch_order(make(shuffle=False), 5) == list(range(100))


@pytest.mark.parametrize(("n", "world_size"), [(100, 3), (100, 4), (2, 3)])
def test_training_shards_pad_like_distributed_sampler(n, world_size):
    shards = [epoch_order(make(n, shuffle=False, rank=r, world_size=world_size), 0) for r in range(world_size)]
    reference = [list(DistributedSampler(range(n), world_size, r, shuffle=False)) for r in range(world_size)]
    assert shards == reference
    assert len({len(shard) for shard in shards}) == 1  # every rank takes the same number of steps
    loaders = [make(n, batch_size=8, rank=r, world_size=world_size) for r in range(world_size)]
    assert len({len(loader) for loader in loaders}) == 1


def test_shuffled_training_shards_split_one_shared_order():
    shards = [epoch_order(make(99, seed=7, rank=r, world_size=3), 2) for r in range(3)]
    assert not set(shards[0]) & set(shards[1]) and not set(shards[1]) & set(shards[2])
    assert sorted(sum(shards, [])) == list(range(99))  # 99 = 3 * 33: no padding needed, a partition
    whole = epoch_order(make(99, seed=7), 2)
    assert shards[1] == whole[1::3]


@pytest.mark.parametrize(("n", "world_size"), [(401, 2), (200, 3), (5, 8)])
def test_evaluation_shards_count_every_image_once(n, world_size):
    shards = [
        epoch_order(make(n, shuffle=False, rank=r, world_size=world_size, pad_shards=False), 0)
        for r in range(world_size)
    ]
    assert sorted(sum(shards, [])) == list(range(n))
    if n >= world_size:  # Lightning's sampler refuses ranks without images; ours gives them none
        reference = [
            list(UnrepeatedDistributedSampler(range(n), world_size, r, shuffle=False)) for r in range(world_size)
        ]
        assert shards == reference


@pytest.mark.parametrize("drop_last", [False, True])
@pytest.mark.parametrize(("n", "world_size", "pad"), [(100, 1, True), (100, 3, True), (401, 2, False), (3, 2, False)])
def test_len_is_the_number_of_batches_yielded(n, world_size, pad, drop_last):
    for rank in range(world_size):
        loader = make(n, batch_size=8, rank=rank, world_size=world_size, pad_shards=pad, drop_last=drop_last)
        sizes = [len(index) for _, _, index in loader]
        assert len(sizes) == len(loader)
        assert all(size == 8 for size in sizes[:-1])
        if drop_last and sizes:
            assert sizes[-1] == 8


def test_lightning_sets_the_epoch_through_the_sampler_after_iter():
    loader = make(seed=2)
    expected = epoch_order(make(seed=2), 4)
    batches = iter(loader)  # Lightning creates the iterator first, then calls set_epoch
    _set_sampler_epoch(loader, 4)
    assert torch.cat([index for _, _, index in batches]).tolist() == expected


def test_a_finished_pass_starts_the_next_epoch_and_a_broken_one_restarts_its_own():
    loader = make(seed=5)
    first = [index for _, _, index in loader]
    assert loader.epoch == 1
    assert torch.cat(first).tolist() == epoch_order(make(seed=5), 0)
    partial = iter(loader)
    next(partial)
    assert loader.state_dict()["position"] == 1
    again = torch.cat([index for _, _, index in loader]).tolist()
    assert again == epoch_order(make(seed=5), 1)


def test_state_resumes_the_rest_of_the_epoch_in_order():
    loader = make(seed=9, batch_size=7)
    assert isinstance(loader, _Stateful)  # what Lightning checks before saving and restoring it
    loader.set_epoch(3)
    batches = iter(loader)
    seen = [next(batches)[2] for _ in range(5)]
    state = loader.state_dict()
    assert state["epoch"] == 3 and state["position"] == 5
    resumed = make(seed=0, batch_size=7)  # the seed comes from the state
    resumed.load_state_dict(state)
    rest = [index for _, _, index in resumed]
    assert torch.cat(seen + rest).tolist() == epoch_order(make(seed=9, batch_size=7), 3)
    assert resumed.epoch == 4 and resumed.seed == 9


def test_state_from_another_layout_is_refused_mid_epoch_and_skipped_at_its_end():
    loader = make(batch_size=10)
    batches = iter(loader)
    next(batches)
    other = make(batch_size=20)
    with pytest.raises(ValueError, match=r"stopped 1 batches into epoch 0 of 100 images in batches of 10 on 1"):
        other.load_state_dict(loader.state_dict())
    list(batches)  # finish the epoch but keep the pre-exhaustion state, as Lightning does
    state = {**loader.state_dict(), "epoch": 2, "position": 10}
    other.load_state_dict(state)
    assert (other.epoch, other.position) == (3, 0)


def test_arguments_are_checked():
    with pytest.raises(ValueError, match="as many labels as images"):
        ShuffledBatches(torch.zeros(3, 1, 28, 28, dtype=torch.uint8), torch.zeros(2), 2)
    with pytest.raises(ValueError, match="batch_size must be an integer >= 1"):
        make(batch_size=0)
    with pytest.raises(ValueError, match="seed must be an integer >= 0"):
        make(seed=-1)
    with pytest.raises(ValueError, match=r"rank must lie in 0\.\.1"):
        make(rank=2, world_size=2)


def test_derive_seed_separates_streams():
    seeds = {derive_seed(s, stream, k) for s in range(3) for stream in range(2) for k in range(3)}
    assert len(seeds) == 18
    assert derive_seed(0, 1, 2) == derive_seed(0, 1, 2) and 0 <= derive_seed(2**64 - 1, 0) < 2**64
