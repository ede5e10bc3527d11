"""MNIST for kdlab: fetching and checking the IDX files, batches, batch transforms, the DataModule."""

from kdlab.data.batch import Batch
from kdlab.data.batches import ShuffledBatches, derive_seed
from kdlab.data.datamodule import MNISTDataModule, Split
from kdlab.data.fingerprint import data_fingerprint
from kdlab.data.idx import IDXFormatError, md5_uncompressed, read_idx, write_idx
from kdlab.data.sources import (
    DEFAULT_MIRRORS,
    MNIST_FILES,
    MNIST_MD5,
    MNISTUnavailableError,
    ensure_mnist,
)
from kdlab.data.transforms import normalize, random_shift, shift_images

__all__ = [
    "DEFAULT_MIRRORS",
    "IDXFormatError",
    "MNIST_FILES",
    "MNIST_MD5",
    "Batch",
    "MNISTDataModule",
    "MNISTUnavailableError",
    "ShuffledBatches",
    "Split",
    "data_fingerprint",
    "derive_seed",
    "ensure_mnist",
    "md5_uncompressed",
    "normalize",
    "random_shift",
    "read_idx",
    "shift_images",
    "write_idx",
]
