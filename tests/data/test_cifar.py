"""CIFAR-10/100: torchvision's on-disk format written and read back, hostile files, ensure_cifar's policy.

All data is generated; the download is a function replaced by one that copies a local archive, so
nothing here touches the network.
"""

import dataclasses
import hashlib
import io
import logging
import os
import pickle
import tarfile
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from cifar_files import write_cifar

from kdlab.data import CIFARDataModule, DataSpec, DataUnavailableError, ForeignDataError, normalize, shift_images
from kdlab.data import fetch as fetch_module
from kdlab.data.cifar import CIFAR_SPECS, CifarContentError, CifarFormatError, ensure_cifar, read_cifar

pytestmark = pytest.mark.unit


def _arrays(name, n_train=50, n_test=20, seed=0):
    k = CIFAR_SPECS[name].num_classes
    rng = np.random.default_rng(seed)
    return dict(
        train_x=rng.integers(0, 256, (n_train, 3, 32, 32), dtype=np.uint8),
        train_y=rng.integers(0, k, n_train),
        test_x=rng.integers(0, 256, (n_test, 3, 32, 32), dtype=np.uint8),
        test_y=rng.integers(0, k, n_test),
        class_names=[f"class {i}" for i in range(k)],
    )


def _md5(path):
    return hashlib.md5(path.read_bytes()).hexdigest()


def _tar_gz(folder, dest, extra=None):
    """``folder`` packed as the official archive is: ``<folder name>/<file>`` members."""
    with tarfile.open(dest, "w:gz") as tar:
        tar.add(folder, arcname=folder.name)
        for info, data in extra or []:
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return dest


def _make_source(tmp_path, name):
    """Generated data in a folder of its own, its archive, and a spec whose checksums are theirs."""
    spec = CIFAR_SPECS[name]
    arrays = _arrays(name)
    folder = write_cifar(tmp_path / "source", name, **arrays)
    archive = _tar_gz(folder, tmp_path / spec.url.rsplit("/", 1)[1])
    sums = {f: _md5(folder / f) for f in spec.md5}
    spec = dataclasses.replace(spec, archive_md5=_md5(archive), md5=sums)
    return dict(arrays=arrays, folder=folder, archive=archive, spec=spec)


@pytest.fixture
def source(tmp_path):
    return _make_source(tmp_path, "cifar10")


@pytest.fixture
def served(monkeypatch, source):
    """download_url replaced: it copies the generated archive and counts its calls."""
    calls = []

    def fake_download(url, dest, timeout):
        calls.append(url)
        dest.write_bytes(source["archive"].read_bytes())

    monkeypatch.setattr(fetch_module, "download_url", fake_download)
    return calls


def _dump(obj):
    """A pickle as Python 3 writes one (protocol 4: numpy's _reconstruct path, which the reader allows)."""
    return pickle.dumps(obj, protocol=4)


def _same(a, b):
    return all(np.array_equal(x, y) and x.dtype == y.dtype for x, y in zip(a[:4], b[:4], strict=True))


@pytest.mark.parametrize("name", ["cifar10", "cifar100"])
def test_write_then_read_is_bit_for_bit(tmp_path, name):
    arrays = _arrays(name)
    folder = write_cifar(tmp_path, name, **arrays)
    assert sorted(os.listdir(folder)) == sorted(CIFAR_SPECS[name].md5)
    got = read_cifar(tmp_path, name)
    want = (arrays["train_x"], arrays["train_y"].astype(np.int64), arrays["test_x"], arrays["test_y"].astype(np.int64))
    assert _same(got, want) and got.class_names == arrays["class_names"]
    assert got.train_x.dtype == np.uint8 and got.train_y.dtype == np.int64
    assert all(a.flags.writeable for a in got[:4])  # torch.from_numpy warns on read-only arrays


@pytest.mark.parametrize("name", ["cifar10", "cifar100"])
def test_files_load_as_torchvision_loads_them(tmp_path, name):
    """The plain pickle.load(encoding="latin1") of torchvision/datasets/cifar.py sees str keys, as with
    the Python 2 originals; encoding="bytes" sees b"data"."""
    spec, arrays = CIFAR_SPECS[name], _arrays(name)
    folder = write_cifar(tmp_path, name, **arrays)
    with open(folder / spec.test, "rb") as f:
        entry = pickle.load(f, encoding="latin1")
    assert np.array_equal(np.vstack([entry["data"]]).reshape(-1, 3, 32, 32), arrays["test_x"])
    assert entry[spec.labels_key] == arrays["test_y"].tolist()
    with open(folder / spec.meta, "rb") as f:
        assert pickle.load(f, encoding="latin1")[spec.names_key] == arrays["class_names"]
    with open(folder / spec.train[0], "rb") as f:
        assert set(pickle.load(f, encoding="bytes")) == {b"data", spec.labels_key.encode()}


def test_cifar10_spreads_training_set_over_five_batches(tmp_path):
    folder = write_cifar(tmp_path, "cifar10", **_arrays("cifar10", n_train=53))
    sizes = [
        len(pickle.loads((folder / f"data_batch_{i}").read_bytes(), encoding="latin1")["labels"]) for i in range(1, 6)
    ]
    assert sizes == [10, 11, 10, 11, 11] and sum(sizes) == 53


def test_torchvision_reads_what_write_cifar_wrote(tmp_path, monkeypatch):
    try:
        from torchvision.datasets import CIFAR10
    except Exception as err:  # torchvision is optional; a build that does not match torch fails to import
        pytest.skip(f"torchvision does not import here: {err}")
    arrays = _arrays("cifar10")
    folder = write_cifar(tmp_path, "cifar10", **arrays)
    # torchvision checks every file against its MD5 list first: give it the generated files' sums.
    sums = [[f, _md5(folder / f)] for f in CIFAR_SPECS["cifar10"].train]
    monkeypatch.setattr(CIFAR10, "train_list", sums)
    monkeypatch.setattr(CIFAR10, "test_list", [["test_batch", _md5(folder / "test_batch")]])
    monkeypatch.setattr(CIFAR10, "meta", {**CIFAR10.meta, "md5": _md5(folder / "batches.meta")})
    for train, x, y in ((True, "train_x", "train_y"), (False, "test_x", "test_y")):
        ds = CIFAR10(str(tmp_path), train=train)
        assert np.array_equal(ds.data, arrays[x].transpose(0, 2, 3, 1))  # torchvision keeps HWC
        assert ds.targets == arrays[y].tolist() and ds.classes == arrays["class_names"]


@pytest.mark.parametrize(
    "garbage", [b"", b"\x80\x02}q\x00(U\x04data", b"not a pickle at all", b"\x80\x02K\x01."], ids=lambda g: repr(g[:8])
)
def test_truncated_or_garbage_file_is_refused_naming_it(tmp_path, garbage):
    folder = write_cifar(tmp_path, "cifar10", **_arrays("cifar10"))
    (folder / "data_batch_3").write_bytes(garbage)
    with pytest.raises(CifarFormatError, match="data_batch_3"):
        read_cifar(tmp_path, "cifar10")


def test_cut_short_pickle_is_refused(tmp_path):
    folder = write_cifar(tmp_path, "cifar10", **_arrays("cifar10"))
    whole = (folder / "test_batch").read_bytes()
    (folder / "test_batch").write_bytes(whole[: len(whole) // 2])
    with pytest.raises(CifarFormatError, match="test_batch: is not a readable CIFAR pickle"):
        read_cifar(tmp_path, "cifar10")


class _RunsCode:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.mkdir, (str(self.marker),))


def test_pickle_naming_a_forbidden_global_is_refused_and_nothing_runs(tmp_path):
    folder = write_cifar(tmp_path, "cifar10", **_arrays("cifar10"))
    marker = tmp_path / "pwned"
    (folder / "data_batch_1").write_bytes(pickle.dumps({"data": _RunsCode(marker), "labels": []}, protocol=2))
    with pytest.raises(CifarFormatError, match=r"data_batch_1.*(posix|os)\.mkdir"):
        read_cifar(tmp_path, "cifar10")
    assert not marker.exists()


@pytest.mark.parametrize("bad", [[10], [-1]])
def test_label_out_of_range_is_refused(tmp_path, bad):
    folder = write_cifar(tmp_path, "cifar10", **_arrays("cifar10"))
    one = np.zeros((1, 3072), np.uint8)
    (folder / "test_batch").write_bytes(_dump({"data": one, "labels": bad}))
    with pytest.raises(CifarContentError, match=rf"test_batch: 'labels' runs from {bad[0]} to {bad[0]}.*0\.\.9"):
        read_cifar(tmp_path, "cifar10")


def test_wrong_shapes_and_names_are_refused(tmp_path):
    folder = write_cifar(tmp_path, "cifar10", **_arrays("cifar10"))
    (folder / "test_batch").write_bytes(_dump({"data": np.zeros((2, 784), np.uint8), "labels": [0, 1]}))
    with pytest.raises(CifarContentError, match=r"test_batch: 'data' should be a uint8 array of shape \(N, 3072\)"):
        read_cifar(tmp_path, "cifar10")
    write_cifar(tmp_path, "cifar10", **_arrays("cifar10"))
    (folder / "batches.meta").write_bytes(_dump({"label_names": ["a", "b"]}))
    with pytest.raises(CifarContentError, match="batches.meta: 'label_names' should list 10 class names"):
        read_cifar(tmp_path, "cifar10")


def test_write_cifar_refuses_bad_input(tmp_path):
    arrays = _arrays("cifar10")
    with pytest.raises(ValueError, match=r"test labels run 10\.\.10, not within 0\.\.9"):
        write_cifar(tmp_path, "cifar10", **{**arrays, "test_y": np.full(len(arrays["test_x"]), 10)})
    with pytest.raises(ValueError, match="10 classes; got 3"):
        write_cifar(tmp_path, "cifar10", **{**arrays, "class_names": ["a", "b", "c"]})
    with pytest.raises(ValueError, match="Unknown CIFAR dataset 'cifar20'"):
        read_cifar(tmp_path, "cifar20")


def test_missing_folder_says_where_to_point(tmp_path):
    with pytest.raises(FileNotFoundError, match="not cifar-10-batches-py/ itself"):
        read_cifar(tmp_path, "cifar10")


# ensure_cifar


def test_valid_generated_files_pass_with_verify_false_without_a_lock(tmp_path, monkeypatch, served):
    write_cifar(tmp_path, "cifar10", **_arrays("cifar10"))
    monkeypatch.setattr(fetch_module, "file_lock", lambda path: pytest.fail("no lock is needed when all is valid"))
    assert ensure_cifar(tmp_path, "cifar10", verify=False) == tmp_path.resolve() / "cifar-10-batches-py"
    assert served == []


def test_valid_official_files_are_used_as_they_are(tmp_path, monkeypatch, source, served):
    monkeypatch.setitem(CIFAR_SPECS, "cifar10", source["spec"])
    monkeypatch.setattr(fetch_module, "file_lock", lambda path: pytest.fail("no lock is needed when all is valid"))
    assert ensure_cifar(source["folder"].parent, "cifar10") == source["folder"]
    assert served == []


def test_generated_files_are_refused_under_verify_and_left_alone(tmp_path, served):
    folder = write_cifar(tmp_path, "cifar10", **_arrays("cifar10"))
    before = {f: (folder / f).read_bytes() for f in os.listdir(folder)}
    with pytest.raises(ForeignDataError, match="pass verify=False") as err:
        ensure_cifar(tmp_path, "cifar10")
    assert "not the official one" in str(err.value) and "changes nothing" in str(err.value)
    assert {f: (folder / f).read_bytes() for f in os.listdir(folder)} == before and served == []


def test_another_datasets_content_is_refused_even_without_verify(tmp_path, served):
    folder = write_cifar(tmp_path, "cifar10", **_arrays("cifar10"))
    (folder / "test_batch").write_bytes(_dump({"data": np.zeros((1, 3072), np.uint8), "labels": [57]}))
    with pytest.raises(ForeignDataError, match="runs from 57 to 57"):
        ensure_cifar(tmp_path, "cifar10", verify=False)
    assert sorted(os.listdir(folder)) == sorted(CIFAR_SPECS["cifar10"].md5) and served == []


def test_download_into_empty_folder(tmp_path, monkeypatch, source, served):
    monkeypatch.setitem(CIFAR_SPECS, "cifar10", source["spec"])
    root = tmp_path / "cache"
    folder = ensure_cifar(root, "cifar10")
    assert served == [source["spec"].url]
    assert _same(read_cifar(root, "cifar10"), read_cifar(source["folder"].parent, "cifar10"))
    assert sorted(os.listdir(folder)) == sorted(source["spec"].md5)  # no .part left behind
    assert [p.name for p in root.iterdir() if not p.name.endswith(".lock")] == ["cifar-10-batches-py"]


def test_download_with_wrong_archive_md5_installs_nothing(tmp_path, served):
    """The official MD5 cannot match the generated archive: it is refused as a bad download would be."""
    root = tmp_path / "cache"
    with pytest.raises(DataUnavailableError, match="has MD5 .* not the official c58f30108f718f92721af3b95e74349a"):
        ensure_cifar(root, "cifar10")
    assert os.listdir(root / "cifar-10-batches-py") == []
    assert not list(root.glob(".*.part"))


def test_corrupt_file_is_moved_aside_not_deleted(tmp_path, monkeypatch, source, served, caplog):
    monkeypatch.setitem(CIFAR_SPECS, "cifar10", source["spec"])
    folder = source["folder"]
    good = (folder / "data_batch_2").read_bytes()
    (folder / "data_batch_2").write_bytes(good[:1000])
    with caplog.at_level(logging.WARNING, logger="kdlab.data.fetch"):
        ensure_cifar(folder.parent, "cifar10")
    assert (folder / "data_batch_2").read_bytes() == good
    [aside] = folder.glob("data_batch_2.bad-*")
    assert aside.read_bytes() == good[:1000]
    assert str(aside) in caplog.text and "not deleted" in caplog.text
    assert served == [source["spec"].url]


def test_archive_already_in_root_is_used_without_download(tmp_path, monkeypatch, source, served):
    monkeypatch.setitem(CIFAR_SPECS, "cifar10", source["spec"])
    root = tmp_path / "cache"
    root.mkdir()
    (root / "cifar-10-python.tar.gz").write_bytes(source["archive"].read_bytes())
    ensure_cifar(root, "cifar10")
    assert served == [] and (root / "cifar-10-python.tar.gz").exists()
    assert _same(read_cifar(root, "cifar10"), read_cifar(source["folder"].parent, "cifar10"))


def test_bad_archive_in_root_is_moved_aside_then_downloaded(tmp_path, monkeypatch, source, served):
    monkeypatch.setitem(CIFAR_SPECS, "cifar10", source["spec"])
    root = tmp_path / "cache"
    root.mkdir()
    (root / "cifar-10-python.tar.gz").write_bytes(b"half an archive")
    ensure_cifar(root, "cifar10")
    assert served == [source["spec"].url]
    [aside] = root.glob("cifar-10-python.tar.gz.bad-*")
    assert aside.read_bytes() == b"half an archive"


@pytest.mark.parametrize(
    "member",
    [
        ("../escaped", tarfile.REGTYPE),
        ("/tmp/absolute", tarfile.REGTYPE),
        ("cifar-10-batches-py/link", tarfile.SYMTYPE),
    ],
    ids=["dotdot", "absolute", "symlink"],
)
def test_archive_with_escaping_or_link_member_is_refused(tmp_path, monkeypatch, source, member):
    info = tarfile.TarInfo(member[0])
    info.type = member[1]
    data = b"evil" if member[1] == tarfile.REGTYPE else None
    if data:
        info.size = len(data)
    else:
        info.linkname = "/etc/passwd"
    bad = _tar_gz(source["folder"], tmp_path / "bad.tar.gz", extra=[(info, data)])
    monkeypatch.setattr(fetch_module, "download_url", lambda url, dest, timeout: dest.write_bytes(bad.read_bytes()))
    root = tmp_path / "cache"
    with pytest.raises(DataUnavailableError, match="link or a device or lies outside"):
        ensure_cifar(root, "cifar10", verify=False)
    assert os.listdir(root / "cifar-10-batches-py") == [] and not (tmp_path / "escaped").exists()


def test_download_false_reports_what_is_missing(tmp_path, served):
    with pytest.raises(DataUnavailableError, match="data_batch_1 is missing.*download=True"):
        ensure_cifar(tmp_path, "cifar10", download=False)
    assert served == [] and not (tmp_path / "cifar-10-batches-py").exists()


def test_failed_download_says_how_to_fetch_by_hand(tmp_path, monkeypatch):
    def offline(url, dest, timeout):
        raise OSError("network unreachable")

    monkeypatch.setattr(fetch_module, "download_url", offline)
    with pytest.raises(DataUnavailableError, match="network unreachable.*put it in .* as cifar-10-python.tar.gz"):
        ensure_cifar(tmp_path, "cifar10")


def test_download_cifar100(tmp_path, monkeypatch):
    source = _make_source(tmp_path, "cifar100")
    monkeypatch.setitem(CIFAR_SPECS, "cifar100", source["spec"])
    archive = source["archive"].read_bytes()
    monkeypatch.setattr(fetch_module, "download_url", lambda url, dest, timeout: dest.write_bytes(archive))
    assert ensure_cifar(tmp_path / "cache", "cifar100") == (tmp_path / "cache" / "cifar-100-python").resolve()
    assert _same(read_cifar(tmp_path / "cache", "cifar100"), read_cifar(source["folder"].parent, "cifar100"))


def test_extracted_file_with_wrong_md5_installs_nothing(tmp_path, monkeypatch, source, served):
    """The archive's MD5 matches but one file inside does not: nothing is moved into place."""
    spec = source["spec"]
    monkeypatch.setitem(CIFAR_SPECS, "cifar10", dataclasses.replace(spec, md5={**spec.md5, "test_batch": "0" * 32}))
    root = tmp_path / "cache"
    with pytest.raises(DataUnavailableError, match="its test_batch has MD5 .* not the official 0{32}"):
        ensure_cifar(root, "cifar10")
    assert os.listdir(root / "cifar-10-batches-py") == []


def test_read_only_root_with_files_to_fetch_says_so(tmp_path, monkeypatch):
    class ReadOnlyLock:
        def acquire(self):
            raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(fetch_module, "file_lock", lambda path: ReadOnlyLock())
    with pytest.raises(DataUnavailableError, match="read-only or cannot be created.*writable folder"):
        ensure_cifar(tmp_path, "cifar10")


# CIFARDataModule (data=cifar10) on generated files
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
CIFAR10_MEAN, CIFAR10_STD = [0.4914, 0.4822, 0.4465], [0.2470, 0.2435, 0.2616]  # conf/data/cifar10.yaml's


@pytest.fixture
def cifar10(tmp_path):
    arrays = _arrays("cifar10", n_train=60, n_test=20)
    write_cifar(tmp_path, "cifar10", **arrays)
    return tmp_path, arrays


def _dm(make_data, root, **overrides):
    """data=cifar10 (crops of 4 and flips: the YAML's augmentation) on generated files: no MD5s, no download."""
    return make_data("cifar10", **{"data_dir": str(root), "verify": False, "download": False, "val_size": 10,
                                   "batch_size": 16, "eval_batch_size": 20, "seed": 0, **overrides})  # fmt: skip


def test_datamodule_spec_and_splits(cifar10, make_data):
    root, arrays = cifar10
    dm = _dm(make_data, root)
    assert isinstance(dm, CIFARDataModule)
    assert dm.static_spec == DataSpec("cifar10", (3, 32, 32), CIFAR10_CLASSES, CIFAR10_MEAN, CIFAR10_STD)
    dm.prepare_data()
    dm.setup()
    folder = root / "cifar-10-batches-py"
    assert dm.spec.fingerprint == {f: _md5(folder / f) for f in CIFAR_SPECS["cifar10"].md5}  # all 7 files read
    assert (len(dm.data_train), len(dm.data_val), len(dm.data_test)) == (50, 10, 20)
    assert torch.equal(dm.data_test.x, torch.from_numpy(arrays["test_x"]))
    assert torch.equal(dm.data_train.x, torch.from_numpy(arrays["train_x"])[dm.train_indices])
    assert dm.data_train.y.dtype == torch.int64


def test_prepare_data_checks_the_files_until_they_are_read_then_not_again(cifar10, make_data, monkeypatch):
    """Lightning calls prepare_data() at every fit and test; once setup() has read the files, checking them
    again (seven MD5s with verify=true) cannot change what the run trains on."""
    from kdlab.data import cifar as cifar_module

    calls = []
    monkeypatch.setattr(cifar_module, "ensure_cifar", lambda *a, **k: calls.append(a))
    dm = _dm(make_data, cifar10[0])
    dm.prepare_data()
    assert len(calls) == 1
    dm.setup()
    dm.prepare_data()
    dm.prepare_data()
    assert len(calls) == 1


def _train_batch(dm, n=16):
    return dm.data_train.x[:n], dm.data_train.y[:n], torch.arange(n)


def test_datamodule_training_batches_are_cropped_flipped_then_normalised(cifar10, make_data):
    dm = _dm(make_data, cifar10[0])
    dm.setup()
    x, y, index = _train_batch(dm, 50)
    out = dm.preprocess_batch((x, y, index), training=True)
    assert out.shift.shape == (50, 2) and int(out.shift.abs().max()) <= 4 and out.shift.ne(0).any()
    assert out.flip.dtype == torch.bool and 0 < int(out.flip.sum()) < 50
    shifted = shift_images(x, out.shift)  # the padded crop, then the mirror
    assert torch.equal(out.pixels, torch.where(out.flip[:, None, None, None], shifted.flip(-1), shifted))
    assert out.pixels.dtype == torch.uint8
    assert torch.equal(out.x, normalize(out.pixels, CIFAR10_MEAN, CIFAR10_STD))  # per channel
    evaluation = dm.preprocess_batch((x, y, index), training=False)
    assert evaluation.shift is None and evaluation.flip is None
    assert torch.equal(evaluation.x, normalize(x, CIFAR10_MEAN, CIFAR10_STD))


def _draws(dm, batches):
    dm.trainer = SimpleNamespace(training=True, global_rank=0, world_size=1)
    outs = [dm.preprocess_batch(_train_batch(dm), training=True) for _ in range(batches)]
    return [(o.shift, o.flip, o.pixels) for o in outs]


def test_datamodule_state_dict_continues_the_crops_and_flips(cifar10, make_data):
    dm = _dm(make_data, cifar10[0], seed=4)
    dm.setup()
    _draws(dm, 2)
    state = dm.state_dict()
    assert state["seed"] == 4 and list(state["augment_rng"]["states"]) == [0]
    expected = _draws(dm, 2)
    resumed = _dm(make_data, cifar10[0], seed=99)  # the checkpoint's seed and stream win
    resumed.setup()
    resumed.load_state_dict(state)
    for want, have in zip(expected, _draws(resumed, 2), strict=True):  # (shift, flip, pixels) of each batch
        assert all(torch.equal(a, b) for a, b in zip(want, have, strict=True))
    fresh = _dm(make_data, cifar10[0], seed=4)  # without the state: the stream starts over
    fresh.setup()
    assert not all(torch.equal(a[0], b[0]) for a, b in zip(_draws(fresh, 2), expected, strict=True))


def test_datamodule_refuses_an_unknown_cifar(tmp_path):
    with pytest.raises(ValueError, match="Unknown CIFAR dataset 'cifar20'"):
        CIFARDataModule(data_dir=tmp_path, name="cifar20", input_shape=[3, 32, 32], classes=["a", "b"], mean=0.5,
                        std=0.25)  # fmt: skip
