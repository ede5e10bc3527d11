"""What TensorBoard and the run summary call each value, without a Trainer: the T each loss term trained at,
how an ensemble's accuracy was scored, and the tags that put the learning curves before the images.
Served by a real TensorBoard over HTTP: tests/test_tensorboard_http.py."""

from __future__ import annotations

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from kdlab.config import compose_config
from kdlab.record import RunRecord, TeacherRef, scored_as
from kdlab.run.summary import summary_rows, tensorboard_hparams
from kdlab.tensorboard import IMAGES, TensorBoardLogger, tensorboard_tag

pytestmark = pytest.mark.unit

DISTILLED = RunRecord(name="distill_mlp", kind="distillation", params={"student": 10, "teacher": 100})


def hparams(*overrides: str) -> dict:
    return tensorboard_hparams(compose_config(["paths.root_dir=/r", *overrides]), DISTILLED)


@pytest.mark.heavy
def test_each_term_records_the_temperature_it_trained_at():
    assert hparams("experiment=distill_mlp")["distill.losses.kd.temperature"] == 4.0  # distill.temperature's
    overridden = hparams("experiment=distill_mlp", "distill.losses.kd.temperature=2")
    assert overridden["distill.losses.kd.temperature"] == 2.0  # what KD trained at, though distill.temperature=4
    assert "distill.temperature" not in overridden  # no second value that contradicts it
    two = hparams("experiment=distill_mlp", "distill.temperature=8", "+loss@distill.losses.dkd=dkd",
                  "distill.losses.dkd.temperature=1")  # fmt: skip
    assert (two["distill.losses.kd.temperature"], two["distill.losses.dkd.temperature"]) == (8.0, 1.0)
    assert "distill.losses.ce.temperature" not in two  # CE reads no T


@pytest.mark.heavy
def test_an_ensemble_records_the_temperature_of_its_combined_targets():
    hp = hparams("experiment=distill_ensemble_mlp", "distill.temperature=8")
    assert (hp["teacher.combine"], hp["teacher.combine.temperature"]) == ("mean_probs", 8.0)
    assert "teacher.combine.temperature" not in hparams(
        "experiment=distill_ensemble_mlp", "teacher.combine.mode=mean_logits"
    )


def ensemble_record(combine: dict | None) -> RunRecord:
    members = [TeacherRef(f"m{i}.safetensors", str(i) * 64, recipe="train_teacher_cnn", seed=i) for i in range(2)]
    metrics = {"test/acc": 0.9, "test/teacher_acc": 0.95, "test/member0_acc": 0.93, "test/member1_acc": 0.94}
    return RunRecord(name="e", kind="distillation", members=members, combine=combine, metrics=metrics)


def test_the_ensembles_accuracy_says_how_its_members_were_combined():
    combine = {"mode": "mean_probs", "temperature": 4.0, "weights": None, "scored_at": 1.0}
    rows = dict(summary_rows(ensemble_record(combine)))
    assert rows["ensemble of 2 test acc (mean_probs at T=1)"] == "95.00%"  # T=1, not the targets' T=4
    assert scored_as({**combine, "mode": "weighted"}) == "weighted at T=1"
    assert scored_as({**combine, "mode": "mean_logits"}) == "mean_logits"  # no T in a mean of logits
    old = dict(summary_rows(ensemble_record(None)))  # a record that does not say how: no T is claimed
    assert old["ensemble of 2 test acc"] == "95.00%"


def test_lightnings_bookkeeping_goes_with_the_training_curves_and_images_after_val(tmp_path):
    assert [tensorboard_tag(t) for t in ("epoch", "lr-AdamW", "lr-SGD/pg1", "val/acc", "test/acc")] == [
        "train/epoch", "train/lr-AdamW", "train/lr-SGD/pg1", "val/acc", "test/acc"
    ]  # fmt: skip
    assert sorted(["test", "train", "val", IMAGES])[-1] == IMAGES  # TIME SERIES opens the first two sections
    logger = TensorBoardLogger(tmp_path, name="tensorboard", version="")
    logger.log_metrics({"epoch": 0, "lr-AdamW": 1e-3, "train/loss": 0.5}, step=3)
    logger.finalize("success")
    scalars = EventAccumulator(str(tmp_path / "tensorboard")).Reload().Tags()["scalars"]
    assert sorted(scalars) == ["train/epoch", "train/loss", "train/lr-AdamW"]


@pytest.mark.heavy
def test_the_affine_ranges_are_shown_beside_the_other_augmentation():
    hp = hparams("experiment=train_teacher_mlp", "data.augment_affine={rotate:10,scale:[0.9,1.1],shear:5}")
    assert (hp["data.augment_affine.rotate"], hp["data.augment_affine.shear"]) == (10, 5)
    assert hp["data.augment_affine.scale"] == "[0.9, 1.1]" and hp["data.augment_shift"] == 2
    assert not [k for k in hparams("experiment=train_teacher_mlp") if "affine" in k]  # off: nothing to show


@pytest.mark.heavy
def test_the_elastic_setting_is_shown_with_the_affine_ranges():
    hp = hparams("experiment=train_teacher_mlp", "data.augment_affine={elastic:{alpha:34,sigma:4}}")
    assert (hp["data.augment_affine.elastic.alpha"], hp["data.augment_affine.elastic.sigma"]) == (34, 4)
