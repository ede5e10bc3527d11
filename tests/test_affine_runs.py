"""data.augment_affine through whole runs: checked at the start, and a distillation's teacher runs live on its views."""

import logging

import pytest

from kdlab.config import ConfigError
from kdlab.run import train
from kdlab.run.validation import validate_config

AFFINE = "data.augment_affine={rotate:10,scale:[0.9,1.1],translate:1.5,shear:5}"
TINY_TEACHER = 'teacher.overrides=["trainer.max_epochs=1"]'


def test_bad_ranges_and_a_forced_cache_are_refused_at_the_start(make_cfg):
    with pytest.raises(ConfigError, match=r"augment_affine\.scale=\[1\.1, 0\.9\] must be \[low, high\]"):
        validate_config(make_cfg("experiment=student_scratch_mlp", "data.augment_affine={scale:[1.1,0.9]}"))
    with pytest.raises(ConfigError, match=r"runtime\.teacher_cache=on .*data\.augment_affine=.*teacher_cache=auto"):
        validate_config(make_cfg("experiment=distill_mlp", AFFINE, "runtime.teacher_cache=on"))
    validate_config(make_cfg("experiment=distill_mlp", AFFINE))  # auto: the teacher runs live
    validate_config(make_cfg("experiment=train_teacher_mlp", AFFINE, "runtime.teacher_cache=on"))  # no teacher


def test_a_distillation_on_affine_views_trains_with_its_teacher_live(make_cfg, caplog):
    caplog.set_level(logging.INFO, logger="kdlab.teachers")
    record, objects = train(make_cfg("experiment=distill_mlp", TINY_TEACHER, AFFINE))
    assert record.status == "ok" and record.metrics["test/acc"] > 0.5
    assert record.identity["teacher_outputs"]["used"] is False
    assert "augment_affine" in record.identity["teacher_outputs"]["reason"]
    assert caplog.text.count("The teacher runs live in training: data.augment_affine") == 1
    assert objects["module"].teacher_outputs is None
    assert objects["datamodule"].hparams.augment_affine["rotate"] == 10.0


def test_elastic_settings_are_checked_and_keep_the_teacher_live(make_cfg):
    elastic = "data.augment_affine={elastic:{alpha:34,sigma:4}}"
    with pytest.raises(ConfigError, match=r"augment_affine\.elastic\.sigma=0 must lie in 0\.\.28 pixels"):
        validate_config(make_cfg("experiment=student_scratch_mlp", "data.augment_affine={elastic:{alpha:34,sigma:0}}"))
    with pytest.raises(ConfigError, match=r"runtime\.teacher_cache=on .*'elastic': \{'alpha': 34\.0, 'sigma': 4\.0\}"):
        validate_config(make_cfg("experiment=distill_mlp", elastic, "runtime.teacher_cache=on"))
    validate_config(make_cfg("experiment=distill_mlp", elastic))  # auto: the teacher runs live
