"""The end-of-sweep check: every job folder this sweep ran is read through its RunRecord."""

import os
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from kdlab.record import RunRecord
from kdlab.sweeps import SweepFailed, SweepHealth, job_health

LONG_AGO = 1_000_000_000  # 2001: stamps files as written by an earlier run of the sweep


def hydra_config(sweep: Path, output_subdir: str | None = ".hydra"):
    return OmegaConf.create({"hydra": {"sweep": {"dir": str(sweep)}, "output_subdir": output_subdir}})


def start_job(sweep: Path, name: str, status: str | None = None, message: str | None = None) -> Path:
    """What Hydra and a job leave: .hydra/hydra.yaml at start, metrics.json (a RunRecord) at the end."""
    folder = sweep / name
    (folder / ".hydra").mkdir(parents=True)
    (folder / ".hydra" / "hydra.yaml").write_text("hydra: {}\n")
    if status is not None:
        RunRecord(name="distill_mlp", kind="distillation", status=status, message=message).write(folder)
    return folder


def age(folder: Path) -> None:
    os.utime(folder / ".hydra" / "hydra.yaml", (LONG_AGO, LONG_AGO))


def test_job_health_reads_the_run_record(tmp_path):
    assert job_health(start_job(tmp_path, "ok", "ok")).healthy
    assert job_health(start_job(tmp_path, "smoke", "smoke")).healthy
    diverged = job_health(start_job(tmp_path, "nan", "diverged", "train/loss was nan at step 12"))
    assert (diverged.healthy, diverged.status) == (False, "diverged: train/loss was nan at step 12")
    missing = job_health(start_job(tmp_path, "crashed"))
    assert not missing.healthy and missing.status.startswith("no metrics.json")
    garbled = start_job(tmp_path, "garbled")
    (garbled / "metrics.json").write_text('{"test/acc": NaN}')
    assert not job_health(garbled).healthy and "unreadable metrics.json" in job_health(garbled).status


def test_the_sweep_exits_1_after_all_jobs_listing_only_the_unhealthy_ones(tmp_path):
    sweep = tmp_path / "sweep"
    callback = SweepHealth()
    callback.on_multirun_start(hydra_config(sweep))  # the sweep folder does not exist yet
    for name, status in (("0", "ok"), ("1", "failed"), ("2", None), ("4", "smoke"), ("10", "ok"), ("11", "running")):
        start_job(sweep, name, status, message="ValueError: bad batch size" if status == "failed" else None)
    (sweep / ".submitit" / "123").mkdir(parents=True)  # the submitit launcher's logs: not a job

    with pytest.raises(SweepFailed) as failed:
        callback.on_multirun_end(hydra_config(sweep))
    assert isinstance(failed.value, SystemExit)  # Hydra turns a callback's Exceptions into warnings
    report = str(failed.value.code)  # SystemExit prints a str code to stderr and exits with status 1
    listed = [line.split()[1] for line in report.splitlines() if line.startswith("  job ")]
    assert listed == ["1", "2", "11"]
    assert report.startswith(f"Sweep {sweep}: 3 of 6 jobs did not finish healthy")
    assert f"job 1 ({sweep / '1'}): failed: ValueError: bad batch size" in report


def test_a_healthy_sweep_passes(tmp_path):
    sweep = tmp_path / "sweep"
    callback = SweepHealth()
    callback.on_multirun_start(hydra_config(sweep))
    for name in ("0", "1"):
        start_job(sweep, name, "ok")
    callback.on_multirun_end(hydra_config(sweep))  # no exit


def test_jobs_of_an_earlier_run_count_only_when_this_run_restarts_them(tmp_path, caplog):
    """A resumed Optuna search leaves its earlier folders alone; a grid re-run rewrites them."""
    sweep = tmp_path / "sweep"
    for name, status in (("0", "ok"), ("1", "failed")):
        age(start_job(sweep, name, status))
    callback = SweepHealth()
    callback.on_multirun_start(hydra_config(sweep))
    start_job(sweep, "2", "ok")
    callback.on_multirun_end(hydra_config(sweep))  # job 1 failed in the earlier run: only a warning
    assert f"Job {sweep / '1'}, from an earlier run of this sweep, did not finish: failed" in caplog.text

    callback.on_multirun_start(hydra_config(sweep))
    (sweep / "1" / ".hydra" / "hydra.yaml").write_text("hydra: {rerun: true}\n")  # Hydra restarts job 1
    with pytest.raises(SweepFailed, match=r"1 of 1 jobs"):
        callback.on_multirun_end(hydra_config(sweep))


def test_without_hydra_output_subdir_the_folders_with_a_record_count(tmp_path):
    sweep = tmp_path / "sweep"
    callback = SweepHealth()
    callback.on_multirun_start(hydra_config(sweep, None))
    RunRecord(name="a", kind="supervised", status="ok").write(sweep / "0")
    RunRecord(name="a", kind="supervised", status="interrupted").write(sweep / "1")
    with pytest.raises(SweepFailed, match=r"1 of 2 jobs did not finish healthy") as failed:
        callback.on_multirun_end(hydra_config(sweep, None))
    assert f"job 1 ({sweep / '1'}): interrupted" in str(failed.value.code)
