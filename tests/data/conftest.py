"""Fixtures for the data tests: hostile files that must be refused cheaply."""

from __future__ import annotations

import gzip
import struct
import tracemalloc
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

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
