"""The teacher-output cache through whole runs: what the cached teacher teaches is what the live one does,
and a bf16-mixed run builds, checks and trains on a table of its own precision."""

from pathlib import Path

import pytest

from kdlab.run import train
from kdlab.teachers.outputs import tolerance

TINY_TEACHER = 'teacher.overrides=["trainer.max_epochs=1"]'


def test_a_run_with_the_cache_learns_what_the_live_teacher_teaches(make_cfg):
    """End to end: the cached logits are the live ones, so the student and its metrics come out the same."""
    cached, _ = train(
        make_cfg("experiment=distill_mlp", TINY_TEACHER, "trainer.max_epochs=2", "runtime.teacher_cache=on")
    )
    live, _ = train(
        make_cfg("experiment=distill_mlp", TINY_TEACHER, "trainer.max_epochs=2", "runtime.teacher_cache=off")
    )
    assert cached.identity["teacher_outputs"]["used"] is True
    assert Path(cached.identity["teacher_outputs"]["path"]).parent == Path(cached.teacher.checkpoint).parent / "outputs"
    assert live.identity["teacher_outputs"] == {"used": False, "reason": "runtime.teacher_cache=off"}
    for key in ("val/loss", "val/acc", "test/acc", "test/kl", "test/loss"):
        assert cached.metrics[key] == pytest.approx(live.metrics[key], rel=1e-5, abs=1e-7), key


def test_a_bf16_mixed_run_trains_on_a_bf16_table_of_its_own(make_cfg):
    """The old cache compared a float32 table with the live bf16 teacher at 1e-4 and stopped the run."""
    full, _ = train(make_cfg("experiment=distill_mlp", TINY_TEACHER, "runtime.teacher_cache=on"))
    bf16, objects = train(
        make_cfg("experiment=distill_mlp", TINY_TEACHER, "runtime.teacher_cache=on", "trainer.precision=bf16-mixed")
    )
    assert bf16.status == "ok" and bf16.identity["teacher_outputs"]["used"] is True
    assert bf16.identity["teacher_outputs"]["key"] != full.identity["teacher_outputs"]["key"]
    (entry,) = objects["module"].teacher_outputs
    assert entry.tolerance == tolerance("bf16-mixed") and entry.path == bf16.identity["teacher_outputs"]["path"]
