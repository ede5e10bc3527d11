"""scikit-learn's 8x8 digits: the byte mapping, the seeded, stratified test split, and data=digits's datamodule."""

import sys

import numpy as np
import pytest
import torch

from kdlab.data import DataSpec, DigitsDataModule
from kdlab.data.digits import DEFAULT_TEST_SIZE, load_digits_arrays, split_digits

pytestmark = pytest.mark.unit


@pytest.fixture(scope="module")
def digits():
    pytest.importorskip("sklearn")
    return load_digits_arrays()


@pytest.mark.heavy
def test_shapes_dtypes_and_classes(digits):
    assert digits.x.shape == (1797, 1, 8, 8) and digits.x.dtype == np.uint8
    assert digits.y.shape == (1797,) and digits.y.dtype == np.int64
    assert digits.class_names == [str(d) for d in range(10)]
    assert set(np.unique(digits.y)) == set(range(10))


def test_counts_map_to_bytes_exactly(digits):
    from sklearn.datasets import load_digits

    counts = load_digits().images
    x = digits.x[:, 0]
    assert x[counts == 0].max() == 0 and x[counts == 16].min() == 255  # the endpoints
    assert np.all(x[counts == 8] == 128)  # 127.5 rounds up
    for v in range(17):  # every level, one byte each: round(v * 255 / 16), halves up
        assert np.all(x[counts == v] == int(v * 255 / 16 + 0.5))


def test_missing_sklearn_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "sklearn", None)  # makes `import sklearn...` raise ImportError
    monkeypatch.setitem(sys.modules, "sklearn.datasets", None)
    with pytest.raises(ImportError, match=r"pip install 'kdlab\[digits\]'"):
        load_digits_arrays()


def _split_indices(y, test_size=DEFAULT_TEST_SIZE, seed=0):
    """The split of positions 0..n-1: passing them as the 'images' shows which items went where."""
    train_i, train_y, test_i, test_y = split_digits(np.arange(len(y)), y, test_size, seed)
    assert np.array_equal(train_y, y[train_i]) and np.array_equal(test_y, y[test_i])
    return train_i, test_i


def test_split_is_disjoint_complete_and_sized(digits):
    train_i, test_i = _split_indices(digits.y)
    assert len(test_i) == DEFAULT_TEST_SIZE and len(train_i) == 1797 - DEFAULT_TEST_SIZE
    assert not set(train_i) & set(test_i)
    assert np.array_equal(np.sort(np.concatenate([train_i, test_i])), np.arange(1797))
    assert np.all(np.diff(train_i) > 0) and np.all(np.diff(test_i) > 0)  # input order kept


def test_split_is_stratified(digits):
    _, test_i = _split_indices(digits.y)
    counts, in_test = np.bincount(digits.y), np.bincount(digits.y[test_i], minlength=10)
    exact = counts * DEFAULT_TEST_SIZE / len(digits.y)
    assert np.all(np.abs(in_test - exact) < 1), (in_test, exact)  # each class within one of its share


def test_split_is_deterministic_and_seeded(digits):
    first = _split_indices(digits.y, seed=3)
    assert all(np.array_equal(a, b) for a, b in zip(first, _split_indices(digits.y, seed=3), strict=True))
    assert not np.array_equal(first[1], _split_indices(digits.y, seed=4)[1])


PINNED_TEST_INDICES = [3, 18, 23, 24, 26, 29, 32, 37]  # per class, the 2 smallest blake2b(b"0:<index>")


def test_split_does_not_depend_on_numpy_or_machine():
    """Pinned: the hash-ordered split must not move with a numpy or torch upgrade."""
    y = np.arange(40) % 4
    _, test_i = _split_indices(y, test_size=8, seed=0)
    assert test_i.tolist() == PINNED_TEST_INDICES


def test_split_refuses_bad_sizes():
    y = np.arange(20) % 2
    for size in (0, 20, -1):
        with pytest.raises(ValueError, match="0 < test_size < 20"):
            split_digits(np.arange(20), y, size)
    with pytest.raises(ValueError, match="as many images as labels"):
        split_digits(np.arange(19), y, 5)


# -- data=digits ------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def dm(make_data):
    pytest.importorskip("sklearn")
    dm = make_data("digits", seed=0)
    dm.prepare_data()
    dm.setup()
    return dm


def test_datamodule_spec(dm):
    assert isinstance(dm, DigitsDataModule)
    assert dm.static_spec == DataSpec("digits", (1, 8, 8), [str(d) for d in range(10)], [0.3053], [0.3757])
    assert list(dm.spec.fingerprint) == ["sklearn.datasets.load_digits"]  # the content read, by its source
    assert len(dm.spec.fingerprint["sklearn.datasets.load_digits"]) == 64  # a sha256 of the arrays


def test_normalisation_constants_are_the_non_test_digits(dm):
    """conf/data/digits.yaml's mean and std are those of the 1437 digits training and validation come from."""
    pixels = torch.cat([dm.data_train.x, dm.data_val.x]).double() / 255
    assert pixels.mean().item() == pytest.approx(0.3053, abs=5e-5)
    assert pixels.std(unbiased=False).item() == pytest.approx(0.3757, abs=5e-5)


def test_datamodule_split_sizes(dm, digits):
    n_rest = 1797 - DEFAULT_TEST_SIZE  # 1437 digits outside the test split
    assert (len(dm.data_train), len(dm.data_val), len(dm.data_test)) == (n_rest - 180, 180, DEFAULT_TEST_SIZE)
    assert sorted(torch.cat([dm.train_indices, dm.val_indices]).tolist()) == list(range(n_rest))
    _, _, test_x, test_y = split_digits(digits.x, digits.y)
    assert np.array_equal(dm.data_test.x.numpy(), test_x) and np.array_equal(dm.data_test.y.numpy(), test_y)
    for split in (dm.data_train, dm.data_val, dm.data_test):
        assert split.x.dtype == torch.uint8 and split.x.shape[1:] == (1, 8, 8)
        assert set(split.y.tolist()) == set(range(10))


@pytest.mark.heavy
def test_datamodule_is_deterministic(dm, make_data):
    again = make_data("digits", seed=0)
    again.setup()
    for a, b in ((dm.data_train, again.data_train), (dm.data_val, again.data_val), (dm.data_test, again.data_test)):
        assert torch.equal(a.x, b.x) and torch.equal(a.y, b.y)
    assert again.spec == dm.spec
    assert [i.tolist() for _, _, i in again.train_dataloader()] == [i.tolist() for _, _, i in dm.train_dataloader()]
    other_val = make_data("digits", split_seed=1)
    other_val.setup()
    assert not torch.equal(other_val.val_indices, dm.val_indices)
    assert torch.equal(other_val.data_test.x, dm.data_test.x)  # the run's seeds never move the test split
    other_test = make_data("digits", test_seed=1)
    other_test.setup()
    assert not torch.equal(other_test.data_test.x, dm.data_test.x) and len(other_test.data_test) == DEFAULT_TEST_SIZE
