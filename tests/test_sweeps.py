"""Sweeps through train.py as a user types them: a grid multirun and its report, submitit, Optuna.

Also sweeps that survive: a failed job ends only itself and the sweep exits 1 after all jobs ran,
naming it; a stopped Optuna search resumes; Optuna runs n_jobs trials at once with the local launcher;
Optuna + DDP runs one study.
"""

import os
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
import yaml

from kdlab.record import RunRecord
from kdlab.report import write_report
from kdlab.report.formatting import number
from kdlab.sweeps import job_health

TINY_TEACHER = 'teacher.overrides=["trainer.max_epochs=1"]'
TRAINED_A_TEACHER = "training it first"  # kdlab.teachers' log line when no cached teacher fits

pytestmark = pytest.mark.slow


@pytest.fixture
def cli(tiny_cli):
    """The tiny-run overrides with the sweep folder fixed, as typed on the command line."""
    return lambda root, data: [*tiny_cli(root, data), f"hydra.sweep.dir={root / 'sweep'}", TINY_TEACHER]


def job_metrics(sweep: Path) -> dict[str, RunRecord]:
    return {p.parent.name: RunRecord.read(p) for p in sorted(sweep.glob("*/metrics.json"))}


def cached_teachers(root: Path) -> list[Path]:
    return [p for p in (root / "outputs" / "teachers").iterdir() if p.is_dir()]


REPO = Path(__file__).resolve().parents[1]
DDP = ("trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2")


@pytest.fixture
def run_any():
    """Like `run_script("train.py", ...)`, for commands that should fail: the exit code is the test's to check."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "HYDRA_FULL_ERROR": "1"}

    def run(*args: str) -> subprocess.CompletedProcess:
        command = [sys.executable, "train.py", *args]
        return subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)

    return run


def finished(job: Path) -> bool:
    """The job ran to its end: the student's weights are written last, after metrics.json."""
    return (job / "metrics.json").is_file() and (job / "student.pt").is_file()


def job_overrides(job: Path) -> list[str]:
    return yaml.safe_load((job / ".hydra" / "overrides.yaml").read_text())


def study_trials(sweep: Path) -> list[optuna.trial.FrozenTrial]:
    return optuna.load_study(study_name="kd_optuna", storage=f"sqlite:///{sweep / 'optuna.db'}").trials


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
        assert f"distill.temperature={temperature}" in m.overrides
        cells = [cell.strip() for cell in row.strip("|").split("|")]
        assert cells[:2] == [temperature, "1"]
        assert cells[2] == f"{100 * m.metrics['test/acc']:.2f} ± 0.00"
        assert cells[3] == f"{100 * m.metrics['val/acc_best']:.2f} ± 0.00"
        assert cells[4] == f"{100 * m.metrics['test/teacher_acc']:.2f}"
        assert cells[6] == number(m.metrics["test/kl"])
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
    assert sorted(m.seed for m in jobs.values()) == [0, 1]
    assert jobs["0"].teacher == jobs["1"].teacher

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
    val_accs = [m.metrics["val/acc_best"] for m in jobs.values()]
    assert result["best_value"] in val_accs  # the value main returned: validation, not test
    assert result["best_value"] == max(val_accs)

    report = write_report(sweep)
    assert len(report.rows) == 2 and len(report.keys) == 3
    assert "Optuna best trial (job folder" in (sweep / "report.md").read_text()


def test_a_failed_job_ends_only_itself_and_the_sweep_exits_1_naming_it(tmp_path, mnist_dir, cli, run_any):
    """distill.temperature=0 fails job 1 at its start; jobs 0 and 2 still run to their end."""
    done = run_any("-m", "experiment=distill_mlp", *cli(tmp_path, mnist_dir), "distill.temperature=4,0,8")
    sweep = tmp_path / "sweep"
    assert done.returncode == 1, done.stderr[-3000:]
    assert [finished(sweep / job) for job in ("0", "1", "2")] == [True, False, True]
    assert not job_health(sweep / "1").healthy
    assert f"job 1 ({sweep / '1'}): " in done.stderr  # the end-of-sweep report, after all jobs ran
    assert f"Job {sweep / '1'} failed, the sweep goes on" in done.stdout  # logged when it failed


def test_an_optuna_search_records_a_failed_trial_and_goes_on(tmp_path, mnist_dir, cli, run_any):
    args = [*cli(tmp_path, mnist_dir), "trainer.limit_train_batches=2", "distill.temperature=choice(0,4)"]
    done = run_any("-m", "experiment=distill_mlp", "hparams_search=kd_optuna", "hydra.sweeper.n_trials=3", *args)
    sweep = tmp_path / "sweep"
    jobs = sorted(p for p in sweep.iterdir() if p.name.isdigit())
    assert [job.name for job in jobs] == ["0", "1", "2"]  # all n_trials ran
    failing = [job.name for job in jobs if "distill.temperature=0" in job_overrides(job)]
    assert 1 <= len(failing) < 3  # the sampler's seed gives both kinds
    assert [finished(job) for job in jobs] == [job.name not in failing for job in jobs]

    assert done.returncode == 1, done.stderr[-3000:]
    for job in failing:
        assert f"job {job} ({sweep / job}): " in done.stderr
    states = [trial.state.name for trial in study_trials(sweep)]
    assert states == ["FAIL" if str(n) in failing else "COMPLETE" for n in range(3)]
    best = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    assert best["best_params"]["distill.temperature"] == 4


def test_a_stopped_optuna_search_resumes_where_it_stopped(tmp_path, mnist_dir, cli, run_script):
    """The same command and sweep folder with n_trials=3 after 2 trials: one new trial, in folder 2."""
    args = ["-m", "experiment=distill_mlp", "hparams_search=kd_optuna", *cli(tmp_path, mnist_dir)]
    args.append("trainer.limit_train_batches=2")  # a quick student per trial
    run_script("train.py", *args, "hydra.sweeper.n_trials=2")
    sweep = tmp_path / "sweep"
    written = {job: (sweep / job / "metrics.json").stat().st_mtime_ns for job in ("0", "1")}

    run_script("train.py", *args, "hydra.sweeper.n_trials=3")
    assert sorted(p.name for p in sweep.iterdir() if p.name.isdigit()) == ["0", "1", "2"]
    assert {job: (sweep / job / "metrics.json").stat().st_mtime_ns for job in ("0", "1")} == written
    assert finished(sweep / "2")
    trials = study_trials(sweep)
    assert [(t.number, t.state.name) for t in trials] == [(0, "COMPLETE"), (1, "COMPLETE"), (2, "COMPLETE")]
    assert trials[2].params != trials[0].params  # the resumed sampler did not replay trial 0's draws
    temperature = trials[2].params["distill.temperature"]
    assert f"distill.temperature={temperature}" in job_overrides(sweep / "2")


def test_optuna_with_the_local_launcher_runs_n_jobs_trials_at_once(tmp_path, mnist_dir, cli, run_script):
    """hydra/launcher=local runs a batch of n_jobs=2 trials as two processes: both asked before either is told."""
    args = ["-m", "hydra/launcher=local", "experiment=distill_mlp", "hparams_search=kd_optuna"]
    args += [*cli(tmp_path, mnist_dir), "trainer.limit_train_batches=2"]
    run_script("train.py", *args, "hydra.sweeper.n_trials=2", "hydra.sweeper.n_jobs=2")
    sweep = tmp_path / "sweep"
    assert sorted(job_metrics(sweep)) == ["0", "1"]
    assert len({p.parent for p in sweep.glob(".submitit/*/*_result.pkl")}) == 2  # each job its own process
    first, second = study_trials(sweep)
    assert [first.state.name, second.state.name] == ["COMPLETE", "COMPLETE"]
    assert second.datetime_start < first.datetime_complete  # one batch: trial 1 ran alongside trial 0
    best = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    assert best["best_value"] == max(first.value, second.value)


def test_optuna_with_ddp_runs_one_study(tmp_path, mnist_dir, tiny_cli, run_script):
    """DDP in a search (spawned workers, as in any sweep): one study, each trial in its own job folder."""
    spawn = ("trainer=ddp_spawn", "trainer.accelerator=cpu", "trainer.devices=2")
    args = [*tiny_cli(tmp_path, mnist_dir), TINY_TEACHER, "data.batch_size=32", *spawn, "hydra.sweeper.n_trials=2"]
    run_script("train.py", "-m", "experiment=distill_mlp", "hparams_search=kd_optuna", *args)
    (sweep,) = (tmp_path / "outputs" / "distill_mlp" / "multirun").iterdir()
    names = sorted(p.name for p in sweep.iterdir() if not p.name.startswith("."))
    assert names == ["0", "1", "optimization_results.yaml", "optuna.db"]
    assert [t.state.name for t in study_trials(sweep)] == ["COMPLETE", "COMPLETE"]
    assert all(finished(sweep / job) for job in ("0", "1"))
    assert not (tmp_path / "outputs" / "distill_mlp" / "runs").exists()


def test_a_ddp_job_that_fails_in_fit_ends_only_itself(tmp_path, mnist_dir, tiny_cli, run_any):
    """optimizer.lr=-1 fails every rank in fit; the sweep's process goes on (DDP in sweeps: spawned workers)."""
    spawn = ("trainer=ddp_spawn", "trainer.accelerator=cpu", "trainer.devices=2")
    args = [*tiny_cli(tmp_path, mnist_dir), f"hydra.sweep.dir={tmp_path / 'sweep'}", "data.batch_size=32", *spawn]
    done = run_any("-m", "experiment=train_teacher_mlp", *args, "optimizer.lr=-1,0.003")
    sweep = tmp_path / "sweep"
    assert done.returncode == 1, done.stderr[-3000:]
    assert [finished(sweep / job) for job in ("0", "1")] == [False, True]
    assert f"job 0 ({sweep / '0'}): " in done.stderr


def test_submitit_local_with_relaunching_ddp_is_refused_before_anything_runs(tmp_path, mnist_dir, cli, run_any):
    args = ["-m", "hydra/launcher=local", "experiment=distill_mlp", *cli(tmp_path, mnist_dir), *DDP, "seed=0,1"]
    done = run_any(*args)
    assert done.returncode == 1
    assert "Use trainer=ddp_spawn in sweeps" in done.stderr
    assert not (tmp_path / "outputs" / "teachers").exists()  # refused before any teacher trained
    assert not list((tmp_path / "sweep").glob("*/.hydra"))  # and before any job started


def test_a_failed_submitit_job_ends_only_itself(tmp_path, mnist_dir, cli, run_any):
    """The same with each job in its own process: the check reads job folders, not job returns."""
    args = ["-m", "hydra/launcher=local", "experiment=distill_mlp", *cli(tmp_path, mnist_dir)]
    done = run_any(*args, "distill.temperature=0,4")
    sweep = tmp_path / "sweep"
    assert done.returncode == 1, done.stderr[-3000:]
    assert [finished(sweep / job) for job in ("0", "1")] == [False, True]
    assert f"job 0 ({sweep / '0'}): " in done.stderr
