"""The Hydra entry point end to end on generated data: compose, fit, test, outputs, teacher cache."""

import json
import logging
from pathlib import Path

import pytest
import torch
from hydra.errors import ConfigCompositionException, InstantiationException
from hydra.utils import instantiate
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from kdlab.config import CONFIG_DIR, compose_config
from kdlab.models import MLP
from kdlab.recipes import recipe_of
from kdlab.run import train

EXPERIMENTS = sorted(p.stem for p in (CONFIG_DIR / "experiment").glob("*.yaml"))
TINY_TEACHER = 'teacher.overrides=["trainer.max_epochs=1"]'


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_every_experiment_composes_and_builds(experiment, make_cfg):
    cfg = make_cfg(f"experiment={experiment}")
    assert isinstance(instantiate(cfg.model), torch.nn.Module)
    assert cfg.name == experiment
    if cfg.module._target_.endswith("DistillationModule"):
        assert instantiate(cfg.teacher.model)
        assert {name: instantiate(term) for name, term in cfg.distill.losses.items()}
        # the student's recipe is the scratch baseline's, so the comparison is fair
        if experiment in ("distill_mlp", "distill_cnn_mlp"):
            full = compose_config([f"experiment={experiment}"])
            scratch = compose_config(["experiment=student_scratch_mlp"])
            assert recipe_of(full) == recipe_of(scratch)


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_fast_dev_run_of_every_experiment(experiment, make_cfg):
    """One batch per stage through the whole entry point; distillation trains its tiny teacher first."""
    overrides = [TINY_TEACHER] if "distill" in experiment else []
    metrics, objects = train(make_cfg(f"experiment={experiment}", "trainer.fast_dev_run=true", *overrides))
    assert objects["trainer"].fast_dev_run
    assert 0.0 <= metrics["test/acc"] <= 1.0
    assert ("test/teacher_acc" in metrics) == ("distill" in experiment)


def test_teacher_run_writes_metrics_events_and_student(make_cfg):
    cfg = make_cfg("experiment=student_scratch_mlp", "trainer.max_epochs=2")
    metrics, objects = train(cfg)
    out = Path(cfg.paths.output_dir)
    assert metrics["test/acc"] > 0.9  # the generated digits are easy
    assert json.loads((out / "metrics.json").read_text())["test/acc"] == metrics["test/acc"]

    events = EventAccumulator(str(out / "tensorboard")).Reload()
    scalars = set(events.Tags()["scalars"])
    assert {"train/loss", "train/acc", "val/acc", "val/acc_best", "test/acc", "hp/test_acc"} <= scalars
    assert (out / "tensorboard" / "hparams.yaml").is_file()

    # the exported student alone gives the reported test accuracy
    net = MLP(hidden=(256, 128))
    net.load_state_dict(torch.load(out / "student.pt", weights_only=True))
    dm = objects["datamodule"]
    x, y = dm.preprocess_batch((dm.data_test.x, dm.data_test.y))  # the whole test set, as tested
    with torch.no_grad():
        acc = (net.eval()(x).argmax(1) == y).float().mean().item()
    assert acc == pytest.approx(metrics["test/acc"], abs=1e-6)


def test_same_seed_same_metrics(make_cfg):
    first, _ = train(make_cfg("experiment=student_scratch_mlp", "seed=3"))
    second, _ = train(make_cfg("experiment=student_scratch_mlp", "seed=3"))
    other, _ = train(make_cfg("experiment=student_scratch_mlp", "seed=4"))
    for key in ("test/acc", "test/loss", "val/loss"):
        assert first[key] == second[key]
    assert first["val/loss"] != other["val/loss"]


def test_distillation_trains_teacher_once_then_reuses_it(make_cfg, caplog):
    caplog.set_level(logging.INFO, logger="kdlab.teachers")
    cfg = make_cfg("experiment=distill_mlp", TINY_TEACHER)
    first, _ = train(cfg)
    assert "training it first" in caplog.text
    caches = [p for p in Path(cfg.paths.teacher_dir).iterdir() if p.is_dir()]
    assert len(caches) == 1 and (caches[0] / "teacher.ckpt").is_file() and (caches[0] / "metrics.json").is_file()
    assert not (caches[0] / "checkpoints").exists()
    record = json.loads((caches[0] / "metrics.json").read_text())
    assert record["best_checkpoint"] == str(caches[0] / "teacher.ckpt")
    assert record["overrides"] == ["experiment=train_teacher_mlp", "seed=0", "trainer.max_epochs=1"]

    caplog.clear()
    second, _ = train(make_cfg("experiment=distill_mlp", TINY_TEACHER))
    assert "Reusing cached teacher" in caplog.text and "training it first" not in caplog.text
    assert first["teacher_checkpoint"] == second["teacher_checkpoint"]
    # same seed, fresh or cached teacher: the same student
    assert first["test/acc"] == second["test/acc"] and first["val/loss"] == second["val/loss"]
    for key in ("test/teacher_acc", "test/agreement", "test/kl", "val/loss_kd", "val/loss_ce"):
        assert key in first
    assert first["compression"] == pytest.approx(535818 / 235146)

    # a different teacher seed is a different teacher
    caplog.clear()
    train(make_cfg("experiment=distill_mlp", TINY_TEACHER, "teacher.seed=1", "trainer.fast_dev_run=true"))
    assert "training it first" in caplog.text


def test_scratch_baseline_shows_up_in_distillation_summary(make_cfg):
    scratch, _ = train(make_cfg("experiment=student_scratch_mlp", "trainer.max_epochs=1"))
    distilled, _ = train(make_cfg("experiment=distill_mlp", TINY_TEACHER, "trainer.max_epochs=1"))
    assert distilled["scratch/runs"] == 1
    assert distilled["scratch/acc_mean"] == scratch["test/acc"]


def test_resume_an_interrupted_run(make_cfg):
    """Resume from the epoch-0 checkpoint of a 2-epoch run: the same schedule, carried to its end."""
    cfg = make_cfg(
        "experiment=distill_mlp",
        TINY_TEACHER,
        "trainer.max_epochs=2",
        "callbacks.model_checkpoint.save_top_k=-1",
    )
    train(cfg)
    first = Path(cfg.paths.output_dir) / "checkpoints" / "epoch_000.ckpt"
    metrics, objects = train(
        make_cfg("experiment=distill_mlp", TINY_TEACHER, "trainer.max_epochs=2", f"ckpt_path={first}")
    )
    assert objects["trainer"].current_epoch == 2
    assert objects["trainer"].global_step == 2 * 8  # 1000 train images / batch 128 = 8 steps per epoch
    assert metrics["test/acc"] > 0.5


@pytest.mark.parametrize(
    ("override", "error", "match"),
    [
        (
            "distill.losses.kd.weight=-1",
            InstantiationException,
            r"(?s)weight must be .* >= 0.*full_key: distill.losses.kd",
        ),
        ("distill.temperature=0", InstantiationException, "temperature must be .* > 0"),
        ("teacher.ckpt_path=/no/such/teacher.ckpt", FileNotFoundError, "teacher.ckpt_path"),
        ("ckpt_path=/no/such/last.ckpt", FileNotFoundError, "resume"),
        ("model.activation=sigmoidish", InstantiationException, "Unknown activation 'sigmoidish'"),
    ],
)
def test_bad_values_fail_before_any_training(make_cfg, override, error, match):
    cfg = make_cfg("experiment=distill_mlp", override)
    with pytest.raises(error, match=match):
        train(cfg)
    assert not Path(cfg.paths.teacher_dir).exists()  # no teacher was trained first


@pytest.mark.parametrize("override", ["distill.temperature=abc", "no_such_key=1", "trainer=no_such_trainer"])
def test_bad_overrides_fail_at_composition(override):
    with pytest.raises(ConfigCompositionException):
        compose_config(["experiment=distill_mlp", override])
