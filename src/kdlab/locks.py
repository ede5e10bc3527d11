"""File locks for shared caches (data folder, teacher cache)."""

from __future__ import annotations

import os

from filelock import BaseFileLock, FileLock, SoftFileLock


def file_lock(path: str | os.PathLike, timeout: float = -1) -> BaseFileLock:
    """fcntl lock by default; KDLAB_SOFT_LOCKS=1 picks a lock file that also works on network filesystems."""
    if os.environ.get("KDLAB_SOFT_LOCKS", "").lower() in ("1", "true", "yes"):
        return SoftFileLock(str(path), timeout=timeout)
    return FileLock(str(path), timeout=timeout)
