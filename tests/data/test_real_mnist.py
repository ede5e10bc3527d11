"""The real MNIST, fetched into the repo's data/mnist/ folder (data=mnist's default) by whichever source works here."""

from pathlib import Path

import pytest

from kdlab.data import md5_uncompressed, read_idx

DATA_DIR = Path(__file__).parents[2] / "data" / "mnist"  # ${paths.data_dir}/mnist


@pytest.mark.e2e
def test_real_mnist_is_fetched_and_verified(make_data, data_yaml):
    dm = make_data("mnist", data_dir=str(DATA_DIR), val_size=5000)  # every source, every MD5 checked
    published = data_yaml("mnist")["md5"]
    dm.prepare_data()
    for name, md5 in published.items():
        assert md5_uncompressed(DATA_DIR / name) == md5
    shapes = {name: read_idx(DATA_DIR / name).shape for name in published}
    assert shapes == {
        "train-images-idx3-ubyte": (60000, 28, 28),
        "train-labels-idx1-ubyte": (60000,),
        "t10k-images-idx3-ubyte": (10000, 28, 28),
        "t10k-labels-idx1-ubyte": (10000,),
    }
    dm.setup()
    assert dm.spec.fingerprint == published  # the content read is the published content
    assert (len(dm.data_train), len(dm.data_val), len(dm.data_test)) == (55000, 5000, 10000)
