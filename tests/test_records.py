"""The typed record of a run: strict JSON, a round trip that keeps everything, unreadable files that say why."""

import json

import pytest

from kdlab.record import RECORD_VERSION, RecordError, RunRecord, TeacherRef

pytestmark = pytest.mark.unit

MNIST = {"name": "mnist", "input_shape": [1, 28, 28], "classes": [str(i) for i in range(10)], "mean": [0.1307],
         "std": [0.3081], "fingerprint": {"train_images": "a" * 32}}  # fmt: skip


def test_record_round_trip_is_strict_json(tmp_path):
    record = RunRecord(
        name="distill_mlp",
        kind="distillation",
        status="diverged",
        seed=3,
        metrics={"test/acc": float("nan"), "val/acc_best": 0.98, "test/kl": 5e-05, "val/loss": float("inf")},
        teacher=TeacherRef(
            checkpoint="/t/teacher.safetensors",
            sha256="ab" * 32,
            key="k",
            recipe="r",
            seed=0,
            model={"_target_": "kdlab.models.MLP", "hidden": [8]},
            data=MNIST,
        ),
        data=MNIST,
        resumed=["2026-01-02T03:04:05+00:00"],
        overrides=["experiment=distill_mlp", "seed=3"],
        message="diverged at step 3",
    )
    path = record.write(tmp_path)
    text = path.read_text()
    assert "NaN" not in text and "Infinity" not in text
    back = RunRecord.read(tmp_path)
    assert back.metrics == {"test/acc": None, "val/acc_best": 0.98, "test/kl": 5e-05, "val/loss": None}
    assert back.teacher == record.teacher and back.is_distillation and not back.finished
    assert back.metric("test/kl") == 5e-05
    assert back.data == MNIST and back.teacher.data == MNIST and back.resumed == record.resumed
    back.metrics = record.metrics  # everything else survives exactly
    assert back == record


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ('{"version": 3, "name": "x", "kind": "supervised", "metrics": {"a": NaN}}', "strict JSON"),
        ('{"test/acc": 0.9}', "format 1; this kdlab reads format 3"),
        ('{"version": 2, "name": "x", "kind": "supervised"}', "format 2; this kdlab reads format 3"),
        ("[1, 2]", "not a run record"),
        ('{"version": 3, "name": "x", "kind": "supervised", "status": "great"}', "status 'great'"),
        ('{"version": 3, "name": "x", "kind": "supervised", "teacher": {"path": "t"}}', "not a TeacherRef"),
        ('{"version": 3, "kind": "supervised"}', "lacks fields"),
    ],
)
def test_unreadable_records_say_why(text, match):
    with pytest.raises(RecordError, match=match):
        RunRecord.from_json(text)


def test_the_format_is_version_3():
    assert RECORD_VERSION == 3 and json.loads(RunRecord(name="x", kind="supervised").to_json())["version"] == 3


def test_a_record_without_members_reads_as_one_teacher(tmp_path):
    record = RunRecord(name="x", kind="distillation", teacher=TeacherRef("t.safetensors", "a" * 64))
    data = json.loads(record.to_json())
    del data["members"]
    (tmp_path / "metrics.json").write_text(json.dumps(data))
    old = RunRecord.read(tmp_path)
    assert old.members == [] and not old.is_ensemble and old.teacher == record.teacher
    record.members = [TeacherRef("a.safetensors", "b" * 64, key="k", recipe="r", seed=1)]
    assert RunRecord.from_json(record.to_json()).members == record.members
