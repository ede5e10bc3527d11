"""Files published in one .tar.gz (CIFAR's): a fallback source for `kdlab.data.fetch.ensure_files`.

The archive is read once as a stream, never with `extractall`, and every file taken from it is
verified before the first is moved into place, so a bad archive installs nothing.
"""

from __future__ import annotations

import gzip
import logging
import os
import shutil
import tarfile
import zlib
from pathlib import Path, PurePosixPath

from kdlab.data import fetch

log = logging.getLogger(__name__)


def fetch_archive(url: str, md5: str | None, prefix: str, todo: list[fetch.FileSpec], folder: Path,
                  check: fetch.Check, timeout: float) -> None:  # fmt: skip
    """A fallback for files published in one .tar.gz (CIFAR's): extract `<prefix>/<name>` of each file of `todo`.

    The archive beside `folder` (downloaded by hand, or by torchvision) is used when it is there and good;
    a bad one is moved aside and `url` downloaded. `md5` is the archive's (None: not checked).
    """
    name = url.rsplit("/", 1)[1]
    kept, part = folder.parent / name, fetch.part_path(folder, name)
    if kept.exists():
        try:
            extract(kept, str(kept), md5, prefix, todo, folder, check)
            return
        except ValueError as err:
            fetch.move_aside(kept, str(err))
    try:
        log.info("Downloading %s", url)
        fetch.download_url(url, part, timeout)
        extract(part, "the downloaded archive", md5, prefix, todo, folder, check)
    except fetch.FETCH_ERRORS as err:
        raise ValueError(f"{url} ({err}); download it by hand and put it in {folder.parent} as {name}") from err
    finally:
        part.unlink(missing_ok=True)


def extract(archive: Path, label: str, md5: str | None, prefix: str, todo: list[fetch.FileSpec], folder: Path,
            check: fetch.Check) -> None:  # fmt: skip
    """Move `<prefix>/<name>` of each file of `todo` from the .tar.gz `archive` into `folder`, all verified first.

    A member that is a link or a device, or whose path leaves the archive's folder, refuses the whole
    archive (the official ones hold none), and so does content past `MAX_DOWNLOAD_BYTES`.
    """
    if md5 is not None and (got := fetch.file_md5(archive)) != md5:
        raise ValueError(f"{label} has MD5 {got}, not the official {md5}")
    wanted, parts, total = {f"{prefix}/{spec.name}": spec for spec in todo}, {}, 0
    try:
        with tarfile.open(archive, "r|gz") as tar:
            for member in tar:
                path, total = PurePosixPath(member.name), total + member.size
                if path.is_absolute() or ".." in path.parts or not (member.isfile() or member.isdir()):
                    raise ValueError(f"{label}: its member {member.name!r} is a link or a device or lies outside the "
                                     "archive's folder; the official archive holds none such")  # fmt: skip
                if total > fetch.MAX_DOWNLOAD_BYTES:
                    raise ValueError(f"{label}: unpacks to more than {fetch.MAX_DOWNLOAD_BYTES} bytes")
                if member.isfile() and (spec := wanted.get(str(path))):
                    parts.setdefault(spec, fetch.part_path(folder, spec.name))
                    with tar.extractfile(member) as src, open(parts[spec], "wb") as dst:
                        shutil.copyfileobj(src, dst)
        if missing := [member for member, spec in wanted.items() if spec not in parts]:
            raise ValueError(f"{label}: holds no {', '.join(missing)}")
        for spec, part in parts.items():
            fetch.verify(part, spec, check, f"{label}: its {spec.name}")
        for spec, part in parts.items():
            os.replace(part, folder / spec.name)
            todo.remove(spec)
    except (tarfile.TarError, gzip.BadGzipFile, EOFError, zlib.error) as err:
        raise ValueError(f"{label}: is not a readable .tar.gz ({err})") from err
    finally:
        for part in parts.values():
            part.unlink(missing_ok=True)
    log.info("Extracted %s into %s", ", ".join(spec.name for spec in parts), folder)
