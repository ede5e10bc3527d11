"""What makes a run a smoke run, and the from-scratch baseline over several seeds: from configs and records alone."""

import math

import pytest
from omegaconf import OmegaConf

from kdlab.record import RunRecord
from kdlab.report.baselines import scratch_baseline
from kdlab.run.provenance import SMOKE_TRAINER_KEYS, smoke_reasons

pytestmark = pytest.mark.unit


def trainer(**values):
    full = {"fast_dev_run": False, "limit_train_batches": None, "limit_val_batches": None,
            "limit_test_batches": None, "max_steps": -1}  # fmt: skip
    return OmegaConf.create({"trainer": {**full, **values}})


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("fast_dev_run", True),
        ("limit_train_batches", 2),
        ("limit_val_batches", 0.5),
        ("limit_test_batches", 3),
        ("max_steps", 10),
    ],  # fmt: skip
)
def test_every_shortening_key_makes_a_smoke_run(key, value):
    assert key in SMOKE_TRAINER_KEYS
    assert smoke_reasons(trainer(**{key: value})) == [f"trainer.{key}={value}"]


def test_a_full_run_is_no_smoke_run():
    assert smoke_reasons(trainer()) == []
    assert smoke_reasons(trainer(limit_train_batches=1.0, limit_val_batches=1.0, limit_test_batches=1.0)) == []
    assert smoke_reasons(trainer(limit_val_batches=1)) == ["trainer.limit_val_batches=1"]  # an int is one batch


def _scratch(folder, seed, acc, key="student-key", **fields):
    record = RunRecord(name="student_scratch_mlp", kind="supervised", status="ok", seed=seed,
                       metrics={"test/acc": acc}, identity={"student": key},
                       finished_at=f"2026-01-01T00:00:{seed:02d}", **fields)  # fmt: skip
    record.write(folder)


def test_the_baseline_is_the_mean_and_sample_std_over_seeds(tmp_path):
    for seed, acc in enumerate((0.98, 0.99, 0.97)):
        _scratch(tmp_path / f"s{seed}", seed, acc)
    _scratch(tmp_path / "other", 9, 0.5, key="another-student")  # another recipe: not counted
    _scratch(tmp_path / "smoke", 4, 0.1, smoke=["trainer.fast_dev_run=True"])  # a smoke run: not counted
    baseline = scratch_baseline(tmp_path, "student-key")
    assert baseline["runs"] == 3 and baseline["seeds"] == [0, 1, 2]
    assert baseline["mean"] == pytest.approx(0.98)
    assert baseline["std"] == pytest.approx(0.01)  # sample std: sqrt(((0)^2 + 0.01^2 + 0.01^2) / 2)
    assert not math.isclose(baseline["std"], math.sqrt(2 / 3) * 0.01)  # not the population std


def test_a_seed_run_twice_counts_once_with_its_latest_result(tmp_path):
    _scratch(tmp_path / "a", 0, 0.90)
    _scratch(tmp_path / "b", 1, 0.96)
    later = RunRecord(name="x", kind="supervised", status="ok", seed=0, metrics={"test/acc": 0.94},
                      identity={"student": "student-key"}, finished_at="2026-01-02T00:00:00")  # fmt: skip
    later.write(tmp_path / "c")
    baseline = scratch_baseline(tmp_path, "student-key")
    assert baseline["runs"] == 2 and baseline["mean"] == pytest.approx(0.95)
    assert baseline["by_seed"] == {"0": 0.94, "1": 0.96}  # what a distilled run of seed 0 is paired with
