"""kdlab.locks.file_lock: fcntl locks by default, lock files when KDLAB_SOFT_LOCKS asks for them."""

import pytest
from filelock import FileLock, SoftFileLock

from kdlab.locks import SOFT_LOCKS_ENV, file_lock

pytestmark = pytest.mark.unit


@pytest.mark.parametrize("value", [None, "", "0", "false", "OFF"])
def test_default_is_an_fcntl_lock(tmp_path, monkeypatch, value):
    if value is None:
        monkeypatch.delenv(SOFT_LOCKS_ENV, raising=False)
    else:
        monkeypatch.setenv(SOFT_LOCKS_ENV, value)
    lock = file_lock(tmp_path / "x.lock", timeout=3)
    assert isinstance(lock, FileLock) and not isinstance(lock, SoftFileLock)
    assert lock.lock_file == str(tmp_path / "x.lock") and lock.timeout == 3


@pytest.mark.heavy
@pytest.mark.parametrize("value", ["1", "true", "True", " yes "])
def test_soft_locks_on_request(tmp_path, monkeypatch, value):
    monkeypatch.setenv(SOFT_LOCKS_ENV, value)
    lock = file_lock(tmp_path / "x.lock")
    assert isinstance(lock, SoftFileLock)
    with lock:
        assert (tmp_path / "x.lock").exists()  # the lock is the file itself
        with pytest.raises(TimeoutError):
            file_lock(tmp_path / "x.lock", timeout=0.1).acquire()  # another holder waits


def test_unclear_value_is_refused(tmp_path, monkeypatch):
    monkeypatch.setenv(SOFT_LOCKS_ENV, "maybe")
    with pytest.raises(ValueError, match="KDLAB_SOFT_LOCKS='maybe' is neither on nor off"):
        file_lock(tmp_path / "x.lock")
