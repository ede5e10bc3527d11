"""scikit-learn's 8x8 handwritten digits as uint8 images: real data that needs no download.

``sklearn.datasets.load_digits`` reads a CSV shipped inside the scikit-learn wheel: 1797 digits
(UCI "Optical Recognition of Handwritten Digits"), each a 32x32 bitmap counted in 4x4 blocks, so a
pixel is the number of inked bits in its block, 0..16. That makes it a dataset that works wherever
pip does, with no host to reach. It has no official test split; ``split_digits`` makes a seeded one.
"""

from __future__ import annotations

import hashlib
from typing import NamedTuple

import numpy as np
import torch

from kdlab.data.datamodule import ImageDataModule
from kdlab.data.spec import RawSplits, Split

# About 20% of the 1797 digits: 36 or so of each class.
DEFAULT_TEST_SIZE = 360


class DigitsArrays(NamedTuple):
    x: np.ndarray  # uint8 [1797, 1, 8, 8], 0..255
    y: np.ndarray  # int64 [1797], 0..9
    class_names: list[str]


def load_digits_arrays() -> DigitsArrays:
    """All 1797 digits, their 0..16 counts mapped to 0..255 bytes as ``(v * 255 + 8) // 16``.

    That is ``round(v * 255 / 16)`` in integers, halves rounded up (only v = 8 has one: 127.5 -> 128),
    so 0 -> 0 and 16 -> 255, and the same bytes come out on every machine. Needs scikit-learn.
    """
    try:
        from sklearn.datasets import load_digits
    except ImportError as err:
        raise ImportError(
            f"The digits dataset comes with scikit-learn, which is not installed ({err}). Install it with "
            "pip install 'kdlab[digits]' (or pip install scikit-learn)."
        ) from err
    bunch = load_digits()
    counts, y = np.asarray(bunch.images), np.asarray(bunch.target)
    if counts.shape[1:] != (8, 8) or len(y) != len(counts) or not np.isin(counts, np.arange(17)).all():
        raise ValueError(
            f"scikit-learn's load_digits returned images of shape {counts.shape} with values "
            f"{counts.min()}..{counts.max()}; kdlab expects [N, 8, 8] whole counts 0..16. This scikit-learn "
            "ships different digits data: report it to kdlab with its version."
        )
    x = (counts.astype(np.int64) * 255 + 8) // 16
    return DigitsArrays(x.astype(np.uint8)[:, None], y.astype(np.int64), [str(d) for d in range(10)])


def _order(indices: np.ndarray, seed: int) -> np.ndarray:
    """``indices`` shuffled by a hash of (seed, index): the same order on any machine and any numpy.

    numpy's ``Generator`` and torch's ``randperm`` promise a stable stream only within a version;
    a test set that moved with an upgrade would make old and new results incomparable.
    """
    digests = (hashlib.blake2b(f"{seed}:{i}".encode(), digest_size=8).digest() for i in indices)
    keys = np.array([int.from_bytes(d, "big") for d in digests], dtype=np.uint64)
    return indices[np.argsort(keys, kind="stable")]


def split_digits(
    x: np.ndarray, y: np.ndarray, test_size: int = DEFAULT_TEST_SIZE, seed: int = 0
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """A fixed, seeded, stratified split: ``(train_x, train_y, test_x, test_y)``, each in the input's order.

    Each class gives ``test_size * class_count / n`` items to the test set, rounded so the counts add
    up to ``test_size`` (largest remainder first, ties to the lower class); which items is decided
    by ``_order``, so the split depends on the seed and nothing else.
    """
    x, y = np.asarray(x), np.asarray(y)
    if len(x) != len(y) or y.ndim != 1 or not 0 < test_size < len(y):
        raise ValueError(
            f"split_digits: got {len(x)} images, labels of shape {y.shape} and test_size={test_size}; it needs "
            f"as many images as labels (1-D) and 0 < test_size < {len(y)}."
        )
    classes, counts = np.unique(y, return_counts=True)
    share, remainder = np.divmod(counts * test_size, len(y))  # exact: integers, no float rounding
    share[np.argsort(-remainder, kind="stable")[: test_size - share.sum()]] += 1
    test = np.concatenate([_order(np.flatnonzero(y == c), seed)[:k] for c, k in zip(classes, share, strict=True)])
    is_test = np.zeros(len(y), dtype=bool)
    is_test[test] = True
    return x[~is_test], y[~is_test], x[is_test], y[is_test]


class DigitsDataModule(ImageDataModule):
    """scikit-learn's digits: a real dataset every machine can train on in seconds, offline.

    Args:
        test_size: digits held out as the test set by `split_digits` (stratified, fixed by `test_seed`).
        test_seed: the test split's seed, never the run's: every run is tested on the same digits.
    The other arguments are ImageDataModule's.
    """

    def __init__(self, test_size: int = DEFAULT_TEST_SIZE, test_seed: int = 0, **common) -> None:
        super().__init__(test_size=test_size, test_seed=test_seed, **common)

    def prepare_data(self) -> None:
        load_digits_arrays()  # fails here, with the install hint, when scikit-learn is missing

    def read_splits(self) -> RawSplits:
        digits = load_digits_arrays()
        parts = split_digits(digits.x, digits.y, self.hparams.test_size, self.hparams.test_seed)
        train, test = (Split(torch.from_numpy(x), torch.from_numpy(y)) for x, y in (parts[:2], parts[2:]))
        content = hashlib.sha256(digits.x.tobytes() + digits.y.tobytes()).hexdigest()
        return RawSplits(train, test, {"sklearn.datasets.load_digits": content})
