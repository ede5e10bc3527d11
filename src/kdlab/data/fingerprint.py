"""Content identity of the files a run read: what "the same data" means in a run's record.

``verify=False`` (generated test data, one's own files) skips published checksums, so the path of the
data folder says nothing about its content; the MD5 of each file's content does.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from kdlab.data.idx import md5_uncompressed

# (resolved path, size, mtime_ns, ctime_ns, inode) -> MD5 of the uncompressed content. ctime and the
# inode change on any write or replacement, even one that restores the old size and mtime.
_MD5_MEMO: dict[tuple[str, int, int, int, int], str] = {}


def _stat_key(path: Path) -> tuple[str, int, int, int, int]:
    st = path.stat()
    return (str(path), st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino)


def memoised_md5(path: Path) -> str:
    """MD5 of the file's (unpacked) content, remembered per process while the file is unchanged.

    Every run of a sweep, teacher and student, then costs a few ``stat`` calls, while any rewrite of a
    file is noticed.
    """
    key = _stat_key(path)
    if (digest := _MD5_MEMO.get(key)) is None:
        digest = md5_uncompressed(path)
        if _stat_key(path) == key:  # not rewritten while being read: safe to remember
            _MD5_MEMO[key] = digest
    return digest


def file_digests(folder: Path, names: Sequence[str]) -> dict[str, str]:
    """MD5 of each named file's content in `folder`, by name."""
    folder = Path(folder).expanduser().resolve()
    return {name: memoised_md5(folder / name) for name in names}
