"""CIFAR-10 and CIFAR-100 in torchvision's on-disk format, read without letting a pickle run code.

``root/cifar-10-batches-py/`` holds ``data_batch_1`` .. ``data_batch_5``, ``test_batch`` and
``batches.meta``; ``root/cifar-100-python/`` holds ``train``, ``test`` and ``meta``. Each is a dict
pickled by Python 2: ``data`` is a uint8 array [N, 3072] whose rows are an image's R, G and B planes
of 32x32 pixels, row-major (so a row reshapes to [3, 32, 32] as it is); ``labels`` (CIFAR-100:
``fine_labels``) a list of ints; the meta file's ``label_names`` (``fine_label_names``) the classes.
The checksums are torchvision's, so a folder torchvision filled is used as it is; torchvision reads
what ``write_cifar`` writes. Fetching and checking a folder is ``kdlab.data.cifar_fetch``'s work.
"""

from __future__ import annotations

import os
import pickle
import struct
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch

from kdlab.data.datamodule import ImageDataModule, RawSplits, Split

try:  # numpy >= 2 moved the module; the CIFAR pickles name numpy.core.multiarray.
    from numpy._core.multiarray import _reconstruct
except ImportError:  # pragma: no cover - numpy 1.x
    from numpy.core.multiarray import _reconstruct

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


class CifarContentError(CifarFormatError):
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


class _CifarUnpickler(pickle.Unpickler):
    """Rebuilds numpy arrays and plain containers and nothing else: a downloaded pickle must not run code."""

    _ALLOWED = {
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        ("numpy.core.multiarray", "_reconstruct"): _reconstruct,
        ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
    }

    def find_class(self, module: str, name: str) -> object:
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"it refers to {module}.{name}, and only numpy arrays may be rebuilt")
        return self._ALLOWED[(module, name)]


def _load(path: Path, spec: CifarSpec) -> dict:
    """The pickled dict in ``path``, its bytes keys decoded; at most ``MAX_FILE_BYTES`` are read."""
    if not path.exists():
        raise FileNotFoundError(
            f"{path} is missing. Fetch {spec.title} with kdlab.data.cifar_fetch.ensure_cifar, or point root at "
            f"the folder that holds {spec.folder}/ (the folder torchvision is given, not {spec.folder}/ itself)."
        )
    fix = f"Fetch {spec.title} again (ensure_cifar moves the bad file aside)."
    if not path.is_file() or path.stat().st_size > MAX_FILE_BYTES:
        raise CifarFormatError(f"{path}: is not a regular file of at most {MAX_FILE_BYTES} bytes. {fix}")
    try:
        with open(path, "rb") as f:  # latin1, as torchvision: Python 2's byte strings come back as str
            obj = _CifarUnpickler(f, encoding="latin1").load()
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


def check_file(path: Path, spec: CifarSpec, fname: str) -> None:
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


def _py2_pickle(obj: object) -> bytes:
    """``obj`` pickled as Python 2's cPickle wrote CIFAR (protocol 2, ``str`` as byte strings).

    Python 3's pickle cannot write a Python 2 ``str``: its bytes load as bytes even with
    ``encoding="latin1"``, and torchvision, which looks up the key ``"data"``, would not find them.
    Only what the CIFAR files hold is written: dicts, lists, tuples, ints, bools, None, str, arrays.
    """
    out = bytearray(b"\x80\x02")  # PROTO 2

    def put(o: object) -> None:
        if isinstance(o, str | bytes):
            raw = o.encode("latin1") if isinstance(o, str) else o
            out.extend((b"U" + bytes([len(raw)]) if len(raw) < 256 else b"T" + struct.pack("<i", len(raw))) + raw)
        elif o is None or isinstance(o, bool):
            out.extend({None: b"N", True: b"\x88", False: b"\x89"}[o])
        elif isinstance(o, int):
            out.extend(b"J" + struct.pack("<i", o))
        elif isinstance(o, tuple | list):
            out.extend(b"(" if isinstance(o, tuple) else b"](")
            for item in o:
                put(item)
            out.extend(b"t" if isinstance(o, tuple) else b"e")
        elif isinstance(o, dict):
            out.extend(b"}(")
            for key, value in o.items():
                put(key)
                put(value)
            out.extend(b"u")
        elif isinstance(o, np.ndarray) and o.dtype == np.uint8:
            # numpy 1.x's reduction: _reconstruct(ndarray, (0,), "b"), then __setstate__((1, shape, dtype,
            # False, raw bytes)); the dtype is dtype("u1", 0, 1), then __setstate__((3, "|", ..., 0)).
            out.extend(b"cnumpy.core.multiarray\n_reconstruct\n(cnumpy\nndarray\n")
            put((0,))
            put("b")
            out.extend(b"tR(K\x01")  # TUPLE REDUCE, then MARK and 1: the array's state begins
            put(o.shape)
            out.extend(b"cnumpy\ndtype\n")
            put(("u1", 0, 1))
            out.extend(b"R")
            put((3, "|", None, None, None, -1, -1, 0))
            out.extend(b"b")  # BUILD: the dtype's state
            put(False)  # not Fortran order
            put(np.ascontiguousarray(o).tobytes())
            out.extend(b"tb")  # TUPLE BUILD: the array's state
        else:
            raise TypeError(f"_py2_pickle writes what CIFAR files hold, not {type(o).__name__}")

    put(obj)
    return bytes(out + b".")


def _checked(what: str, x: np.ndarray, y: np.ndarray, num_classes: int) -> tuple[np.ndarray, list[int]]:
    x, y = np.asarray(x), np.asarray(y)
    if x.dtype != np.uint8 or x.shape[1:] != (3, 32, 32) or y.shape != (len(x),) or y.dtype.kind not in "iu":
        raise ValueError(
            f"write_cifar: {what} must be uint8 [N, 3, 32, 32] with N integer labels; got {x.dtype} {x.shape} "
            f"and {y.dtype} {y.shape}."
        )
    if len(y) and (y.min() < 0 or y.max() >= num_classes):
        raise ValueError(f"write_cifar: {what} labels run {y.min()}..{y.max()}, not within 0..{num_classes - 1}.")
    return x.reshape(len(x), 3072), y.tolist()


def write_cifar(
    root: str | os.PathLike,
    name: str,
    train_x: np.ndarray,
    train_y: np.ndarray,
    test_x: np.ndarray,
    test_y: np.ndarray,
    class_names: Sequence[str],
) -> Path:
    """Write arrays to ``root/<folder>`` exactly in torchvision's format (for tests); returns the folder.

    CIFAR-10's training set is split over its five batches as evenly as it goes (10000 each in the
    real one). CIFAR-100's files get fine labels only: nothing kdlab or torchvision reads needs coarse.
    """
    spec = cifar_spec(name)
    if len(class_names) != spec.num_classes:
        raise ValueError(f"write_cifar: {spec.title} has {spec.num_classes} classes; got {len(class_names)} names.")
    train_x, train_y = _checked("train", train_x, train_y, spec.num_classes)
    test_x, test_y = _checked("test", test_x, test_y, spec.num_classes)
    folder = Path(root) / spec.folder
    folder.mkdir(parents=True, exist_ok=True)
    bounds = np.linspace(0, len(train_x), len(spec.train) + 1).astype(int)
    spans = zip(spec.train, bounds[:-1], bounds[1:], strict=True)
    files = {f: {"data": train_x[a:b], spec.labels_key: train_y[a:b]} for f, a, b in spans}
    files[spec.test] = {"data": test_x, spec.labels_key: test_y}
    files[spec.meta] = {spec.names_key: list(class_names)}
    for fname, content in files.items():
        part = folder / f".{fname}.{uuid.uuid4().hex}.part"
        part.write_bytes(_py2_pickle(content))
        os.replace(part, folder / fname)
    return folder


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
        from kdlab.data.cifar_fetch import ensure_cifar

        hp = self.hparams
        ensure_cifar(hp.data_dir, hp.name, download=hp.download, verify=hp.verify)

    def read_splits(self) -> RawSplits:
        from kdlab.data.fingerprint import file_digests

        hp, spec = self.hparams, cifar_spec(self.hparams.name)
        arrays = read_cifar(hp.data_dir, hp.name)
        train, test = (Split(torch.from_numpy(x), torch.from_numpy(y).long())
                       for x, y in ((arrays.train_x, arrays.train_y), (arrays.test_x, arrays.test_y)))  # fmt: skip
        folder = Path(hp.data_dir).expanduser() / spec.folder
        return RawSplits(train, test, file_digests(folder, sorted(spec.md5)))
