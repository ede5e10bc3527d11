"""Inter-process file locks that also work on cluster filesystems.

kdlab locks a folder while one process fills it (the MNIST cache, a shared teacher) so that
concurrent jobs wait instead of writing the same files. The default ``filelock.FileLock`` uses
``fcntl`` locks: exact, and released by the kernel when a process dies, but NFS and Lustre may not
support them (``OSError: [Errno 37] No locks available``) or, worse, grant them to two hosts at once.
There set ``KDLAB_SOFT_LOCKS=1``: ``SoftFileLock`` only creates the lock file exclusively, which those
filesystems do honour. Its one cost: a lock file left by a process that was killed on another host
cannot be proven stale, so a later job waits on it until you delete that file by hand (filelock
reclaims a dead holder's lock file on the same host itself).
"""

from __future__ import annotations

import os

from filelock import BaseFileLock, FileLock, SoftFileLock

SOFT_LOCKS_ENV = "KDLAB_SOFT_LOCKS"
_TRUE, _FALSE = ("1", "true", "yes", "on"), ("", "0", "false", "no", "off")


def soft_locks_requested() -> bool:
    """Whether ``KDLAB_SOFT_LOCKS`` asks for lock files instead of fcntl locks."""
    value = os.environ.get(SOFT_LOCKS_ENV, "").strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ValueError(
        f"{SOFT_LOCKS_ENV}={os.environ[SOFT_LOCKS_ENV]!r} is neither on nor off: set it to 1 (lock files, for "
        "NFS/Lustre) or 0 (fcntl locks, the default), or unset it."
    )


def file_lock(path: str | os.PathLike, timeout: float = -1) -> BaseFileLock:
    """A lock on ``path`` (the lock file itself); ``timeout`` seconds to wait, -1 = forever.

    ``filelock.FileLock`` by default, ``filelock.SoftFileLock`` when ``KDLAB_SOFT_LOCKS`` is 1/true:
    see the module docstring for when to switch.
    """
    cls = SoftFileLock if soft_locks_requested() else FileLock
    return cls(os.fspath(path), timeout=timeout)
