"""The real MNIST, fetched into the repo's data/ folder by whichever source works here."""

from pathlib import Path

import pytest

from kdlab.data import MNIST_FILES, MNIST_MD5, ensure_mnist, md5_uncompressed, read_idx

DATA_DIR = Path(__file__).parents[2] / "data"


@pytest.mark.e2e
def test_real_mnist_is_fetched_and_verified():
    assert ensure_mnist(DATA_DIR, progress=False) == DATA_DIR.resolve()
    for name in MNIST_FILES:
        assert md5_uncompressed(DATA_DIR / name) == MNIST_MD5[name]
    shapes = {name: read_idx(DATA_DIR / name).shape for name in MNIST_FILES}
    assert shapes == {
        "train-images-idx3-ubyte": (60000, 28, 28),
        "train-labels-idx1-ubyte": (60000,),
        "t10k-images-idx3-ubyte": (10000, 28, 28),
        "t10k-labels-idx1-ubyte": (10000,),
    }
