"""Reading and writing IDX files, the format MNIST ships in.

An IDX file is a 4-byte magic number ``0x00 0x00 <type> <ndim>``, then ``ndim`` big-endian uint32
sizes, then the data in C order. MNIST uses type ``0x08`` (unsigned byte) only: labels are
``0x00000801`` (1-D), images ``0x00000803`` (N x 28 x 28). Files may be gzipped; both readers here
recognise gzip by its magic bytes rather than by the file name.
"""

from __future__ import annotations

import gzip
import hashlib
import math
import os
import struct
import zlib
from pathlib import Path

import numpy as np

_GZIP_MAGIC = b"\x1f\x8b"
_UBYTE = 0x08
# gzip raises any of these on a truncated or damaged stream.
_GZIP_ERRORS = (gzip.BadGzipFile, EOFError, zlib.error)


class IDXFormatError(ValueError):
    """An IDX file whose header and content disagree: truncated, corrupt or not IDX at all."""


def _is_gzip(path: Path) -> bool:
    with open(path, "rb") as f:
        return f.read(2) == _GZIP_MAGIC


def _read_bytes(path: Path) -> bytes:
    if not _is_gzip(path):
        return path.read_bytes()
    try:
        with gzip.open(path, "rb") as f:
            return f.read()
    except _GZIP_ERRORS as err:
        raise IDXFormatError(
            f"{path}: the gzip stream is damaged or cut short ({err}). Delete the file and fetch it again."
        ) from err


def _parse_header(data: bytes, path: Path) -> tuple[int, ...]:
    """Check the header against the payload size and return the shape it declares."""
    if len(data) < 4:
        raise IDXFormatError(
            f"{path}: holds {len(data)} bytes, too few for an IDX header. Delete the file and fetch it again."
        )
    zero, dtype_code, ndim = struct.unpack(">HBB", data[:4])
    if zero != 0 or ndim == 0:
        raise IDXFormatError(
            f"{path}: does not start with an IDX magic number (got 0x{data[:4].hex()}), so it is not an "
            "IDX file. Delete it and fetch the file again."
        )
    if dtype_code != _UBYTE:
        raise IDXFormatError(
            f"{path}: declares IDX element type 0x{dtype_code:02x}; kdlab reads unsigned bytes (0x08) "
            "only, which is what MNIST uses. Check that this is an MNIST file."
        )
    header_size = 4 + 4 * ndim
    if len(data) < header_size:
        raise IDXFormatError(
            f"{path}: is truncated inside its header ({len(data)} of {header_size} bytes). "
            "Delete the file and fetch it again."
        )
    shape = struct.unpack(f">{ndim}I", data[4:header_size])
    expected = header_size + math.prod(shape)
    if len(data) != expected:
        what = "truncated" if len(data) < expected else "longer than its header says"
        raise IDXFormatError(
            f"{path}: is {what}: its header declares shape {shape}, i.e. {expected} bytes, but the "
            f"{'decompressed ' if _is_gzip(path) else ''}content has {len(data)} bytes. "
            "Delete the file and fetch it again."
        )
    return shape


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read a raw or gzipped IDX file of unsigned bytes into a writable uint8 array."""
    path = Path(path)
    data = _read_bytes(path)
    shape = _parse_header(data, path)
    # copy(): np.frombuffer over bytes is read-only, and torch.from_numpy warns on such arrays.
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * len(shape)).reshape(shape).copy()


def write_idx(path: str | os.PathLike, array: np.ndarray) -> None:
    """Write a uint8 array as IDX; gzipped when the name ends with ``.gz``."""
    array = np.asarray(array)
    if array.dtype != np.uint8 or array.ndim == 0:
        raise ValueError(
            f"write_idx writes uint8 arrays of at least one dimension (MNIST's format); got dtype "
            f"{array.dtype} with shape {array.shape}. Convert with array.astype(np.uint8) after checking "
            "the values lie in 0..255."
        )
    header = struct.pack(f">HBB{array.ndim}I", 0, _UBYTE, array.ndim, *array.shape)
    payload = header + np.ascontiguousarray(array).tobytes()
    path = Path(path)
    if path.name.endswith(".gz"):
        # mtime=0 and no stored name: the same array always gives the same .gz bytes.
        with open(path, "wb") as raw, gzip.GzipFile(filename="", fileobj=raw, mode="wb", mtime=0) as f:
            f.write(payload)
    else:
        path.write_bytes(payload)


def md5_uncompressed(path: str | os.PathLike) -> str:
    """MD5 of the file's IDX content, so a file and its gzipped copy share one checksum."""
    path = Path(path)
    digest = hashlib.md5()
    try:
        with gzip.open(path, "rb") if _is_gzip(path) else open(path, "rb") as f:
            while chunk := f.read(1 << 20):
                digest.update(chunk)
    except _GZIP_ERRORS as err:
        raise IDXFormatError(
            f"{path}: the gzip stream is damaged or cut short ({err}). Delete the file and fetch it again."
        ) from err
    return digest.hexdigest()
