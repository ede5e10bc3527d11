"""Getting CIFAR-10/100 into a local folder: files already there, else the official archive.

A user's files are never deleted. Files that are present and valid are used as they are; a damaged
one (not a readable pickle) is renamed ``<file>.bad-<time>`` and fetched again; files that read well
but are not the dataset asked for (another dataset's, or generated ones under ``verify=True``) stop
everything before anything changes. Every extracted file is checked against torchvision's MD5 (and
its format) before it is moved into place, so a bad download never reaches training.
"""

from __future__ import annotations

import errno
import gzip
import hashlib
import logging
import os
import shutil
import tarfile
import time
import urllib.request
import uuid
import zlib
from pathlib import Path, PurePosixPath

from kdlab.data.cifar import MAX_FILE_BYTES, CifarContentError, CifarFormatError, CifarSpec, check_file, cifar_spec
from kdlab.locks import file_lock

log = logging.getLogger(__name__)

# Each archive is about 160 MB and unpacks to about 180 MB: generous, yet bounded.
MAX_ARCHIVE_BYTES = 512 * 2**20


class CifarUnavailableError(RuntimeError):
    """No verified copy of the CIFAR files could be put in place."""


def _md5(path: Path) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _survey(folder: Path, spec: CifarSpec, verify: bool) -> dict[str, str]:
    """Why each missing or damaged file in ``folder`` cannot be used, by name; empty when all are valid.

    Only reads, so it needs no lock and works in a read-only folder. A file that is not a readable
    pickle is damaged: it can be set aside and fetched again. A readable one that does not hold this
    dataset (or, with ``verify``, whose checksum differs) is somebody's data, so this refuses to go on.
    """
    problems, foreign = {}, []
    for fname, md5 in spec.md5.items():
        path = folder / fname
        if not path.exists():
            problems[fname] = f"{path} is missing"
            continue
        if verify and path.is_file() and path.stat().st_size <= MAX_FILE_BYTES and _md5(path) == md5:
            continue
        try:
            check_file(path, spec, fname)
            if verify:
                foreign.append(f"{path} is a well-formed file, but not the official one (its MD5 is not {md5})")
        except CifarContentError as err:
            foreign.append(str(err))
        except CifarFormatError as err:
            problems[fname] = str(err)
    if foreign:
        raise CifarContentError(
            f"{folder} holds files named like {spec.title}'s that are not {spec.title}: {' '.join(foreign)} "
            f"They may be another dataset's or your own, so kdlab changes nothing. To fetch {spec.title}, point "
            f"root (paths.data_dir) at another folder or move {folder} away"
            f"{'; to use your own files in this format as they are, pass verify=False' if verify else ''}."
        )
    return problems


def ensure_cifar(
    root: str | os.PathLike, name: str, download: bool = True, verify: bool = True, *, timeout: float = 60.0
) -> Path:
    """Make ``root/<folder>`` hold valid files for ``name`` (``"cifar10"``, ``"cifar100"``); return that folder.

    Valid files are used as they are, without a lock, so a read-only folder works. ``verify=False``
    checks the format only (for generated data, which has no published checksum). Anything else
    happens under a lock on ``root/.<folder>.lock``: damaged files are renamed ``<file>.bad-<time>``
    (a user's file is never deleted), then the missing ones are taken from the official archive,
    ``root/<archive>.tar.gz`` if it is there, else downloaded.
    """
    spec = cifar_spec(name)
    root = Path(root).expanduser().resolve()
    folder = root / spec.folder
    if not (problems := _survey(folder, spec, verify)):
        return folder
    if not download:
        raise CifarUnavailableError(
            f"{spec.title} is not ready: {'; '.join(problems.values())}. Pass download=True to fetch it (damaged "
            f"files are set aside), or point root at the folder that holds a valid {spec.folder}/."
        )
    lock = file_lock(root / f".{spec.folder}.lock")
    try:
        root.mkdir(parents=True, exist_ok=True)
        lock.acquire()
    except OSError as err:
        if not isinstance(err, PermissionError) and err.errno not in (errno.EACCES, errno.EPERM, errno.EROFS):
            raise
        raise CifarUnavailableError(
            f"{root} is read-only or cannot be created ({err}), so kdlab cannot fetch {spec.title} there: "
            f"{'; '.join(problems.values())}. Point root (paths.data_dir) at a writable folder, or put a valid "
            f"{spec.folder}/ into {root}."
        ) from err
    try:
        if problems := _survey(folder, spec, verify):  # again: another process may have done it meanwhile
            _repair(root, spec, problems, verify, timeout)
    finally:
        lock.release()
    return folder


def _move_aside(path: Path, reason: str) -> None:
    aside = path.with_name(f"{path.name}.bad-{time.strftime('%Y%m%d-%H%M%S')}")
    if aside.exists():
        aside = aside.with_name(f"{aside.name}-{uuid.uuid4().hex[:8]}")
    path.rename(aside)
    log.warning("%s. Moved it to %s (kept, not deleted).", reason.rstrip("."), aside)


def download_url(url: str, dest: Path, timeout: float) -> None:
    """Fetch ``url`` into ``dest``, refusing more than ``MAX_ARCHIVE_BYTES`` (tests replace this function)."""
    with urllib.request.urlopen(url, timeout=timeout) as response, open(dest, "wb") as out:
        while chunk := response.read(1 << 20):
            if out.tell() + len(chunk) > MAX_ARCHIVE_BYTES:
                raise OSError(f"{url} sends more than {MAX_ARCHIVE_BYTES} bytes, far more than a CIFAR archive")
            out.write(chunk)


def _repair(root: Path, spec: CifarSpec, problems: dict[str, str], verify: bool, timeout: float) -> None:
    """``ensure_cifar``'s work under the lock: set damaged files aside, extract the missing ones."""
    folder, archive = root / spec.folder, root / spec.url.rsplit("/", 1)[1]
    folder.mkdir(exist_ok=True)
    for stale in [*root.glob(f".{archive.name}.*.part"), *folder.glob(".*.part")]:  # from a process that died
        stale.unlink()
    for fname, reason in problems.items():
        if (folder / fname).exists() or (folder / fname).is_symlink():
            _move_aside(folder / fname, reason)
    if archive.exists() and verify and (got := _md5(archive)) != spec.archive_md5:
        _move_aside(archive, f"{archive} has MD5 {got}, not the official {spec.archive_md5}")
    fix = f"Check the network, or download {spec.url} by hand and put it in {root} as {archive.name}."
    if archive.exists():
        try:
            _extract(archive, str(archive), folder, spec, list(problems), verify)
        except CifarFormatError as err:
            raise CifarUnavailableError(f"{err} Nothing was extracted; move the archive away and run again.") from err
        return
    part = root / f".{archive.name}.{uuid.uuid4().hex}.part"
    try:
        log.info("Downloading %s from %s (about 160 MB)", spec.title, spec.url)
        try:
            download_url(spec.url, part, timeout)
        except OSError as err:  # urllib's URLError, timeouts and refused connections are all OSErrors
            raise CifarUnavailableError(f"Could not download {spec.title} from {spec.url}: {err}. {fix}") from err
        if verify and (got := _md5(part)) != spec.archive_md5:
            raise CifarUnavailableError(
                f"The archive downloaded from {spec.url} has MD5 {got}, not the official {spec.archive_md5}, so "
                f"nothing was extracted. {fix}"
            )
        _extract(part, f"the archive downloaded from {spec.url}", folder, spec, list(problems), verify)
    except CifarFormatError as err:
        raise CifarUnavailableError(f"{err} Nothing was extracted. {fix}") from err
    finally:
        part.unlink(missing_ok=True)


def _extract(archive: Path, what: str, folder: Path, spec: CifarSpec, names: list[str], verify: bool) -> None:
    """Move ``names`` from the archive into ``folder``, all checked before the first is put in place.

    Reads the tar once as a stream and never calls ``extractall``; still, a member that is a link
    or a device, or whose path leaves the archive's folder, refuses the whole archive (the official
    ones hold none), and so does content past ``MAX_ARCHIVE_BYTES``.
    """
    wanted, parts, total = {f"{spec.folder}/{n}": n for n in names}, {}, 0
    try:
        with tarfile.open(archive, "r|gz") as tar:
            for member in tar:
                path, total = PurePosixPath(member.name), total + member.size
                if path.is_absolute() or ".." in path.parts or not (member.isfile() or member.isdir()):
                    raise CifarFormatError(
                        f"{what}: its member {member.name!r} is a link or a device or lies outside the archive's "
                        "folder; the official archive holds none such."
                    )
                if total > MAX_ARCHIVE_BYTES:
                    raise CifarFormatError(f"{what}: unpacks to more than {MAX_ARCHIVE_BYTES} bytes.")
                if member.isfile() and (fname := wanted.get(str(path))):
                    parts.setdefault(fname, folder / f".{fname}.{uuid.uuid4().hex}.part")
                    with tar.extractfile(member) as src, open(parts[fname], "wb") as dst:
                        shutil.copyfileobj(src, dst)
        if missing := [f"{spec.folder}/{n}" for n in names if n not in parts]:
            raise CifarFormatError(f"{what}: holds no {', '.join(missing)}.")
        for fname, part in parts.items():
            if verify and (got := _md5(part)) != spec.md5[fname]:
                raise CifarFormatError(f"{what}: its {fname} has MD5 {got}, not the official {spec.md5[fname]}.")
            try:
                check_file(part, spec, fname)
            except CifarFormatError as err:
                raise CifarFormatError(str(err).replace(str(part), f"{what}: its {fname}")) from None
        for fname, part in parts.items():
            os.replace(part, folder / fname)
            log.info("Extracted %s into %s", fname, folder)
    except (tarfile.TarError, gzip.BadGzipFile, EOFError, zlib.error) as err:
        raise CifarFormatError(f"{what}: is not a readable .tar.gz ({err}).") from err
    finally:
        for part in parts.values():
            part.unlink(missing_ok=True)
