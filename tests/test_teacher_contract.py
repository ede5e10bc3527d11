"""A teacher carries the data contract it was trained under: it is fed images normalised its own way, refused
where it cannot read them, and its cache entry is read only when intact (a damaged one is moved aside)."""

from pathlib import Path

import pytest
import torch

from kdlab.checkpoints import sha256_file
from kdlab.data import Batch, DataSpec, normalize
from kdlab.models import MLP
from kdlab.modules import DistillationModule
from kdlab.record import RunRecord, TeacherRef
from kdlab.teachers import TeacherContractError, teacher_norm
from kdlab.teachers.entry import WEIGHTS_FILE, read_entry, spec_beside, write_entry

MNIST_SIZES = {"num_classes": 10, "input_shape": (1, 28, 28)}  # what these tests' nets read

pytestmark = pytest.mark.unit

DIGITS = [str(i) for i in range(10)]
MNIST = DataSpec("mnist", (1, 28, 28), DIGITS, [0.1307], [0.3081], {"train_images": "a" * 32})
FASHION = DataSpec("fashion_mnist", (1, 28, 28), [f"c{i}" for i in range(10)], [0.2860], [0.3530])
CIFAR = DataSpec("cifar10", (3, 32, 32), [f"k{i}" for i in range(10)], [0.49, 0.48, 0.45], [0.25, 0.24, 0.26])
TEACHER = {"_target_": "kdlab.models.MLP", "hidden": [16]}
ADAM = {"_target_": "torch.optim.Adam", "_partial_": True, "lr": 1e-3}


def ref(trained_on: DataSpec | None) -> TeacherRef:
    return TeacherRef("/t/teacher.safetensors", "a" * 64, data=None if trained_on is None else trained_on.to_dict())


# -- teacher_norm: the contract between a teacher and a run's data -------------------------------------
def test_a_teacher_of_the_same_normalisation_reads_the_students_input():
    assert teacher_norm(ref(MNIST), MNIST) is None
    other_fingerprint = DataSpec("mnist", (1, 28, 28), DIGITS, [0.1307], [0.3081], {"train_images": "b" * 32})
    assert teacher_norm(ref(other_fingerprint), MNIST) is None  # the same contract, whatever files it read
    assert teacher_norm(ref(None), MNIST) is None  # a file given by path: assumed to read this data as it is


def test_a_teacher_of_another_normalisation_gets_its_own():
    """A teacher trained on Fashion-MNIST's statistics, distilled on MNIST (the same shape, 10 classes each)."""
    fashion_shaped = DataSpec("fashion_mnist", (1, 28, 28), DIGITS, [0.2860], [0.3530])
    assert teacher_norm(ref(fashion_shaped), MNIST) == {"mean": [0.2860], "std": [0.3530]}
    assert teacher_norm(ref(MNIST), fashion_shaped) == {"mean": [0.1307], "std": [0.3081]}


def test_a_teacher_of_another_input_shape_is_refused_by_key():
    with pytest.raises(TeacherContractError) as err:
        teacher_norm(ref(CIFAR), MNIST, "teacher.members.1")
    message = str(err.value)
    assert "teacher.members.1 (/t/teacher.safetensors) was trained on cifar10" in message
    assert "input_shape: (3, 32, 32) -> (1, 28, 28)" in message and "classes:" in message


def test_a_teacher_of_other_classes_is_refused_by_key():
    with pytest.raises(TeacherContractError, match=r"cannot read this run's mnist images \(teacher -> run: classes: "):
        teacher_norm(ref(FASHION), MNIST)
    with pytest.raises(TeacherContractError) as err:
        teacher_norm(ref(FASHION), MNIST)
    assert "input_shape" not in str(err.value)  # only what differs is named


# -- the module feeds each teacher its own normalisation --------------------------------------------------
@pytest.fixture
def teacher_file(tmp_path) -> Path:
    torch.manual_seed(0)
    path = tmp_path / "teacher.pt"
    torch.save(MLP((1, 28, 28), 10, hidden=[16]).state_dict(), path)
    return path


def mnist_batch(n: int = 6) -> Batch:
    pixels = torch.randint(0, 256, (n, 1, 28, 28), dtype=torch.uint8, generator=torch.Generator().manual_seed(4))
    return Batch(normalize(pixels, MNIST.mean, MNIST.std), torch.zeros(n, dtype=torch.long), torch.arange(n), None,
                 None, pixels)  # fmt: skip


def distiller(teacher_file, norm=None) -> DistillationModule:
    return DistillationModule(**MNIST_SIZES,
        net={"_target_": "kdlab.models.MLP", "hidden": [8]}, teacher_net=TEACHER, teacher_ckpt=str(teacher_file),
        losses={"kd": {"_target_": "kdlab.losses.KD", "weight": 1.0}}, optimizer=ADAM, teacher_norm=norm,
    )  # fmt: skip


def teacher_inputs(module: DistillationModule, batch: Batch, stage: str) -> list[torch.Tensor]:
    seen = []
    hook = module.teacher.register_forward_pre_hook(lambda m, args: seen.append(args[0].clone()))
    try:
        module.shared_step(batch, stage)
    finally:
        hook.remove()
    return seen


@pytest.mark.parametrize("stage", ["train", "val", "test"])
def test_the_teacher_reads_the_pixels_normalised_as_it_was_trained(teacher_file, stage):
    norm = {"mean": [0.2860], "std": [0.3530]}
    module, batch = distiller(teacher_file, norm), mnist_batch()
    assert module.hparams.teacher_norm == norm and module.teacher_norms == [norm]
    (seen,) = teacher_inputs(module, batch, stage)
    expected = normalize(batch.pixels, norm["mean"], norm["std"])
    assert torch.equal(seen, expected)  # bit for bit its own normalisation of the same augmented pixels
    assert not torch.allclose(seen, batch.x, atol=1e-3)  # not the student's input
    with torch.no_grad():
        assert torch.equal(module.views(batch).teacher_logits, module.teacher(expected))


def test_without_a_norm_the_teacher_reads_the_students_very_input(teacher_file):
    module, batch = distiller(teacher_file), mnist_batch()
    assert module.teacher_norms == [None]
    (seen,) = teacher_inputs(module, batch, "train")
    assert torch.equal(seen, batch.x)


# -- a teacher entry: read only when intact -----------------------------------------------------------------
def entry(folder: Path, seed: int = 0) -> Path:
    folder.mkdir(parents=True)
    torch.manual_seed(seed)
    net = MLP((1, 28, 28), 10, hidden=[16])
    record = RunRecord(
        name="train_teacher_mlp", kind="supervised", status="ok", params={"student": 1}, data=MNIST.to_dict()
    )
    write_entry(folder, net, {**TEACHER, "input_shape": [1, 28, 28], "num_classes": 10}, record)
    return folder


def test_an_intact_entry_is_read_with_the_spec_it_was_trained_on(tmp_path):
    folder = entry(tmp_path / "teachers" / "k1")
    record = read_entry(folder)
    assert record.files["sha256"] == sha256_file(folder / WEIGHTS_FILE) and record.params == {"teacher": 1}
    assert DataSpec.from_dict(record.data) == MNIST and spec_beside(folder / WEIGHTS_FILE) == MNIST.to_dict()
    assert read_entry(tmp_path / "teachers" / "absent") is None


def test_a_damaged_entry_is_moved_aside_every_time_never_deleted(tmp_path):
    root = tmp_path / "teachers"
    for attempt in range(2):  # damaged twice within the same second: both copies are kept
        folder = entry(root / "k1", seed=attempt)
        weights = folder / WEIGHTS_FILE
        weights.write_bytes(weights.read_bytes()[:-8] + b"\0" * 8)
        assert read_entry(folder) is None
        assert not folder.exists()
    aside = sorted(p.name for p in root.iterdir())
    assert len(aside) == 2 and all(name.startswith(".k1.bad-") for name in aside)
    assert all((root / name / WEIGHTS_FILE).is_file() for name in aside)
