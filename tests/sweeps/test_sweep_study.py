"""Resuming an Optuna study: what counts toward n_trials, where new job folders go, sqlite storage."""

import math
from pathlib import Path

import optuna
import pytest
from hydra.core.utils import JobReturn, JobStatus
from hydra.utils import instantiate
from omegaconf import OmegaConf
from optuna.distributions import UniformDistribution
from optuna.trial import TrialState

from kdlab.sweeps.study import (
    FailedJob,
    FailNaNJobs,
    ResumableOptunaSweeperImpl,
    TrialFailed,
    resume_study,
    sqlite_folder,
)

optuna.logging.set_verbosity(optuna.logging.WARNING)


@pytest.fixture
def study(tmp_path):
    """A study in sqlite as a killed search leaves it: 2 complete, 1 failed, 1 still RUNNING."""
    storage = f"sqlite:///{tmp_path / 'db' / 'optuna.db'}"
    sqlite_folder(storage).mkdir()
    study = optuna.create_study(study_name="kd", storage=storage, direction="maximize")
    for state in (TrialState.COMPLETE, TrialState.FAIL, TrialState.COMPLETE, None):
        trial = study.ask({"x": UniformDistribution(0.0, 1.0)})
        if state is TrialState.COMPLETE:
            study.tell(trial, 0.5)
        elif state is TrialState.FAIL:
            study.tell(trial, state=TrialState.FAIL)
    return optuna.load_study(study_name="kd", storage=storage)  # as the next process sees it


def test_a_resumed_study_runs_only_what_is_missing_after_the_existing_jobs(study, tmp_path):
    sweep = tmp_path / "sweep"
    for job in ("0", "1", "2", "3"):
        (sweep / job).mkdir(parents=True)
    (sweep / ".submitit").mkdir()

    to_go, next_job = resume_study(study, 6, sweep)
    assert to_go == 4  # 6 - 2 complete: the failed trial and the killed one are replaced
    assert next_job == 4  # trial 4 -> folder 4
    assert [t.state for t in study.trials][-1] == TrialState.FAIL  # the killed trial, no longer RUNNING
    assert resume_study(study, 2, sweep)[0] == 0  # n_trials already reached: nothing to run


def test_new_jobs_never_reuse_a_folder(study, tmp_path):
    sweep = tmp_path / "sweep"
    (sweep / "9").mkdir(parents=True)  # e.g. jobs of an earlier in-memory search in this folder
    assert resume_study(study, 6, sweep)[1] == 10


def test_a_fresh_study_starts_at_job_0():
    fresh = optuna.create_study()
    assert resume_study(fresh, 8, Path("/nonexistent")) == (8, 0)


def test_sqlite_folder():
    assert str(sqlite_folder("sqlite:////tmp/sweep/optuna.db")) == "/tmp/sweep"
    assert str(sqlite_folder("sqlite:///outputs/optuna.db")) == "outputs"
    assert sqlite_folder("sqlite:///:memory:") is None
    assert sqlite_folder(None) is None


class FakeLauncher:
    """Runs no training: job n 'returns' results[n] and leaves its numbered folder, as a launcher would."""

    def __init__(self, sweep: Path, results: dict[int, float]) -> None:
        self.sweep, self.results, self.launched = sweep, results, []

    def launch(self, job_overrides, initial_job_idx):
        returns = []
        for n, overrides in enumerate(job_overrides, start=initial_job_idx):
            (self.sweep / str(n)).mkdir(parents=True)  # exist_ok=False: a reused folder fails the test
            ret = JobReturn(overrides=list(overrides), status=JobStatus.COMPLETED)
            ret.hydra_cfg = OmegaConf.create({"hydra": {"runtime": {"output_dir": str(self.sweep / str(n))}}})
            ret.return_value = self.results.get(n, 0.5)
            self.launched.append(n)
            returns.append(ret)
        return returns


def search(
    sweep: Path, n_trials: int, results: dict[int, float], storage: str | None = "sqlite"
) -> tuple[ResumableOptunaSweeperImpl, FakeLauncher]:
    """The sweep as `hparams_search=kd_optuna` configures it, on one parameter, with a fake launcher."""
    sampler_cfg = {"_target_": "optuna.samplers.TPESampler", "seed": 1234, "n_startup_trials": 4}
    impl = ResumableOptunaSweeperImpl(
        sampler=instantiate(sampler_cfg),
        direction="maximize",
        storage=storage and f"sqlite:///{sweep / 'optuna.db'}",
        study_name="kd_optuna",
        n_trials=n_trials,
        n_jobs=1,
        max_failure_rate=1.0,
        search_space=None,
        custom_search_space=None,
        params=OmegaConf.create({"distill.temperature": "interval(1.0, 8.0)"}),
    )
    impl.config = OmegaConf.create({"hydra": {"sweep": {"dir": str(sweep)}, "sweeper": {"sampler": sampler_cfg}}})
    impl.hydra_context = object()  # only checked for being set
    launcher = FakeLauncher(sweep, results)
    impl.launcher = FailNaNJobs(launcher)
    impl.sweep([])
    return impl, launcher


def test_a_nan_job_is_a_failed_trial_and_the_search_goes_on(tmp_path):
    sweep = tmp_path / "sweep"
    _, launcher = search(sweep, 3, {1: math.nan})
    assert launcher.launched == [0, 1, 2]
    study = optuna.load_study(study_name="kd_optuna", storage=f"sqlite:///{sweep / 'optuna.db'}")
    assert [t.state.name for t in study.trials] == ["COMPLETE", "FAIL", "COMPLETE"]
    assert (sweep / "optimization_results.yaml").is_file()


@pytest.mark.parametrize("storage", ["sqlite", None])
def test_a_search_where_every_trial_failed_ends_without_a_best_trial(tmp_path, storage):
    sweep = tmp_path / "sweep"
    sweep.mkdir()  # as Hydra's launcher makes it (the plugin writes optimization_results.yaml there)
    _, launcher = search(sweep, 2, {0: math.nan, 1: math.nan}, storage)
    assert launcher.launched == [0, 1]
    assert not (sweep / "optimization_results.yaml").exists()  # SweepHealth then exits 1 naming both


def test_a_resumed_search_runs_the_missing_trials_in_new_folders_with_new_draws(tmp_path):
    sweep = tmp_path / "sweep"
    search(sweep, 3, {1: math.nan})  # trial 1 fails: 2 of 3 done
    _, launcher = search(sweep, 3, {})
    assert launcher.launched == [3]  # one trial replaces the failed one, after folders 0-2
    study = optuna.load_study(study_name="kd_optuna", storage=f"sqlite:///{sweep / 'optuna.db'}")
    assert [t.state.name for t in study.trials] == ["COMPLETE", "FAIL", "COMPLETE", "COMPLETE"]
    temperatures = [t.params["distill.temperature"] for t in study.trials]
    assert temperatures[3] not in temperatures[:3]  # reseeded: not a replay of trial 0's random draw

    _, launcher = search(sweep, 3, {})
    assert launcher.launched == []  # n_trials reached: nothing to run


def test_float_of_a_failed_job_names_its_folder():
    with pytest.raises(TrialFailed, match=r"job /sweep/1 failed or diverged"):
        float(FailedJob("/sweep/1"))
