"""Datasets for kdlab: one contract (DataSpec), in-memory batches, and each dataset's own reader.

- ImageDataModule: splits, loaders, augmentation and normalisation shared by every dataset
- IDXDataModule (MNIST, Fashion-MNIST, KMNIST, one's own IDX files), DigitsDataModule, CIFARDataModule
"""

from kdlab.data.affine import AffineAugment, affine_theta, random_affine, warp_images
from kdlab.data.batch import Batch
from kdlab.data.batches import ShuffledBatches, derive_seed
from kdlab.data.cifar import CIFARDataModule
from kdlab.data.datamodule import ImageDataModule
from kdlab.data.digits import DigitsDataModule
from kdlab.data.fetch import DataUnavailableError, FileSpec, ForeignDataError, ensure_files
from kdlab.data.idx import IDXFormatError, md5_uncompressed, read_idx, write_idx
from kdlab.data.mnist import IDXDataModule
from kdlab.data.spec import DataSpec, RawSplits, Split
from kdlab.data.transforms import normalize, random_flip, random_shift, shift_images

__all__ = ["AffineAugment", "Batch", "CIFARDataModule", "DataSpec", "DataUnavailableError", "DigitsDataModule",
           "FileSpec", "ForeignDataError", "IDXDataModule", "IDXFormatError", "ImageDataModule", "RawSplits",
           "ShuffledBatches", "Split", "affine_theta", "derive_seed", "ensure_files", "md5_uncompressed", "normalize",
           "random_affine", "random_flip", "random_shift", "read_idx", "shift_images", "warp_images",
           "write_idx"]  # fmt: skip
