"""The sweep report on hand-made sweep folders: grouping, statistics, files. No training."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from matplotlib.image import imread
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from kdlab.report import load_jobs, swept_keys, write_report

REPO = Path(__file__).resolve().parents[2]
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
COMMON = ["experiment=distill_mlp", "trainer.max_epochs=1", "~callbacks.model_summary"]  # the same in every job
# 2 temperatures x 3 seeds, in the order a sweep `distill.temperature=10,2 seed=0,1,2` numbers them
GRID = [(10, 0), (10, 1), (10, 2), (2, 0), (2, 1), (2, 2)]
TEST_ACC = [0.912, 0.921, 0.905, 0.955, 0.951, 0.962]
VAL_ACC = [0.930, 0.925, 0.921, 0.960, 0.958, 0.966]
KL = [0.30, 0.32, 0.31, 0.12, 0.11, 0.13]


def distill_metrics(seed: int, test_acc: float, val_acc: float, kl: float, **extra) -> dict:
    return {
        "name": "distill_mlp",
        "module": "DistillationModule",
        "seed": seed,
        "test/acc": test_acc,
        "val/acc_best": val_acc,
        "test/teacher_acc": 0.981,
        "test/agreement": test_acc - 0.01,
        "test/kl": kl,
        "params/student": 235146,
        "params/teacher": 535818,
        "compression": 535818 / 235146,
        "wall_time_s": 10.0 + seed,
        "student_key": "1df3e6693a055c7c",
        **extra,
    }


def write_job(folder: Path, overrides: list[str], metrics: dict | None) -> None:
    """A job folder as Hydra and kdlab.run leave it; metrics=None is a job that never finished."""
    (folder / ".hydra").mkdir(parents=True)
    (folder / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    if metrics is not None:
        (folder / "metrics.json").write_text(json.dumps({**metrics, "overrides": overrides}))


@pytest.fixture
def grid_sweep(tmp_path: Path) -> Path:
    sweep = tmp_path / "multirun" / "2026-01-01_00-00-00"
    for job, (temp, seed) in enumerate(GRID):
        # jobs finish out of order under a parallel launcher: the first three saw 2 scratch runs,
        # the last three only 1; the report must quote the baseline of the most runs
        seen = {"scratch/acc_mean": 0.94, "scratch/acc_std": 0.004, "scratch/runs": 2}
        scratch = seen if job < 3 else {"scratch/acc_mean": 0.938, "scratch/acc_std": 0.0, "scratch/runs": 1}
        metrics = distill_metrics(seed, TEST_ACC[job], VAL_ACC[job], KL[job], **scratch)
        write_job(sweep / str(job), [*COMMON, f"distill.temperature={temp}", f"seed={seed}"], metrics)
    write_job(sweep / "6", [*COMMON, "distill.temperature=4", "seed=0"], None)  # crashed
    return sweep


def table_line(report_md: str, first_cell: str) -> list[str]:
    lines = [line for line in report_md.splitlines() if line.startswith(f"| {first_cell} ")]
    assert len(lines) == 1, report_md
    return [cell.strip() for cell in lines[0].strip("|").split("|")]


def test_rows_average_the_seeds_of_each_temperature(grid_sweep):
    report = write_report(grid_sweep)

    assert report.keys == ["distill.temperature"]  # constant overrides and the seed are not swept
    assert [row.setting for row in report.rows] == [{"distill.temperature": "2"}, {"distill.temperature": "10"}]
    for row, jobs in zip(report.rows, ([3, 4, 5], [0, 1, 2]), strict=True):
        assert sorted(int(job.name) for job in row.jobs) == jobs
        for metric, values in (("test/acc", TEST_ACC), ("val/acc_best", VAL_ACC), ("test/kl", KL)):
            mean, std = row.stats(metric)
            picked = np.array(values)[jobs]
            assert mean == pytest.approx(np.mean(picked))
            assert std == pytest.approx(np.std(picked, ddof=1))  # the sample std over seeds

    text = (grid_sweep / "report.md").read_text()
    assert report.table in text
    two = table_line(text, "2")
    t2 = np.array(TEST_ACC[3:]) * 100
    v2 = np.array(VAL_ACC[3:]) * 100
    assert two[1] == "3"
    assert two[2] == f"{t2.mean():.2f} ± {t2.std(ddof=1):.2f}"
    assert two[3] == f"{v2.mean():.2f} ± {v2.std(ddof=1):.2f}"
    assert two[4] == "98.10"  # teacher
    assert two[6] == f"{np.mean(KL[3:]):.4f}"
    assert two[7] == "235,146"
    assert two[8] == "11.0"  # mean wall time of seeds 0, 1, 2
    assert table_line(text, "10")[2] == f"{np.mean(TEST_ACC[:3]) * 100:.2f} ± {np.std(TEST_ACC[:3], ddof=1) * 100:.2f}"
    assert "Best by validation: distill.temperature=2" in text
    assert "94.00 ± 0.40% test acc over 2 runs" in text  # the baseline seen by the most runs
    assert "failed or still running):** job folders 6" in text


def test_writes_valid_pngs_and_tensorboard(grid_sweep):
    report = write_report(grid_sweep)

    pngs = [grid_sweep / "acc_vs_distill.temperature.png", grid_sweep / "acc_vs_params.png"]
    for png in pngs:
        assert png.read_bytes()[:8] == PNG_SIGNATURE
        assert imread(png).shape[2] in (3, 4)  # decodes as an image
        assert f"]({png.name})" in (grid_sweep / "report.md").read_text()
        assert png in report.files

    board = grid_sweep / "tensorboard"
    assert list(board.glob("events.out.tfevents.*"))
    images = EventAccumulator(str(board)).Reload().Tags()["images"]
    assert set(images) == {"sweep/acc_vs_distill.temperature", "sweep/acc_vs_params"}
    runs = sorted(p.name for p in board.iterdir() if p.is_dir())
    assert runs == ["0", "1", "2", "3", "4", "5"]  # one hparams entry per finished job
    job = EventAccumulator(str(board / "3")).Reload()
    assert "_hparams_/session_start_info" in job.PluginTagToContent("hparams")
    assert job.Scalars("hp/test_acc")[0].value == pytest.approx(TEST_ACC[3])

    write_report(grid_sweep)  # a second report replaces the first, no duplicate entries
    assert sorted(p.name for p in board.iterdir() if p.is_dir()) == runs
    assert len(list(board.glob("events.out.tfevents.*"))) == 1


def test_single_seed_has_zero_std_and_optuna_best_trial_is_named(tmp_path):
    """An Optuna sweep: each trial its own setting (n=1), the best one from optimization_results.yaml."""
    sweep = tmp_path / "optuna"
    trials = [(2.5, 0.61, 0.93), (7.25, 0.83, 0.97), (5.0, 0.55, 0.95)]  # temperature, kd weight, val acc
    for job, (temp, kd, val) in enumerate(trials):
        overrides = [f"distill.temperature={temp}", f"distill.losses.kd.weight={kd}", *COMMON]
        write_job(sweep / str(job), overrides, distill_metrics(0, val - 0.01, val, 0.2))
    best = {"distill.temperature": 7.25, "distill.losses.kd.weight": 0.83}
    (sweep / "optimization_results.yaml").write_text(
        yaml.safe_dump({"name": "optuna", "best_params": best, "best_value": 0.97})
    )
    out = tmp_path / "report"

    report = write_report(sweep, out)

    assert report.keys == ["distill.temperature", "distill.losses.kd.weight"]
    assert [len(row.jobs) for row in report.rows] == [1, 1, 1]
    assert [row.stats("val/acc_best") for row in report.rows] == [(0.93, 0.0), (0.95, 0.0), (0.97, 0.0)]
    text = (out / "report.md").read_text()
    assert table_line(text, "7.25")[4] == "97.00 ± 0.00"  # val acc best, n=1
    assert "Optuna best trial (job folder 1)" in text
    for name in ("acc_vs_distill.temperature", "acc_vs_distill.losses.kd.weight", "acc_vs_params"):
        assert (out / f"{name}.png").read_bytes()[:8] == PNG_SIGNATURE
    assert not (sweep / "report.md").exists()  # --out leaves the sweep folder alone
    assert "from scratch" not in text  # no job knew a scratch baseline


def test_missing_overrides_file_falls_back_to_metrics(tmp_path):
    for job, temp in enumerate((1, 4)):
        folder = tmp_path / str(job)
        folder.mkdir()
        overrides = [f"distill.temperature={temp}"]
        (folder / "metrics.json").write_text(json.dumps({**distill_metrics(0, 0.9, 0.9, 0.1), "overrides": overrides}))
    assert swept_keys(load_jobs(tmp_path)) == ["distill.temperature"]


def test_no_metrics_is_a_clear_error(tmp_path):
    write_job(tmp_path / "sweep" / "0", [*COMMON, "distill.temperature=1"], None)
    with pytest.raises(
        FileNotFoundError, match=r"(?s)No metrics.json under .*sweep.*may still be running or its jobs failed"
    ):
        write_report(tmp_path / "sweep")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        write_report(tmp_path / "no_such_sweep")
    assert not (tmp_path / "no_such_sweep").exists()


def test_cli_reports_the_error_without_a_traceback(tmp_path):
    done = subprocess.run(
        [sys.executable, "scripts/report.py", str(tmp_path)], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 1
    assert done.stderr.startswith("error: No metrics.json under") and "Traceback" not in done.stderr
