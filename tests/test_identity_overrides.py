"""Which overrides change a run's key, one by one: where and how a run is shown never does, anything that can
change a result does, including keys kdlab does not know yet. Not in the unit tier: it composes the whole config
once per override (see tests/test_identity.py for the key's rules)."""

import pytest
from test_identity import key


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
        "runtime.threads=1",  # how fast, not what: the record keeps the thread count
        "runtime.teacher_cache=off",
        "data.md5={}",  # the published checksums; the content digests of what was read are hashed regardless
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
        "data.augment_flip=true",
        "data.augment_affine={rotate:10}",
        "data.mean=[0.5]",  # another normalisation of the same files
        "data=fashion_mnist",  # another dataset (even were its files' digests the same)
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
