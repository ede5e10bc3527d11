"""Content identity of the MNIST files a run read: what "the same data" means in a run's record.

``verify=False`` (generated test data, a modified copy) skips the published checksums, so the path
of the data folder says nothing about its content; this MD5 per file does.
"""

from __future__ import annotations

import os
from pathlib import Path

from kdlab.data.idx import md5_uncompressed
from kdlab.data.sources import MNIST_FILES

# (resolved path, size, mtime_ns, ctime_ns, inode) -> MD5 of the uncompressed content. ctime and the
# inode change on any write or replacement, even one that restores the old size and mtime.
_MD5_MEMO: dict[tuple[str, int, int, int, int], str] = {}


def _stat_key(path: Path) -> tuple[str, int, int, int, int]:
    st = path.stat()
    return (str(path), st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino)


def _memoised_md5(path: Path) -> str:
    key = _stat_key(path)
    if (digest := _MD5_MEMO.get(key)) is None:
        digest = md5_uncompressed(path)
        if _stat_key(path) == key:  # not rewritten while being read: safe to remember
            _MD5_MEMO[key] = digest
    return digest


def data_fingerprint(data_dir: str | os.PathLike) -> dict[str, str]:
    """MD5 of the uncompressed content of each of the four MNIST files in ``data_dir``, by file name.

    Memoised per process on each file's path, size, times and inode, so asking again (every run of a
    sweep, teacher and student) costs a few ``stat`` calls, while any rewrite of a file is noticed.
    """
    data_dir = Path(data_dir).expanduser().resolve()
    if missing := [name for name in MNIST_FILES if not (data_dir / name).is_file()]:
        raise FileNotFoundError(
            f"data_fingerprint: {', '.join(missing)} not found in {data_dir}. Fingerprint the folder a run "
            "read, after MNISTDataModule.prepare_data() (or ensure_mnist) has put the four raw files there."
        )
    return {name: _memoised_md5(data_dir / name) for name in MNIST_FILES}
