"""Resuming an Optuna study: what counts toward n_trials, where new job folders go, sqlite storage."""

from pathlib import Path

import optuna
import pytest
from optuna.distributions import UniformDistribution
from optuna.trial import TrialState

from kdlab.sweeps.study import resume_study, sqlite_folder

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
