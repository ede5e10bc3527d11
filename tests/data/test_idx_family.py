"""The MNIST family beyond MNIST: data=fashion_mnist on its own (gzipped) layout, data=idx for one's own
files, and IDX files whose shape or labels do not fit the declared spec."""

import hashlib

import pytest
import torch
from hydra.utils import instantiate

from kdlab.config import compose_config
from kdlab.data import IDXDataModule, md5_uncompressed, normalize

pytestmark = pytest.mark.unit

GZ_FILES = {  # conf/data/fashion_mnist.yaml's data.files: kept gzipped, as Fashion-MNIST publishes them
    "train_images": "train-images-idx3-ubyte.gz",
    "train_labels": "train-labels-idx1-ubyte.gz",
    "test_images": "t10k-images-idx3-ubyte.gz",
    "test_labels": "t10k-labels-idx1-ubyte.gz",
}
RAW_FILES = {role: name.removesuffix(".gz") for role, name in GZ_FILES.items()}
FASHION_CLASSES = ("t-shirt/top", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag",
                   "ankle boot")  # fmt: skip


@pytest.fixture
def fashion(tmp_path, idx_folder):
    folder = tmp_path / "fashion_mnist"
    return folder, idx_folder(folder, GZ_FILES, n_train=120, n_test=40, seed=2)


@pytest.mark.heavy
def test_data_fashion_mnist_has_fashions_spec_and_normalises_with_its_constants(fashion):
    folder, arrays = fashion
    cfg = compose_config(["data=fashion_mnist", f"data.data_dir={folder}", "data.verify=false", "data.mirrors=[]",
                          "data.val_size=20", "data.batch_size=32"])  # fmt: skip
    dm = instantiate(cfg.data, _convert_="all")
    assert isinstance(dm, IDXDataModule)
    dm.prepare_data()
    dm.setup()
    spec = dm.spec
    assert (spec.name, spec.input_shape, spec.classes) == ("fashion_mnist", (1, 28, 28), FASHION_CLASSES)
    assert spec.mean == (pytest.approx(0.2860),) and spec.std == (pytest.approx(0.3530),)
    assert spec.fingerprint == {name: md5_uncompressed(folder / name) for name in GZ_FILES.values()}
    # the images are the .gz files' content, split as any dataset's
    assert torch.equal(dm.data_train.x[:, 0], torch.from_numpy(arrays["train_images"])[dm.train_indices])
    assert torch.equal(dm.data_test.y, torch.from_numpy(arrays["test_labels"]).long())
    x, y, index = next(iter(dm.train_dataloader()))
    batch = dm.preprocess_batch((x, y, index), training=True)
    expected = (x.to(torch.float32) / 255.0 - 0.2860) / 0.3530  # Fashion's constants, not MNIST's
    torch.testing.assert_close(batch.x, expected, rtol=0, atol=1e-6)
    assert sorted(p.name for p in folder.iterdir()) == sorted(GZ_FILES.values())  # nothing unpacked beside them


def test_fashion_gz_files_are_verified_by_the_md5_of_their_gzip_bytes(fashion, make_data):
    folder, _ = fashion
    published = {name: hashlib.md5((folder / name).read_bytes()).hexdigest() for name in GZ_FILES.values()}
    dm = make_data("fashion_mnist", data_dir=str(folder), md5=published, mirrors=[], val_size=20)
    assert dm.hparams.verify is True
    dm.prepare_data()  # valid as they are: nothing fetched, nothing written
    assert sorted(p.name for p in folder.iterdir()) == sorted(GZ_FILES.values())
    dm.setup()
    assert dm.spec.name == "fashion_mnist" and len(dm.data_train) == 100


def test_idx_files_of_another_shape_are_refused_naming_data_input_shape(tmp_path, idx_folder, make_data):
    """CIFAR-sized colour images in an IDX folder declared as 1x28x28 (idx.yaml's default input_shape)."""
    folder = tmp_path / "mine"
    idx_folder(folder, RAW_FILES, n_train=30, n_test=10, image_shape=(3, 32, 32))
    dm = make_data("idx", data_dir=str(folder), classes=[str(c) for c in range(10)], mean=[0.5], std=[0.25],
                   val_size=10)  # fmt: skip
    dm.prepare_data()  # the format is fine; the shape is not what the spec says
    with pytest.raises(ValueError, match=r"\(3, 32, 32\).*data.input_shape says \[1, 28, 28\]"):
        dm.setup()


def test_ones_own_idx_files_with_their_shape_and_per_channel_stats(tmp_path, idx_folder, make_data):
    folder = tmp_path / "mine"
    arrays = idx_folder(folder, RAW_FILES, n_train=30, n_test=10, image_shape=(3, 32, 32))
    mean, std = [0.4, 0.5, 0.6], [0.2, 0.25, 0.3]
    dm = make_data("idx", data_dir=str(folder), input_shape=[3, 32, 32], classes=[f"c{k}" for k in range(10)],
                   mean=mean, std=std, val_size=10, batch_size=8)  # fmt: skip
    dm.prepare_data()
    dm.setup()
    assert (dm.spec.name, dm.spec.input_shape, dm.spec.mean, dm.spec.std) == ("idx", (3, 32, 32), tuple(mean),
                                                                                tuple(std))  # fmt: skip
    assert torch.equal(dm.data_test.x, torch.from_numpy(arrays["test_images"]))
    x, y, index = next(iter(dm.train_dataloader()))
    channels = [(x[:, c].to(torch.float32) / 255.0 - mean[c]) / std[c] for c in range(3)]
    torch.testing.assert_close(dm.preprocess_batch((x, y, index)).x, torch.stack(channels, 1), rtol=0, atol=1e-6)
    assert torch.equal(dm.preprocess_batch((x, y, index)).x, normalize(x, mean, std))


def test_labels_beyond_the_declared_classes_are_refused(tmp_path, idx_folder, make_data):
    folder = tmp_path / "mine"
    idx_folder(folder, RAW_FILES, n_train=30, n_test=10)  # labels 0..9
    dm = make_data("idx", data_dir=str(folder), classes=["a", "b", "c"], mean=[0.5], std=[0.25], val_size=10)
    with pytest.raises(ValueError, match=r"labels run from 0 to 9, but data.classes names 3 classes"):
        dm.setup()
