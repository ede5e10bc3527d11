"""Reading, writing and unpacking IDX files, the format MNIST ships in.

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
from typing import BinaryIO

import numpy as np

_GZIP_MAGIC = b"\x1f\x8b"
_UBYTE = 0x08
_GZIP_ERRORS = (gzip.BadGzipFile, EOFError, zlib.error)  # what gzip raises on a truncated or damaged stream
# How a damaged file is mended: kdlab.data.fetch never deletes one.
_REFETCH = "kdlab moves it aside and fetches it again (in a read-only folder, replace it yourself)."

# The largest payload kdlab reads: MNIST's biggest file holds 60000 * 28 * 28 = 47 MB, so 256 MiB is
# generous while keeping a hostile header (or a gzip bomb) from claiming gigabytes of memory.
MAX_PAYLOAD_BYTES = 256 * 2**20
_MAX_HEADER_BYTES = 4 + 4 * 255  # magic + up to 255 big-endian uint32 sizes
MAX_IDX_BYTES = MAX_PAYLOAD_BYTES + _MAX_HEADER_BYTES


class IDXFormatError(ValueError):
    """An IDX file whose header and content disagree: truncated, corrupt or not IDX at all."""


def _is_gzip(path: Path) -> bool:
    with open(path, "rb") as f:
        return f.read(2) == _GZIP_MAGIC


def _open(path: Path) -> BinaryIO:
    """The file's (decompressed) content as a stream: nothing is read ahead of the caller."""
    return gzip.open(path, "rb") if _is_gzip(path) else open(path, "rb")


def _damaged_gzip(path: Path, err: Exception) -> IDXFormatError:
    return IDXFormatError(f"{path}: the gzip stream is damaged or cut short ({err}). {_REFETCH}")


def _read_exactly(stream: BinaryIO, size: int) -> bytes:
    """Up to ``size`` bytes; fewer only at the end of the stream."""
    chunks, left = [], size
    while left and (chunk := stream.read(left)):
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def _read_header(stream: BinaryIO, path: Path) -> tuple[int, ...]:
    """Read and check the header alone; return the shape it declares."""
    magic = _read_exactly(stream, 4)
    if len(magic) < 4:
        raise IDXFormatError(f"{path}: holds {len(magic)} bytes, too few for an IDX header. {_REFETCH}")
    zero, dtype_code, ndim = struct.unpack(">HBB", magic)
    if zero != 0 or ndim == 0:
        raise IDXFormatError(
            f"{path}: does not start with an IDX magic number (got 0x{magic.hex()}), so it is not an IDX file. "
            f"{_REFETCH}"
        )
    if dtype_code != _UBYTE:
        raise IDXFormatError(
            f"{path}: declares IDX element type 0x{dtype_code:02x}; kdlab reads unsigned bytes (0x08) "
            "only, which is what MNIST uses. Check that this is an MNIST file."
        )
    sizes = _read_exactly(stream, 4 * ndim)
    if len(sizes) < 4 * ndim:
        raise IDXFormatError(
            f"{path}: is truncated inside its header ({4 + len(sizes)} of {4 + 4 * ndim} bytes). {_REFETCH}"
        )
    shape = struct.unpack(f">{ndim}I", sizes)
    if math.prod(shape) > MAX_PAYLOAD_BYTES:  # Python ints: the product cannot overflow
        raise IDXFormatError(
            f"{path}: its header declares shape {shape}, i.e. {math.prod(shape)} bytes of data, more than "
            f"the {MAX_PAYLOAD_BYTES} kdlab reads (MNIST's largest file holds 47040000): not an MNIST file. "
            f"{_REFETCH}"
        )
    return shape


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read a raw or gzipped IDX file of unsigned bytes into a writable uint8 array.

    Reads the header first and then at most one byte more than it declares, so a damaged file or a
    gzip bomb costs no more memory than the array it claims to hold (at most ``MAX_PAYLOAD_BYTES``).
    """
    path = Path(path)
    try:
        with _open(path) as f:
            shape = _read_header(f, path)
            expected = math.prod(shape)
            data = np.empty(expected + 1, dtype=np.uint8)  # +1: detects content beyond the header's size
            view, filled = memoryview(data), 0
            # 1 MiB at a time: gzip inflates each read into a temporary bytes object of that size
            while filled < len(data) and (n := f.readinto(view[filled : filled + (1 << 20)])):
                filled += n
    except _GZIP_ERRORS as err:
        raise _damaged_gzip(path, err) from err
    if filled != expected:
        header_size = 4 + 4 * len(shape)
        what = "truncated" if filled < expected else "longer than its header says"
        found = f"has {header_size + filled} bytes" if filled < expected else "goes on past that"
        raise IDXFormatError(
            f"{path}: is {what}: its header declares shape {shape}, i.e. {header_size + expected} bytes, but "
            f"the {'decompressed ' if _is_gzip(path) else ''}content {found}. {_REFETCH}"
        )
    return data[:expected].reshape(shape)


def write_idx(path: str | os.PathLike, array: np.ndarray) -> None:
    """Write a uint8 array as IDX; gzipped when the name ends with ``.gz``."""
    array = np.asarray(array)
    if array.dtype != np.uint8 or array.ndim == 0:
        raise ValueError(f"write_idx writes uint8 arrays of at least one dimension (MNIST's format); got dtype "
                         f"{array.dtype} with shape {array.shape}. Convert with array.astype(np.uint8) after "
                         "checking the values lie in 0..255.")  # fmt: skip
    header = struct.pack(f">HBB{array.ndim}I", 0, _UBYTE, array.ndim, *array.shape)
    payload = header + np.ascontiguousarray(array).tobytes()
    path = Path(path)
    if path.name.endswith(".gz"):
        # mtime=0 and no stored name: the same array always gives the same .gz bytes.
        with open(path, "wb") as raw, gzip.GzipFile(filename="", fileobj=raw, mode="wb", mtime=0) as f:
            f.write(payload)
    else:
        path.write_bytes(payload)


def md5_uncompressed(path: str | os.PathLike, max_bytes: int = MAX_IDX_BYTES) -> str:
    """MD5 of the file's IDX content, so a file and its gzipped copy share one checksum.

    Stops with ``IDXFormatError`` once the content passes ``max_bytes`` (more than any IDX file kdlab
    reads), so a gzip bomb costs a fraction of a second rather than minutes of inflating.
    """
    path = Path(path)
    digest, total = hashlib.md5(), 0
    try:
        with _open(path) as f:
            while chunk := f.read(min(1 << 20, max_bytes + 1 - total)):
                digest.update(chunk)
                total += len(chunk)
                if total > max_bytes:
                    raise IDXFormatError(
                        f"{path}: its {'decompressed ' if _is_gzip(path) else ''}content exceeds {max_bytes} "
                        f"bytes, more than any IDX file kdlab reads: not an MNIST file. {_REFETCH}"
                    )
    except _GZIP_ERRORS as err:
        raise _damaged_gzip(path, err) from err
    return digest.hexdigest()


def unpack(src: Path, dst: Path, max_bytes: int = MAX_IDX_BYTES) -> None:
    """Copy `src` into `dst`, gunzipped when it is gzip, refusing more than `max_bytes` (a gzip bomb)."""
    with _open(src) as fin, open(dst, "wb") as fout:
        written = 0
        while chunk := fin.read(min(1 << 20, max_bytes + 1 - written)):
            fout.write(chunk)
            written += len(chunk)
            if written > max_bytes:
                raise IDXFormatError(f"{src}: unpacks to more than {max_bytes} bytes, more than any file kdlab reads")
