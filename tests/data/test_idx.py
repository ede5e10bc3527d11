"""IDX round trips and the header checks that keep a damaged file out of training."""

import gzip
import hashlib
import struct
import time

import numpy as np
import pytest

from kdlab.data import IDXFormatError, md5_uncompressed, read_idx, write_idx
from kdlab.data.idx import MAX_IDX_BYTES, MAX_PAYLOAD_BYTES

pytestmark = pytest.mark.unit


@pytest.mark.parametrize("name", ["images-idx3-ubyte", "images-idx3-ubyte.gz"])
def test_round_trip_images(tmp_path, name):
    images = np.random.default_rng(0).integers(0, 256, size=(5, 28, 28), dtype=np.uint8)
    write_idx(tmp_path / name, images)
    back = read_idx(tmp_path / name)
    assert back.dtype == np.uint8 and back.shape == (5, 28, 28)
    np.testing.assert_array_equal(back, images)
    assert back.flags.writeable  # torch.from_numpy warns on read-only arrays


def test_raw_layout_is_the_mnist_header(tmp_path):
    labels = np.array([7, 2, 1], dtype=np.uint8)
    write_idx(tmp_path / "labels", labels)
    # magic 0x00000801, then one big-endian size, then the bytes
    assert (tmp_path / "labels").read_bytes() == b"\x00\x00\x08\x01" + b"\x00\x00\x00\x03" + b"\x07\x02\x01"


def test_gz_is_recognised_by_content_and_md5_ignores_compression(tmp_path):
    labels = np.arange(10, dtype=np.uint8)
    write_idx(tmp_path / "raw", labels)
    write_idx(tmp_path / "packed.gz", labels)
    assert gzip.decompress((tmp_path / "packed.gz").read_bytes()) == (tmp_path / "raw").read_bytes()
    expected = hashlib.md5((tmp_path / "raw").read_bytes()).hexdigest()
    assert md5_uncompressed(tmp_path / "raw") == md5_uncompressed(tmp_path / "packed.gz") == expected
    (tmp_path / "misnamed").write_bytes((tmp_path / "packed.gz").read_bytes())
    np.testing.assert_array_equal(read_idx(tmp_path / "misnamed"), labels)


def test_write_refuses_non_uint8(tmp_path):
    with pytest.raises(ValueError, match="uint8"):
        write_idx(tmp_path / "x", np.zeros(3, dtype=np.float32))


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda b: b[:-100], "truncated"),
        (lambda b: b + b"\x00", "longer than its header says"),
        (lambda b: b[:6], "truncated inside its header"),
        (lambda b: b[:2], "too few for an IDX header"),
        (lambda b: b"\x01" + b[1:], "not an IDX file"),
        (lambda b: b[:2] + b"\x0d" + b[3:], "element type 0x0d"),
    ],
)
def test_damaged_raw_file_is_rejected_naming_it(tmp_path, damage, message):
    path = tmp_path / "train-images-idx3-ubyte"
    write_idx(path, np.zeros((4, 28, 28), dtype=np.uint8))
    path.write_bytes(damage(path.read_bytes()))
    with pytest.raises(IDXFormatError, match=message) as err:
        read_idx(path)
    assert str(path) in str(err.value)


def test_truncated_gz_is_rejected(tmp_path):
    path = tmp_path / "t10k-images-idx3-ubyte.gz"
    write_idx(path, np.random.default_rng(0).integers(0, 256, size=(50, 28, 28), dtype=np.uint8))
    path.write_bytes(path.read_bytes()[:-2000])
    with pytest.raises(IDXFormatError, match="gzip stream") as err:
        read_idx(path)
    assert str(path) in str(err.value)
    with pytest.raises(IDXFormatError, match="gzip stream"):
        md5_uncompressed(path)


@pytest.mark.heavy
def test_gzip_bomb_is_refused_quickly_in_bounded_memory(tmp_path, gzip_bomb, measure_peak):
    """A header claiming 47 MB followed by 1 GiB of zeros (a ~1 MB file): never inflate it all."""
    path = gzip_bomb(tmp_path / "train-images-idx3-ubyte.gz")
    assert path.stat().st_size < 2 * 2**20
    started = time.perf_counter()
    with measure_peak() as peak:
        with pytest.raises(IDXFormatError, match="longer than its header says") as err:
            read_idx(path)
        with pytest.raises(IDXFormatError, match=f"content exceeds {MAX_IDX_BYTES} bytes"):
            md5_uncompressed(path)
    assert str(path) in str(err.value)
    # read_idx holds the 47 MB it was promised plus one byte; md5 streams 1 MiB chunks
    assert peak[0] < 100 * 2**20, f"peak {peak[0] / 2**20:.0f} MiB"
    assert time.perf_counter() - started < 30  # ~1.5 s here; the unbounded reader took minutes and 4+ GB


def test_absurd_declared_shape_is_refused_before_reading(tmp_path, measure_peak):
    path = tmp_path / "train-images-idx3-ubyte"
    path.write_bytes(struct.pack(">HBB3I", 0, 0x08, 3, 2**32 - 1, 2**32 - 1, 2**32 - 1) + bytes(100))
    with measure_peak() as peak, pytest.raises(IDXFormatError, match=f"more than the {MAX_PAYLOAD_BYTES}"):
        read_idx(path)
    assert peak[0] < 2**20


def test_md5_stops_at_its_bound(tmp_path):
    path = tmp_path / "labels"
    write_idx(path, np.arange(100, dtype=np.uint8))  # 108 bytes with the header
    assert md5_uncompressed(path, max_bytes=108) == hashlib.md5(path.read_bytes()).hexdigest()
    with pytest.raises(IDXFormatError, match="exceeds 107 bytes"):
        md5_uncompressed(path, max_bytes=107)
