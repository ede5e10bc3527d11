"""MNIST for kdlab: fetching and checking the IDX files, batch transforms, the DataModule."""

from kdlab.data.datamodule import MNISTDataModule
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
    "MNISTDataModule",
    "MNISTUnavailableError",
    "data_fingerprint",
    "ensure_mnist",
    "md5_uncompressed",
    "normalize",
    "random_shift",
    "read_idx",
    "shift_images",
    "write_idx",
]
