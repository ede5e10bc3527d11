"""data_fingerprint: the content identity of the four files a run read."""

import shutil

import pytest

from kdlab.data import MNIST_FILES, data_fingerprint, md5_uncompressed
from kdlab.data import fingerprint as fingerprint_module


@pytest.fixture
def copy(mnist_dir, tmp_path):
    def make(name):
        folder = tmp_path / name
        shutil.copytree(mnist_dir, folder)
        return folder

    return make


def test_fingerprint_is_the_md5_of_each_file(mnist_dir):
    assert data_fingerprint(mnist_dir) == {name: md5_uncompressed(mnist_dir / name) for name in MNIST_FILES}


def test_identical_content_in_two_folders_gives_one_fingerprint(copy):
    assert data_fingerprint(copy("a")) == data_fingerprint(copy("b"))


def test_one_changed_label_byte_changes_the_fingerprint(copy):
    folder = copy("a")
    before = data_fingerprint(folder)
    labels = folder / "train-labels-idx1-ubyte"
    content = bytearray(labels.read_bytes())
    content[-1] = (content[-1] + 1) % 10  # same size, still a valid file
    labels.write_bytes(bytes(content))
    after = data_fingerprint(folder)
    assert after["train-labels-idx1-ubyte"] != before["train-labels-idx1-ubyte"]
    assert {k: v for k, v in after.items() if k != "train-labels-idx1-ubyte"} == {
        k: v for k, v in before.items() if k != "train-labels-idx1-ubyte"
    }


def test_repeated_calls_do_not_read_the_files_again(copy, monkeypatch):
    folder = copy("a")
    first = data_fingerprint(folder)
    monkeypatch.setattr(fingerprint_module, "md5_uncompressed", lambda path: pytest.fail(f"{path} hashed again"))
    assert data_fingerprint(folder) == first


def test_missing_file_says_what_to_run(copy):
    folder = copy("a")
    (folder / "t10k-labels-idx1-ubyte").unlink()
    with pytest.raises(FileNotFoundError, match="t10k-labels-idx1-ubyte not found in .*prepare_data"):
        data_fingerprint(folder)
