"""Fixtures for the data tests: datamodules from their YAML, generated dataset folders, hostile files."""

from __future__ import annotations

import gzip
import struct
import tracemalloc
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
from hydra.utils import get_class
from omegaconf import OmegaConf

from kdlab.config import CONFIG_DIR
from kdlab.data import write_idx

MiB = 2**20


def write_gzip_bomb(path: Path, shape: tuple[int, ...], zeros: int) -> Path:
    """A gzip file whose content is an IDX header declaring ``shape``, then ``zeros`` zero bytes.

    The zeros are written as one 64 MiB gzip member (about 65 KB compressed) repeated: gzip readers
    concatenate members, so a 1 GiB bomb takes well under a second to make and ~1 MB on disk.
    """
    chunk = 64 * MiB
    if zeros % chunk:
        raise ValueError(f"zeros must be a multiple of {chunk}")
    packer = zlib.compressobj(9, zlib.DEFLATED, 31)  # wbits 31: a gzip member
    member = b"".join(packer.compress(bytes(MiB)) for _ in range(chunk // MiB)) + packer.flush()
    with open(path, "wb") as f:
        f.write(gzip.compress(struct.pack(f">HBB{len(shape)}I", 0, 0x08, len(shape), *shape)))
        for _ in range(zeros // chunk):
            f.write(member)
    return path


@pytest.fixture
def gzip_bomb() -> Callable[..., Path]:
    """``gzip_bomb(path, shape=(60000, 28, 28), zeros=1 GiB)``: see ``write_gzip_bomb``."""

    def make(path: Path, shape: tuple[int, ...] = (60000, 28, 28), zeros: int = 1024 * MiB) -> Path:
        return write_gzip_bomb(path, shape, zeros)

    return make


@contextmanager
def peak_memory() -> Iterator[list[int]]:
    """Peak bytes allocated through Python (numpy included) inside the block, in ``result[0]``."""
    result = [0]
    tracemalloc.start()
    try:
        yield result
        result[0] = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


@pytest.fixture
def measure_peak():
    return peak_memory


# -- datamodules as `data=<option>` builds them ---------------------------------------------------------
def data_config(option: str) -> dict:
    """conf/data/<option>.yaml as plain data, interpolations unresolved."""
    return OmegaConf.to_container(OmegaConf.load(CONFIG_DIR / "data" / f"{option}.yaml"))


def data_module(option: str, **overrides):
    """conf/data/<option>.yaml's datamodule with `overrides`: its `_target_` called with the keys, as
    `instantiate` does (called directly, so a refusal surfaces as itself, not wrapped by Hydra)."""
    config = {**data_config(option), **overrides}
    return get_class(config.pop("_target_"))(**config)


# Generated IDX data has no published MD5, and nothing may go to the network.
IDX_OFFLINE = dict(val_size=200, batch_size=64, eval_batch_size=100, verify=False, mirrors=[], pypi_package=None)


@pytest.fixture(scope="session")
def data_yaml():
    """``data_yaml(option)``: see ``data_config``."""
    return data_config


@pytest.fixture(scope="session")
def make_data():
    """``make_data(option, **overrides)``: see ``data_module``."""
    return data_module


@pytest.fixture(scope="session")
def make_dm():
    """``make_dm(data_dir, **overrides)``: conf/data/mnist.yaml's datamodule on generated files, offline."""

    def make(data_dir, **overrides):
        return data_module("mnist", **{"data_dir": str(data_dir), **IDX_OFFLINE, **overrides})

    return make


def write_idx_folder(folder: Path, files: dict[str, str], n_train: int, n_test: int, image_shape=(28, 28),
                     seed: int = 0) -> dict[str, np.ndarray]:  # fmt: skip
    """Random uint8 images of `image_shape` and labels 0..9 as the four IDX files `files` names by role
    (gzipped where a name ends in .gz); returns the arrays written, by role."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    arrays = {}
    for kind, n in (("train", n_train), ("test", n_test)):
        arrays[f"{kind}_images"] = rng.integers(0, 256, size=(n, *image_shape), dtype=np.uint8)
        arrays[f"{kind}_labels"] = (rng.permutation(n) % 10).astype(np.uint8)  # every class present
    for role, array in arrays.items():
        write_idx(folder / files[role], array)
    return arrays


@pytest.fixture(scope="session")
def idx_folder():
    """``idx_folder(folder, files, n_train, n_test, image_shape=(28, 28), seed=0)``: see ``write_idx_folder``."""
    return write_idx_folder
