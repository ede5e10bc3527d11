"""The Hydra entry point end to end on generated data: compose, fit, test, record, teacher cache."""

import json
import logging
from pathlib import Path

import pytest
import torch
from hydra.errors import ConfigCompositionException

from kdlab.config import CONFIG_DIR, compose_config
from kdlab.identity import student_recipe
from kdlab.models import MLP, build_net
from kdlab.record import RunRecord
from kdlab.run import train

EXPERIMENTS = sorted(p.stem for p in (CONFIG_DIR / "experiment").glob("*.yaml"))
TINY_TEACHER = 'teacher.overrides=["trainer.max_epochs=1"]'


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_every_experiment_composes_and_builds(experiment, make_cfg):
    cfg = make_cfg(f"experiment={experiment}")
    shape, classes = cfg.data.input_shape, len(cfg.data.classes)
    assert isinstance(build_net(cfg.model, shape, classes), torch.nn.Module)
    assert cfg.name == experiment
    if cfg.module._target_.endswith("DistillationModule"):
        teachers = [m.model for m in cfg.teacher.members] if "members" in cfg.teacher else [cfg.teacher.model]
        assert all(isinstance(build_net(t, shape, classes), torch.nn.Module) for t in teachers)
        # the student's recipe is the scratch baseline's, so the comparison is fair
        if experiment in ("distill_mlp", "distill_cnn_mlp", "distill_ensemble_mlp"):
            full = compose_config([f"experiment={experiment}", "paths.root_dir=/r"])
            scratch = compose_config(["experiment=student_scratch_mlp", "paths.root_dir=/r"])
            assert student_recipe(full) == student_recipe(scratch)


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_fast_dev_run_of_every_experiment(experiment, make_cfg):
    """One batch per stage through the whole entry point; distillation trains its smoke teacher first."""
    record, objects = train(make_cfg(f"experiment={experiment}", "trainer.fast_dev_run=true"))
    assert objects["trainer"].fast_dev_run
    assert record.status == "smoke" and record.smoke == ["trainer.fast_dev_run=True"]
    assert 0.0 <= record.metrics["test/acc"] <= 1.0
    assert ("test/teacher_acc" in record.metrics) == (record.kind == "distillation")
    assert (record.kind == "distillation") == ("distill" in experiment or experiment.startswith("zoo_"))


def test_teacher_run_writes_record_events_and_student(make_cfg):
    cfg = make_cfg("experiment=student_scratch_mlp", "trainer.max_epochs=2")
    record, objects = train(cfg)
    out = Path(cfg.paths.output_dir)
    assert record.metrics["test/acc"] > 0.9  # the generated digits are easy
    assert record.status == "ok" and record.kind == "supervised" and record.epochs == 2
    assert RunRecord.read(out) == record

    # the saved student alone gives the reported test accuracy
    net = MLP((1, 28, 28), 10, hidden=(256, 128))
    net.load_state_dict(torch.load(out / record.files["weights"], weights_only=True))
    dm = objects["datamodule"]
    test_set = (dm.data_test.x, dm.data_test.y, torch.arange(len(dm.data_test)))
    batch = dm.preprocess_batch(test_set)  # the whole test set, as tested
    with torch.no_grad():
        acc = (net.eval()(batch.x).argmax(1) == batch.y).float().mean().item()
    assert acc == pytest.approx(record.metrics["test/acc"], abs=1e-6)


def test_same_seed_same_metrics(make_cfg):
    first, _ = train(make_cfg("experiment=student_scratch_mlp", "seed=3"))
    second, _ = train(make_cfg("experiment=student_scratch_mlp", "seed=3"))
    other, _ = train(make_cfg("experiment=student_scratch_mlp", "seed=4"))
    for key in ("test/acc", "test/loss", "val/loss"):
        assert first.metrics[key] == second.metrics[key]
    assert first.metrics["val/loss"] != other.metrics["val/loss"]


def test_distillation_trains_teacher_once_then_reuses_it(make_cfg, caplog):
    caplog.set_level(logging.INFO, logger="kdlab.teachers")
    cfg = make_cfg("experiment=distill_mlp", TINY_TEACHER)
    first, _ = train(cfg)
    assert "training it first" in caplog.text
    (entry,) = [p for p in Path(cfg.paths.teacher_dir).iterdir() if p.is_dir()]
    assert sorted(p.name for p in entry.iterdir() if p.is_file()) == [
        "config.yaml",
        "last_used",
        "metrics.json",
        "teacher.safetensors",
        "teacher_model.yaml",
    ]
    cached = RunRecord.read(entry)
    assert cached.output_dir == str(entry) and cached.params == {"teacher": 535818}
    assert cached.overrides == ["experiment=train_teacher_mlp", "seed=0", "trainer.max_epochs=1"]
    assert first.teacher.checkpoint == str(entry / "teacher.safetensors")
    assert first.teacher.sha256 == cached.files["sha256"] and first.teacher.key == entry.name

    caplog.clear()
    second, _ = train(make_cfg("experiment=distill_mlp", TINY_TEACHER))
    assert "Teacher teacher:" in caplog.text and "training it first" not in caplog.text
    assert first.teacher == second.teacher
    # same seed, fresh or cached teacher: the same student
    assert first.metrics["test/acc"] == second.metrics["test/acc"]
    assert first.metrics["val/loss"] == second.metrics["val/loss"]
    assert {"test/teacher_acc", "test/agreement", "test/kl", "val/loss_kd", "val/loss_ce"} <= set(first.metrics)
    assert first.params == {"student": 235146, "teacher": 535818}

    # a different teacher seed is a different teacher
    caplog.clear()
    train(make_cfg("experiment=distill_mlp", TINY_TEACHER, "teacher.seed=1", "trainer.fast_dev_run=true"))
    assert "training it first" in caplog.text


def test_scratch_baseline_shows_up_in_distillation_record(make_cfg):
    scratch, _ = train(make_cfg("experiment=student_scratch_mlp", "trainer.max_epochs=1"))
    distilled, _ = train(make_cfg("experiment=distill_mlp", TINY_TEACHER, "trainer.max_epochs=1"))
    acc = scratch.metrics["test/acc"]
    assert distilled.baseline == {"mean": acc, "std": 0.0, "runs": 1, "seeds": [0], "by_seed": {"0": acc}}


def test_resuming_a_finished_run_is_a_no_op_that_changes_nothing(make_cfg):
    """Even from a mid-run checkpoint of it: a finished run's record is never rewritten."""
    cfg = make_cfg(
        "experiment=distill_mlp", TINY_TEACHER, "trainer.max_epochs=2", "callbacks.model_checkpoint.save_top_k=-1"
    )
    done, _ = train(cfg)
    folder = Path(cfg.paths.output_dir)
    before = {p: p.read_bytes() for p in folder.rglob("*") if p.is_file()}
    again = make_cfg("experiment=distill_mlp", TINY_TEACHER, "trainer.max_epochs=2",
                     f"ckpt_path={folder / 'checkpoints' / 'epoch_000.ckpt'}")  # fmt: skip
    record, objects = train(again)
    assert record == done and "trainer" not in objects  # nothing trained
    assert {p: p.read_bytes() for p in folder.rglob("*") if p.is_file()} == before
    assert not Path(again.paths.output_dir).exists()  # the folder made for the resume command is gone


@pytest.mark.parametrize("override", ["distill.temperature=abc", "no_such_key=1", "trainer=no_such_trainer"])
def test_bad_overrides_fail_at_composition(override):
    with pytest.raises(ConfigCompositionException):
        compose_config(["experiment=distill_mlp", override])


def test_record_file_is_strict_json(make_cfg):
    cfg = make_cfg("experiment=student_scratch_mlp")
    train(cfg)
    text = (Path(cfg.paths.output_dir) / "metrics.json").read_text()
    data = json.loads(text, parse_constant=lambda name: pytest.fail(f"non-standard JSON constant {name}"))
    assert data["status"] == "ok" and data["kind"] == "supervised" and data["version"] == 3
