"""CIFAR-10 and CIFAR-100 in torchvision's on-disk format, read without letting a pickle run code.

``root/cifar-10-batches-py/`` holds ``data_batch_1`` .. ``data_batch_5``, ``test_batch`` and
``batches.meta``; ``root/cifar-100-python/`` holds ``train``, ``test`` and ``meta``. Each is a dict
pickled by Python 2: ``data`` is a uint8 array [N, 3072] whose rows are an image's R, G and B planes
of 32x32 pixels, row-major (so a row reshapes to [3, 32, 32] as it is); ``labels`` (CIFAR-100:
``fine_labels``) a list of ints; the meta file's ``label_names`` (``fine_label_names``) the classes.
The checksums are torchvision's, so a folder torchvision filled is used as it is. Missing or damaged
files are taken from the official archive by ``kdlab.data.fetch``, as every dataset's are.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch

from kdlab.data.archive import fetch_archive
from kdlab.data.datamodule import ImageDataModule
from kdlab.data.fetch import DataUnavailableError, FileSpec, ForeignDataError, ensure_files, survey, unusable
from kdlab.data.fingerprint import file_digests
from kdlab.data.safe_pickle import load_numpy_pickle
from kdlab.data.spec import RawSplits, Split

# CIFAR-100's `train` is the largest file (50000 * 3072 bytes of pixels, 154 MB): the bound is generous,
# yet keeps a hostile file from claiming gigabytes.
MAX_FILE_BYTES = 256 * 2**20


@dataclass(frozen=True)
class CifarSpec:
    """Where one CIFAR variant lives, how its files are keyed, and what their checksums are."""

    title: str
    folder: str
    url: str
    archive_md5: str
    md5: dict[str, str]  # every file in `folder`: the train batches, then test, then meta
    labels_key: str
    names_key: str
    num_classes: int

    @property
    def train(self) -> list[str]:
        return list(self.md5)[:-2]

    @property
    def test(self) -> str:
        return list(self.md5)[-2]

    @property
    def meta(self) -> str:
        return list(self.md5)[-1]


# Taken from torchvision 0.28.0, torchvision/datasets/cifar.py lines 31-50 (CIFAR10) and 152-167
# (CIFAR100): the archives' MD5 (`tgz_md5`) and each extracted file's (`train_list`, `test_list`, `meta`).
CIFAR_SPECS = {
    "cifar10": CifarSpec(
        title="CIFAR-10",
        folder="cifar-10-batches-py",
        url="https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
        archive_md5="c58f30108f718f92721af3b95e74349a",
        md5={
            "data_batch_1": "c99cafc152244af753f735de768cd75f",
            "data_batch_2": "d4bba439e000b95fd0a9bffe97cbabec",
            "data_batch_3": "54ebc095f3ab1f0389bbae665268c751",
            "data_batch_4": "634d18415352ddfa80567beed471001a",
            "data_batch_5": "482c414d41f54cd18b22e5b47cb7c3cb",
            "test_batch": "40351d587109b95175f43aff81a1287e",
            "batches.meta": "5ff9c542aee3614f3951f8cda6e48888",
        },
        labels_key="labels",
        names_key="label_names",
        num_classes=10,
    ),
    "cifar100": CifarSpec(
        title="CIFAR-100",
        folder="cifar-100-python",
        url="https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
        archive_md5="eb9058c3a382ffc7106e4002c42a8d85",
        md5={
            "train": "16019d7e3df5f24257cddd939b257f8d",
            "test": "f0ef6b0ae62326f3e7ffdfab6717acfc",
            "meta": "7973b15100ade9c7d40fb424638fde48",
        },
        labels_key="fine_labels",
        names_key="fine_label_names",
        num_classes=100,
    ),
}


class CifarFormatError(ValueError):
    """A CIFAR file that cannot be read: missing bytes, not a pickle, or naming code it may not run."""


class CifarContentError(CifarFormatError, ForeignDataError):
    """A readable pickle that does not hold what this CIFAR file should: another dataset's file."""


class CifarArrays(NamedTuple):
    train_x: np.ndarray  # uint8 [N, 3, 32, 32]
    train_y: np.ndarray  # int64 [N]
    test_x: np.ndarray
    test_y: np.ndarray
    class_names: list[str]


def cifar_spec(name: str) -> CifarSpec:
    if name not in CIFAR_SPECS:
        raise ValueError(f"Unknown CIFAR dataset {name!r}: kdlab reads {' and '.join(map(repr, CIFAR_SPECS))}.")
    return CIFAR_SPECS[name]


def _load(path: Path, spec: CifarSpec) -> dict:
    """The pickled dict in ``path``, its bytes keys decoded; at most ``MAX_FILE_BYTES`` are read."""
    if not path.exists():
        raise FileNotFoundError(
            f"{path} is missing. The Trainer calls prepare_data() to fetch {spec.title}; outside a Trainer call "
            f"dm.prepare_data() first, or point data.data_dir at the folder that holds {spec.folder}/ (the folder "
            f"torchvision is given, not {spec.folder}/ itself)."
        )
    fix = "kdlab moves it aside and fetches it again (in a read-only folder, replace it yourself)."
    if not path.is_file() or path.stat().st_size > MAX_FILE_BYTES:
        raise CifarFormatError(f"{path}: is not a regular file of at most {MAX_FILE_BYTES} bytes. {fix}")
    try:
        with open(path, "rb") as f:
            obj = load_numpy_pickle(f)
    except OSError:
        raise
    except Exception as err:  # garbage makes the unpickler raise about anything; none of it is a bug here
        raise CifarFormatError(f"{path}: is not a readable CIFAR pickle ({type(err).__name__}: {err}). {fix}") from None
    if not isinstance(obj, dict):
        raise CifarContentError(f"{path}: holds a {type(obj).__name__}, not the dict a CIFAR file holds.")
    return {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in obj.items()}


def _read_batch(path: Path, spec: CifarSpec) -> tuple[np.ndarray, np.ndarray]:
    entry = _load(path, spec)
    data, labels = entry.get("data"), entry.get(spec.labels_key)
    if not (isinstance(data, np.ndarray) and data.dtype == np.uint8 and data.ndim == 2 and data.shape[1] == 3072):
        got = f"{data.dtype} {data.shape}" if isinstance(data, np.ndarray) else type(data).__name__
        raise CifarContentError(f"{path}: 'data' should be a uint8 array of shape (N, 3072), got {got}.")
    key, n, k = spec.labels_key, len(data), spec.num_classes
    if not (isinstance(labels, list) and len(labels) == n and all(type(v) is int for v in labels)):
        got = f"{len(labels)} items" if isinstance(labels, list) else f"a {type(labels).__name__}"
        raise CifarContentError(f"{path}: {key!r} should be a list of {n} ints, one per image; got {got}.")
    if labels and (min(labels) < 0 or max(labels) >= k):
        raise CifarContentError(
            f"{path}: {key!r} runs from {min(labels)} to {max(labels)}, but {spec.title}'s labels lie in 0..{k - 1}. "
            f"Check that the folder holds {spec.title}, not another dataset."
        )
    return data.reshape(-1, 3, 32, 32), np.asarray(labels, dtype=np.int64)


def _read_names(path: Path, spec: CifarSpec) -> list[str]:
    names = _load(path, spec).get(spec.names_key)
    if isinstance(names, list):
        names = [n.decode("latin1") if isinstance(n, bytes) else n for n in names]
    if not (isinstance(names, list) and len(names) == spec.num_classes and all(isinstance(n, str) for n in names)):
        raise CifarContentError(
            f"{path}: {spec.names_key!r} should list {spec.num_classes} class names, as {spec.title} has; got "
            f"{names!r:.200}. Check that the folder holds {spec.title}, not another dataset."
        )
    return names


def check_file(spec: CifarSpec, path: Path, fname: str) -> None:
    """Check the format of the file ``fname`` (stored at ``path``); raises as ``read_cifar`` would."""
    _read_names(path, spec) if fname == spec.meta else _read_batch(path, spec)


def read_cifar(root: str | os.PathLike, name: str) -> CifarArrays:
    """``root/<folder>`` (as torchvision lays it out) as uint8 images [N, 3, 32, 32] and int64 labels.

    Checks the format (shapes, label range, class names), not checksums: ``ensure_cifar`` does that.
    """
    spec = cifar_spec(name)
    folder = Path(root).expanduser() / spec.folder
    train = [_read_batch(folder / f, spec) for f in spec.train]
    test_x, test_y = _read_batch(folder / spec.test, spec)
    train_x, train_y = (np.concatenate(parts) for parts in zip(*train, strict=True))
    return CifarArrays(train_x, train_y, test_x, test_y, _read_names(folder / spec.meta, spec))


def ensure_cifar(root: str | os.PathLike, name: str, download: bool = True, verify: bool = True, *,
                 timeout: float = 60.0) -> Path:  # fmt: skip
    """Make ``root/<folder>`` hold valid files for ``name`` (``"cifar10"``, ``"cifar100"``); return that folder.

    ``verify=False`` checks the format only (generated data has no published checksum). The rest is
    ``ensure_files``' policy, locked on ``root/.<folder>.lock``: valid files are used as they are, other
    data is refused untouched, damaged files are moved aside and the missing ones taken from the
    official archive (``root/<archive>.tar.gz`` when it is there, else downloaded).
    """
    spec = cifar_spec(name)
    folder = Path(root).expanduser().resolve() / spec.folder
    files, check = [FileSpec(f, md5 if verify else None) for f, md5 in spec.md5.items()], partial(check_file, spec)
    hint = (f"If they are your own files in {spec.title}'s format, not the official ones, pass verify=False "
            "(data.verify=false) to use them as they are. ") if verify else ""  # fmt: skip
    if not download:
        todo, damaged = survey(folder, files, check, spec.title, hint) if folder.is_dir() else (files, {})
        if todo:
            raise DataUnavailableError(
                f"{spec.title} is not ready: {unusable(folder, todo, damaged)}. Pass download=True (data.download="
                f"true) to fetch it (damaged files are moved aside), or point data.data_dir at the folder that "
                f"holds a valid {spec.folder}/."
            )
        return folder

    archive = partial(fetch_archive, spec.url, spec.archive_md5 if verify else None, spec.folder, check=check,
                      timeout=timeout)  # fmt: skip
    return ensure_files(folder, files, check, spec.title, fallback=archive, timeout=timeout,
                        lock=folder.parent / f".{spec.folder}.lock", foreign_hint=hint)  # fmt: skip


class CIFARDataModule(ImageDataModule):
    """CIFAR-10 or CIFAR-100 (`name`), in torchvision's on-disk format under `data_dir`.

    Args:
        data_dir: the folder holding (or to hold) `cifar-10-batches-py/` or `cifar-100-python/`.
        verify: check every file against torchvision's published MD5s (false: the format only).
        download: fetch the official archive when files are missing or damaged.
    The other arguments are ImageDataModule's; `name` picks the dataset.
    """

    def __init__(self, data_dir: str | os.PathLike, verify: bool = True, download: bool = True, **common) -> None:
        cifar_spec(common.get("name", ""))  # an unknown name is refused before anything else
        super().__init__(data_dir=os.fspath(data_dir), verify=bool(verify), download=bool(download), **common)

    def prepare_data(self) -> None:
        if self.loaded:  # read into memory already (ImageDataModule.loaded)
            return
        hp = self.hparams
        ensure_cifar(hp.data_dir, hp.name, download=hp.download, verify=hp.verify)

    def read_splits(self) -> RawSplits:
        hp, spec = self.hparams, cifar_spec(self.hparams.name)
        arrays = read_cifar(hp.data_dir, hp.name)
        train, test = (Split(torch.from_numpy(x), torch.from_numpy(y)) for x, y in (arrays[:2], arrays[2:4]))
        return RawSplits(train, test, file_digests(Path(hp.data_dir).expanduser() / spec.folder, sorted(spec.md5)))
