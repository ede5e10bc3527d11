"""The content identity of the files a run read: `file_digests`, and `spec.fingerprint` after setup."""

import shutil

import pytest

from kdlab.data import fingerprint as fingerprint_module
from kdlab.data import md5_uncompressed, read_idx, write_idx
from kdlab.data.fingerprint import file_digests

pytestmark = pytest.mark.unit

MNIST_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


@pytest.fixture
def copy(mnist_dir, tmp_path):
    def make(name):
        folder = tmp_path / name
        shutil.copytree(mnist_dir, folder)
        return folder

    return make


def test_fingerprint_is_the_md5_of_each_file(mnist_dir, make_dm):
    expected = {name: md5_uncompressed(mnist_dir / name) for name in MNIST_FILES}
    assert file_digests(mnist_dir, MNIST_FILES) == expected
    dm = make_dm(mnist_dir)
    dm.setup()
    assert dm.spec.fingerprint == expected  # what a run records as its data


def test_a_gzipped_file_has_the_fingerprint_of_its_content(tmp_path, mnist_dir):
    """Fashion-MNIST and KMNIST are kept gzipped: their identity is still the content, not the .gz bytes."""
    for name in MNIST_FILES:
        write_idx(tmp_path / f"{name}.gz", read_idx(mnist_dir / name))
    packed = file_digests(tmp_path, [f"{name}.gz" for name in MNIST_FILES])
    assert list(packed.values()) == list(file_digests(mnist_dir, MNIST_FILES).values())


def test_identical_content_in_two_folders_gives_one_fingerprint(copy):
    assert file_digests(copy("a"), MNIST_FILES) == file_digests(copy("b"), MNIST_FILES)


def test_one_changed_label_byte_changes_the_fingerprint(copy):
    folder = copy("a")
    before = file_digests(folder, MNIST_FILES)
    labels = folder / "train-labels-idx1-ubyte"
    content = bytearray(labels.read_bytes())
    content[-1] = (content[-1] + 1) % 10  # same size, still a valid file
    labels.write_bytes(bytes(content))
    after = file_digests(folder, MNIST_FILES)
    assert after["train-labels-idx1-ubyte"] != before["train-labels-idx1-ubyte"]
    assert {k: v for k, v in after.items() if k != "train-labels-idx1-ubyte"} == {
        k: v for k, v in before.items() if k != "train-labels-idx1-ubyte"
    }


def test_repeated_calls_do_not_read_the_files_again(copy, monkeypatch):
    folder = copy("a")
    first = file_digests(folder, MNIST_FILES)
    monkeypatch.setattr(fingerprint_module, "md5_uncompressed", lambda path: pytest.fail(f"{path} hashed again"))
    assert file_digests(folder, MNIST_FILES) == first


def test_missing_file_says_what_to_run(copy, make_dm):
    folder = copy("a")
    (folder / "t10k-labels-idx1-ubyte").unlink()
    with pytest.raises(FileNotFoundError, match="t10k-labels-idx1-ubyte not found.*prepare_data"):
        make_dm(folder).setup()
