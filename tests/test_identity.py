"""What counts as "the same run": the teacher cache, baselines and resume checks depend on it."""

import functools

import pytest

import kdlab.identity
from kdlab.config import compose_config
from kdlab.identity import IGNORED_KEYS, config_identity, differences, run_key, student_key

DATA = {"train-images-idx3-ubyte": "a" * 32, "t10k-labels-idx1-ubyte": "b" * 32}


@functools.cache
def _key(overrides: tuple[str, ...], data: tuple[tuple[str, str], ...]) -> str:
    cfg = compose_config(["experiment=train_teacher_mlp", "paths.root_dir=/r", *overrides])
    return run_key(cfg, dict(data))


def key(*overrides: str, data=DATA) -> str:
    return _key(overrides, tuple(sorted(data.items())))


@pytest.mark.parametrize(
    "override",
    [
        "paths.data_dir=/elsewhere",
        "data.verify=false",
        "data.pypi_package=null",
        "trainer.enable_progress_bar=false",
        "trainer.log_every_n_steps=7",
        "name=x",
        "logger=none",
        "~callbacks.model_summary",
        "test=false",
    ],
)
def test_where_and_how_a_run_is_shown_does_not_change_its_key(override):
    assert key(override) == key()


@pytest.mark.parametrize(
    "override",
    [
        "seed=1",
        "model.dropout=0.2",
        "optimizer.lr=0.001",
        "trainer.max_epochs=5",
        "data.augment_shift=1",
        "data.val_size=1000",
        "scheduler=cosine",
        "trainer.precision=bf16-mixed",
        # a shortened run is never the full recipe (each of these served a 10-step teacher before)
        "+trainer.max_steps=10",
        "trainer.limit_train_batches=10",
        "trainer.fast_dev_run=true",
        "callbacks.model_checkpoint.monitor=val/loss",
        # hardware can change numerics: a miss costs minutes, a wrong hit a wrong result
        "trainer.accelerator=gpu",
        "trainer.devices=2",
        # any key not judged harmless counts, including keys kdlab does not know yet
        "+extra.knob=1",
    ],
)
def test_what_can_change_a_result_changes_the_key(override):
    assert key(override) != key()


def test_data_content_and_code_version_change_the_key(monkeypatch):
    shuffled = {**DATA, "train-images-idx3-ubyte": "c" * 32}  # same folder name, other content
    assert key(data=shuffled) != key()
    cfg = compose_config(["experiment=train_teacher_mlp", "paths.root_dir=/r"])
    before = run_key(cfg, DATA)
    monkeypatch.setattr(kdlab.identity, "IDENTITY_VERSION", kdlab.identity.IDENTITY_VERSION + 1)
    assert run_key(cfg, DATA) != before


def test_teacher_weights_change_a_distillation_run_key():
    cfg = compose_config(["experiment=distill_mlp", "paths.root_dir=/r"])
    assert run_key(cfg, DATA, "1" * 64) != run_key(cfg, DATA, "2" * 64)
    moved = compose_config(["experiment=distill_mlp", "paths.root_dir=/r", "teacher.ckpt_path=/some/where.pt"])
    assert run_key(moved, DATA, "1" * 64) == run_key(cfg, DATA, "1" * 64)  # the file's content, not its path


def test_ignored_keys_are_really_gone():
    ident = config_identity(compose_config(["experiment=distill_mlp", "paths.root_dir=/r"]))
    for dotted in IGNORED_KEYS:
        node = ident
        for part in dotted.split(".")[:-1]:
            node = node.get(part, {})
        assert dotted.split(".")[-1] not in node, dotted


def test_distillation_and_scratch_runs_of_one_student_share_a_student_key():
    scratch = compose_config(["experiment=student_scratch_mlp"])
    distilled = compose_config(["experiment=distill_mlp", "distill.temperature=8", "seed=3"])
    assert student_key(scratch, DATA) == student_key(distilled, DATA)
    assert student_key(scratch, DATA) != student_key(compose_config(["experiment=distill_article"]), DATA)
    smoothed = compose_config(["experiment=student_scratch_mlp", "module.label_smoothing=0.1"])
    assert student_key(smoothed, DATA) != student_key(scratch, DATA)


def test_differences_name_the_dotted_keys():
    found = differences({"trainer": {"max_epochs": 30, "devices": 1}}, {"trainer": {"max_epochs": 40, "devices": 1}})
    assert found == ["trainer.max_epochs: 30 -> 40"]
