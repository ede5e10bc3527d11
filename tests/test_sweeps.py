"""Sweeps through train.py as a user types them: a grid multirun and its report, submitit, Optuna."""

import json
from pathlib import Path

import pytest
import yaml

from kdlab.report import write_report

TINY_TEACHER = 'teacher.overrides=["trainer.max_epochs=1"]'
TRAINED_A_TEACHER = "training it first"  # kdlab.teachers' log line when no cached teacher fits

pytestmark = pytest.mark.slow


@pytest.fixture
def cli(tiny_cli):
    """The tiny-run overrides with the sweep folder fixed, as typed on the command line."""
    return lambda root, data: [*tiny_cli(root, data), f"hydra.sweep.dir={root / 'sweep'}", TINY_TEACHER]


def job_metrics(sweep: Path) -> dict[str, dict]:
    return {p.parent.name: json.loads(p.read_text()) for p in sorted(sweep.glob("*/metrics.json"))}


def cached_teachers(root: Path) -> list[Path]:
    return [p for p in (root / "outputs" / "teachers").iterdir() if p.is_dir()]


def test_grid_multirun_trains_one_teacher_and_reports_each_job(tmp_path, mnist_dir, cli, run_script):
    done = run_script("train.py", "-m", "experiment=distill_mlp", *cli(tmp_path, mnist_dir), "distill.temperature=1,4")
    sweep = tmp_path / "sweep"
    jobs = job_metrics(sweep)
    assert sorted(jobs) == ["0", "1"]
    assert len(cached_teachers(tmp_path)) == 1
    assert (done.stdout + done.stderr).count(TRAINED_A_TEACHER) == 1  # job 1 reused job 0's teacher

    report = run_script("scripts/report.py", str(sweep))
    text = (sweep / "report.md").read_text()
    rows = [line for line in text.splitlines() if line.startswith("| ") and not line.startswith("| distill")]
    rows = [row for row in rows if not set(row) <= set("|- ")]  # drop the header rule
    assert len(rows) == 2
    for row, (job, temperature) in zip(rows, (("0", "1"), ("1", "4")), strict=True):
        m = jobs[job]
        assert f"distill.temperature={temperature}" in m["overrides"]
        cells = [cell.strip() for cell in row.strip("|").split("|")]
        assert cells[:2] == [temperature, "1"]
        assert cells[2] == f"{100 * m['test/acc']:.2f} ± 0.00"
        assert cells[3] == f"{100 * m['val/acc_best']:.2f} ± 0.00"
        assert cells[4] == f"{100 * m['test/teacher_acc']:.2f}"
        assert cells[6] == f"{m['test/kl']:.4f}"
        assert row in report.stdout  # the same table printed
    assert (sweep / "acc_vs_distill.temperature.png").is_file()


def test_submitit_local_launcher_runs_jobs_as_processes(tmp_path, mnist_dir, cli, run_script):
    """Both jobs start at once in their own processes: the file lock lets one train the teacher."""
    run_script(
        "train.py", "-m", "hydra/launcher=local", "experiment=distill_mlp", *cli(tmp_path, mnist_dir), "seed=0,1"
    )
    sweep = tmp_path / "sweep"
    jobs = job_metrics(sweep)
    assert sorted(jobs) == ["0", "1"]
    assert sorted(m["seed"] for m in jobs.values()) == [0, 1]
    assert jobs["0"]["teacher_checkpoint"] == jobs["1"]["teacher_checkpoint"]

    results = list(sweep.glob(".submitit/*/*_result.pkl"))
    assert len({p.parent for p in results}) == 2  # two submitit jobs, each its own process
    logs = "".join(p.read_text() for p in sweep.glob(".submitit/*/*_log.*"))
    assert logs.count(TRAINED_A_TEACHER) == 1
    assert len(cached_teachers(tmp_path)) == 1


def test_optuna_search_writes_the_best_trial(tmp_path, mnist_dir, cli, run_script):
    # 2 training batches per student: under-trained, so the trials' validation accuracies differ
    args = [*cli(tmp_path, mnist_dir), "trainer.limit_train_batches=2"]
    run_script(
        "train.py", "-m", "experiment=distill_mlp", "hparams_search=kd_optuna", "hydra.sweeper.n_trials=2", *args
    )
    sweep = tmp_path / "sweep"
    jobs = job_metrics(sweep)
    assert sorted(jobs) == ["0", "1"]

    result = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    params = result["best_params"]
    assert set(params) == {"distill.temperature", "distill.losses.kd.weight", "distill.losses.ce.weight"}
    assert 1.0 <= params["distill.temperature"] <= 8.0
    assert 0.5 <= params["distill.losses.kd.weight"] <= 1.0
    assert 0.0 <= params["distill.losses.ce.weight"] <= 0.5
    val_accs = [m["val/acc_best"] for m in jobs.values()]
    assert result["best_value"] in val_accs  # the value main returned: validation, not test
    assert result["best_value"] == max(val_accs)

    report = write_report(sweep)
    assert len(report.rows) == 2 and len(report.keys) == 3
    assert "Optuna best trial (job folder" in (sweep / "report.md").read_text()
