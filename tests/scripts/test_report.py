"""scripts/report.py as a user runs it: what it prints for a sweep where a job diverged, and its errors."""

import subprocess
import sys
from pathlib import Path

import yaml

from kdlab.record import RunRecord

REPO = Path(__file__).resolve().parents[2]


def run_report(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "scripts/report.py", *args], cwd=REPO, capture_output=True, text=True, timeout=300
    )


def test_prints_common_settings_above_the_table_and_the_diverged_job(tmp_path):
    sweep = tmp_path / "sweep"
    for job, (temp, status) in enumerate(((1, "ok"), (8, "diverged"), (4, "ok"))):
        overrides = ["experiment=distill_mlp", "trainer.max_epochs=2", f"distill.temperature={temp}", "seed=0"]
        (sweep / str(job) / ".hydra").mkdir(parents=True)
        (sweep / str(job) / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
        diverged = status == "diverged"
        RunRecord(
            name="distill_mlp",
            kind="distillation",
            status=status,
            seed=0,
            metrics={"test/acc": float("nan") if diverged else 0.95, "val/acc_best": 0.96, "test/kl": 5e-05},
            params={"student": 235146, "teacher": 535818},
            identity={"student": "abc123"},
            overrides=overrides,
            message="train/loss is NaN" if diverged else None,
        ).write(sweep / str(job))

    done = run_report(str(sweep), "--out", str(tmp_path / "out"))

    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    common = lines.index("**Common to every job:** `experiment=distill_mlp` `trainer.max_epochs=2` `seed=0`")
    header = next(i for i, line in enumerate(lines) if line.startswith("| distill.temperature "))
    assert common < header
    assert "- job folder `1` (distill.temperature=8, seed=0): **diverged**: train/loss is NaN" in lines
    assert any(line.startswith("| 4 ") and "5.0e-05" in line for line in lines)
    assert "No from-scratch baseline found for student recipe `abc123`" in done.stdout
    assert lines[-1].startswith(f"wrote {tmp_path / 'out' / 'report.md'}")
    assert not list(tmp_path.rglob("events.out.tfevents.*"))  # TensorBoard would take it for another run


def test_cli_reports_the_error_without_a_traceback(tmp_path):
    done = run_report(str(tmp_path))
    assert done.returncode == 1
    assert done.stderr.startswith("error: No metrics.json under") and "Traceback" not in done.stderr
