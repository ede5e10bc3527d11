"""scripts/benchmark.py --time-to-accuracy: the curve -> seconds arithmetic by hand, and a smoke run's JSON.

Speed is never asserted: the smoke run checks what each row records and that every figure follows from its curve.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from script_loader import script_module

REPO = Path(__file__).resolve().parents[2]
MNIST_RECIPES = ("train_teacher_mlp", "student_scratch_mlp", "distill_mlp")
TINY_DATA = ("data.verify=false", "data.mirrors=[]", "data.pypi_package=null", "data.val_size=200",
             "data.eval_batch_size=200")  # fmt: skip


def _benchmark_module():
    return script_module("benchmark")


@pytest.mark.unit
def test_time_to_target_is_the_first_validation_at_or_above_the_target():
    time_to_target = _benchmark_module().time_to_target
    curve = [(1.5, 0.950), (3.0, 0.9875), (4.5, 0.9880), (6.0, 0.9860), (7.5, 0.9910)]
    assert time_to_target(curve, 98.8) == 4.5  # equal counts as reached; the later dip changes nothing
    assert time_to_target(curve, 99.0) == 7.5
    assert time_to_target(curve, 90.0) == 1.5
    assert time_to_target(curve, 99.5) is None  # never reached: no time, not 0
    assert time_to_target([], 50.0) is None  # a run that never validated
    # 4940 of 5000 right is 98.8%, but as float32 it is 0.98799997...: still reached
    assert time_to_target([(2.0, float(np.float32(4940 / 5000)))], 98.8) == 2.0
    assert time_to_target([(2.0, float(np.float32(4939 / 5000)))], 98.8) is None  # one image short


@pytest.mark.unit
def test_a_median_where_most_runs_missed_the_target_is_none():
    median_or_none = _benchmark_module().median_or_none
    assert median_or_none([3.0, None, 5.0]) == 5.0  # a miss counts as slower than any time
    assert median_or_none([None, None, 2.0]) is None
    assert median_or_none([4.0, 2.0, 3.0]) == 3.0


@pytest.mark.unit
def test_bad_targets_and_missing_presets_are_refused_in_one_paragraph(tmp_path):
    benchmark = _benchmark_module()
    with pytest.raises(SystemExit):  # argparse's own usage error, exit status 2
        benchmark.parse_args(["--time-to-accuracy", "--target", "distill_mlp=high"])
    args = benchmark.parse_args(["--time-to-accuracy", "--recipes", "no_such_recipe", "--target", "no_such_recipe=90",
                                 "--teacher-dir", str(tmp_path)])  # fmt: skip
    assert args.targets["no_such_recipe"] == 90.0 and args.targets["distill_mlp"] == 98.4
    bench = benchmark.Bench(args, tmp_path, benchmark.torch.device("cpu"), "", benchmark.plan_threads("1"))
    with pytest.raises(SystemExit, match=r"conf/experiment/no_such_recipe\.yaml, which does not exist") as refused:
        benchmark.accuracy_rows(bench)
    assert "\n" not in str(refused.value.code)


@pytest.mark.slow
def test_quick_mode_times_every_row_and_each_figure_follows_from_its_curve(tmp_path, synthetic_mnist):
    (tmp_path / "mnist").mkdir()
    data = synthetic_mnist(tmp_path / "mnist", 4200, 400)  # 4000 training images: one-cycle at batch 512
    out, png = tmp_path / "tta.json", tmp_path / "tta.png"
    plot = ["--plot", str(png)] if _has_matplotlib() else []
    command = [sys.executable, "scripts/benchmark.py", "--time-to-accuracy", "--quick", "--data-dir", str(data),
               "--recipes", ",".join(MNIST_RECIPES), "--target", "distill_mlp=97.5", "--teacher-dir",
               str(tmp_path / "teachers"), "--json", str(out), *plot,
               *[arg for override in TINY_DATA for arg in ("--override", override)]]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "KDLAB_ROOT": str(tmp_path / "root")}
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]

    results = json.loads(out.read_text())
    benchmark = _benchmark_module()
    assert results["mode"] == "time_to_accuracy"
    assert results["targets"] == {"train_teacher_mlp": 98.7, "student_scratch_mlp": 98.4, "distill_mlp": 97.5}
    rows = {(r["recipe"], r["preset"], r["impl"]): r for r in results["rows"]}
    levers = {(r, label, "kdlab") for r in MNIST_RECIPES for label in benchmark.LEVERS.get(r, {})}
    assert levers == {
        (r, label, "kdlab")
        for r, label in [("distill_mlp", "batch"), ("distill_mlp", "fast-live"), ("distill_mlp", "unfused")]
    }
    presets = {(r, p, i) for r in MNIST_RECIPES for p in ("standard", "fast") for i in ("kdlab", "plain")}
    assert set(rows) == presets | levers
    assert rows["distill_mlp", "batch", "kdlab"]["experiment"] == "distill_mlp"
    assert rows["distill_mlp", "batch", "kdlab"]["overrides"] == ["data.batch_size=256", "optimizer.lr=1e-2"]
    assert rows["distill_mlp", "fast-live", "kdlab"]["experiment"] == "distill_mlp_fast"
    assert rows["distill_mlp", "unfused", "kdlab"]["overrides"] == ["optimizer.fused=false"]
    for (recipe, preset, impl), row in rows.items():
        if preset in ("standard", "fast"):
            assert row["experiment"] == (recipe if preset == "standard" else f"{recipe}_fast")
        (run,) = row["runs"]  # --quick: one repeat
        seconds = [s for s, _ in run["curve"]]
        assert len(seconds) == 2 and 0 < seconds[0] < seconds[1] <= run["total_s"]  # a validation per epoch
        assert all(0 <= acc <= 1 for _, acc in run["curve"]) and 0 <= run["test_acc"] <= 1
        assert run["to_target_s"] == benchmark.time_to_target(run["curve"], row["target_val_acc_pct"])
        assert row["to_target_s"] == run["to_target_s"] and row["total_s"] == run["total_s"]
        assert row["reached"] == (run["to_target_s"] is not None)
        plain = rows.get((recipe, preset, "plain"))
        if plain is None:  # a lever: kdlab only
            assert row["to_target_vs_plain"] is None
        elif impl == "kdlab" and row["to_target_s"] is not None and plain["to_target_s"]:
            assert row["to_target_vs_plain"] == pytest.approx(row["to_target_s"] / plain["to_target_s"])
        if preset != "standard":
            standard = rows[recipe, "standard", impl]
            assert row["total_vs_standard"] == pytest.approx(row["total_s"] / standard["total_s"])
    assert "s to target" in done.stdout and "distill_mlp_fast/plain" in done.stdout
    if plot:
        assert png.read_bytes().startswith(b"\x89PNG")


def _has_matplotlib() -> bool:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


@pytest.mark.slow
def test_the_plain_loop_validates_after_the_same_epochs_as_the_recipes_trainer(tmp_path):
    # student_scratch_digits_fast validates every 5 epochs; --quick runs it for 5: one validation in each loop
    out = tmp_path / "tta.json"
    command = [sys.executable, "scripts/benchmark.py", "--time-to-accuracy", "--quick", "--recipes",
               "student_scratch_digits", "--presets", "fast", "--teacher-dir", str(tmp_path / "teachers"),
               "--json", str(out)]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "KDLAB_ROOT": str(tmp_path / "root")}
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    rows = {row["impl"]: row for row in json.loads(out.read_text())["rows"]}
    assert set(rows) == {"kdlab", "plain"}
    for impl, row in rows.items():
        (run,) = row["runs"]
        assert len(run["curve"]) == 1, impl
