"""What counts as "the same recipe": the teacher cache and the scratch baseline depend on it."""

import pytest

from kdlab.config import compose_config
from kdlab.recipes import digest, recipe_of
from kdlab.teachers import teacher_key


def key(*overrides: str) -> str:
    cfg = compose_config(["experiment=train_teacher_mlp", "paths.root_dir=/r", "paths.output_dir=/r/o", *overrides])
    return teacher_key(cfg)


@pytest.mark.parametrize(
    "override",
    ["paths.data_dir=/elsewhere", "data.num_workers=2", "trainer=gpu", "trainer.enable_progress_bar=false", "name=x"],
)
def test_where_and_how_a_teacher_runs_does_not_change_its_key(override):
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
    ],
)
def test_what_a_teacher_learns_from_changes_its_key(override):
    assert key(override) != key()


def test_distillation_and_scratch_runs_of_one_student_share_a_recipe():
    scratch = compose_config(["experiment=student_scratch_mlp"])
    distilled = compose_config(["experiment=distill_mlp", "distill.temperature=8"])
    assert digest(recipe_of(scratch)) == digest(recipe_of(distilled))
    assert digest(recipe_of(scratch)) != digest(recipe_of(compose_config(["experiment=distill_article"])))
