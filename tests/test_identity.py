"""What counts as "the same run": the teacher cache, baselines and resume checks depend on it.

Which overrides change a key, one by one: tests/test_identity_overrides.py (it composes the config 30 times).
"""

import functools

import pytest

import kdlab.identity
from kdlab.config import compose_config
from kdlab.identity import IGNORED_KEYS, config_identity, differences, run_key, student_key
from kdlab.teachers import teacher_run_config

pytestmark = pytest.mark.unit

DATA = {"train-images-idx3-ubyte": "a" * 32, "t10k-labels-idx1-ubyte": "b" * 32}


@functools.cache
def _key(overrides: tuple[str, ...], data: tuple[tuple[str, str], ...]) -> str:
    cfg = compose_config(["experiment=train_teacher_mlp", "paths.root_dir=/r", *overrides])
    return run_key(cfg, dict(data))


def key(*overrides: str, data=DATA) -> str:
    return _key(overrides, tuple(sorted(data.items())))


@pytest.mark.heavy
def test_data_content_and_code_version_change_the_key(monkeypatch):
    shuffled = {**DATA, "train-images-idx3-ubyte": "c" * 32}  # same folder name, other content
    assert key(data=shuffled) != key()
    cfg = compose_config(["experiment=train_teacher_mlp", "paths.root_dir=/r"])
    before = run_key(cfg, DATA)
    monkeypatch.setattr(kdlab.identity, "IDENTITY_VERSION", kdlab.identity.IDENTITY_VERSION + 1)
    assert run_key(cfg, DATA) != before


@pytest.mark.heavy
def test_teacher_weights_change_a_distillation_run_key():
    cfg = compose_config(["experiment=distill_mlp", "paths.root_dir=/r"])
    assert run_key(cfg, DATA, "1" * 64) != run_key(cfg, DATA, "2" * 64)
    moved = compose_config(["experiment=distill_mlp", "paths.root_dir=/r", "teacher.ckpt_path=/some/where.pt"])
    assert run_key(moved, DATA, "1" * 64) == run_key(cfg, DATA, "1" * 64)  # the file's content, not its path


@pytest.mark.heavy
def test_ignored_keys_are_really_gone():
    ident = config_identity(compose_config(["experiment=distill_mlp", "paths.root_dir=/r"]))
    for dotted in IGNORED_KEYS:
        node = ident
        for part in dotted.split(".")[:-1]:
            node = node.get(part, {})
        assert dotted.split(".")[-1] not in node, dotted


@pytest.mark.heavy
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


AFFINE = "data.augment_affine={rotate:10,scale:[0.9,1.1]}"
PATHS = ("paths.root_dir=/r", "paths.output_dir=/o")  # what teacher_run_config copies from the run


@pytest.mark.heavy
def test_affine_ranges_enter_the_run_student_and_teacher_keys_and_null_keeps_older_keys():
    """On, they change every key that can change a result; off (null), every key is what it was before they existed."""
    assert "augment_affine" not in config_identity(compose_config(["experiment=distill_mlp"]))["data"]
    assert key(AFFINE) != key() and key(AFFINE) != key("data.augment_affine={rotate:12,scale:[0.9,1.1]}")
    plain, distorted = (compose_config(["experiment=student_scratch_mlp", *extra]) for extra in ((), (AFFINE,)))
    assert student_key(plain, DATA) != student_key(distorted, DATA)  # a baseline with other augmentation never pairs
    # A teacher trains on its recipe's augmentation, not the student run's, and its cache key says which
    run = compose_config(["experiment=distill_mlp", AFFINE, *PATHS])
    assert teacher_run_config(run, run.teacher).data.augment_affine is None  # train_teacher_mlp's: null
    recipe = compose_config(["experiment=distill_mlp", f'teacher.overrides=["{AFFINE}"]', *PATHS])
    assert dict(teacher_run_config(recipe, recipe.teacher).data.augment_affine) == {"rotate": 10, "scale": [0.9, 1.1]}
    base = compose_config(["experiment=distill_mlp", *PATHS])
    assert run_key(teacher_run_config(recipe, recipe.teacher), DATA) != run_key(
        teacher_run_config(base, base.teacher), DATA
    )
    assert run_key(teacher_run_config(run, run.teacher), DATA) == run_key(teacher_run_config(base, base.teacher), DATA)


@pytest.mark.heavy
def test_elastic_distortions_enter_the_keys_beside_the_affine_ranges():
    elastic = "data.augment_affine={rotate:10,scale:[0.9,1.1],elastic:{alpha:34,sigma:4}}"
    assert len({key(), key(AFFINE), key(elastic), key(elastic.replace("sigma:4", "sigma:6"))}) == 4
    plain, distorted = (compose_config(["experiment=student_scratch_mlp", *extra]) for extra in ((), (elastic,)))
    assert student_key(plain, DATA) != student_key(distorted, DATA)
