"""kdlab's Optuna sweeper without training: the search space, failed trials, batches, resume, the best trial."""

import logging
import math
from pathlib import Path

import optuna
import pytest
import yaml
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.plugins import Plugins
from hydra.core.utils import JobReturn, JobStatus
from hydra.types import HydraContext
from omegaconf import DictConfig, OmegaConf
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import TrialState

from kdlab.config import compose_config
from kdlab.sweeps.study import (
    OptunaSearch,
    SearchStopped,
    TrialFailed,
    distribution,
    job_value,
    resume_study,
    search_space,
    sqlite_folder,
)

optuna.logging.set_verbosity(optuna.logging.WARNING)


def parse(*overrides: str):
    return OverridesParser.create().parse_overrides(list(overrides))


@pytest.mark.parametrize(
    ("sweep", "expected"),
    [
        ("interval(1.0, 8.0)", FloatDistribution(1.0, 8.0)),
        ("interval(1, 8)", FloatDistribution(1.0, 8.0)),  # Hydra's intervals are floats...
        ("int(interval(1, 8))", IntDistribution(1, 8)),  # ...unless cast
        ("tag(log, interval(1e-4, 0.1))", FloatDistribution(1e-4, 0.1, log=True)),
        ("tag(log, int(interval(1, 64)))", IntDistribution(1, 64, log=True)),
        ("choice(0, 4)", CategoricalDistribution([0, 4])),
        ("0,4", CategoricalDistribution([0, 4])),  # a=1,2 as typed on the command line
        ("choice(adam, sgd)", CategoricalDistribution(["adam", "sgd"])),
        ("range(1, 5)", IntDistribution(1, 4)),  # stop excluded, as Hydra's basic sweeper runs it
        ("range(0, 10, 3)", IntDistribution(0, 9, step=3)),
        ("range(0.5, 2.0, 0.5)", CategoricalDistribution([0.5, 1.0, 1.5])),
    ],
)
def test_the_sweep_syntax_becomes_an_optuna_distribution(sweep, expected):
    (override,) = parse(f"x={sweep}")
    assert distribution(override) == expected


def test_a_shuffled_range_is_categorical():
    (override,) = parse("x=shuffle(range(1, 4))")
    searched = distribution(override)
    assert isinstance(searched, CategoricalDistribution) and sorted(searched.choices) == [1, 2, 3]


def test_the_command_line_replaces_or_fixes_a_searched_key_and_fixed_overrides_pass_as_typed():
    params = ["distill.temperature=interval(1.0, 8.0)", "distill.losses.kd.weight=interval(0.5, 1.0)", "seed=3"]
    params.append("distill.losses.ce.weight=interval(0.0, 0.5)")
    typed = ["~callbacks.model_summary", 'teacher.overrides=["trainer.max_epochs=1"]', "experiment=distill_mlp"]
    space, fixed = search_space(
        parse(*params, "distill.temperature=choice(0,4)", "distill.losses.kd.weight=0.9", *typed)
    )
    # a replaced key keeps its place: the same seed draws the same values for the same keys
    assert list(space.items()) == [
        ("distill.temperature", CategoricalDistribution([0, 4])),
        ("distill.losses.ce.weight", FloatDistribution(0.0, 0.5)),
    ]
    assert fixed == ["seed=3", "distill.losses.kd.weight=0.9", *typed]


@pytest.fixture
def study(tmp_path):
    """A study in sqlite as a killed search leaves it: 2 complete, 1 failed, 1 still RUNNING."""
    storage = f"sqlite:///{tmp_path / 'db' / 'optuna.db'}"
    sqlite_folder(storage).mkdir()
    study = optuna.create_study(study_name="kd", storage=storage, direction="maximize")
    for state in (TrialState.COMPLETE, TrialState.FAIL, TrialState.COMPLETE, None):
        trial = study.ask({"x": FloatDistribution(0.0, 1.0)})
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
    """Runs no training: job n 'returns' results[n] (an exception: it crashed) in a new numbered folder."""

    def __init__(self, sweep: Path, results: dict) -> None:
        self.sweep, self.results, self.batches, self.overrides = sweep, results, [], []

    def launch(self, job_overrides, initial_job_idx):
        returns = []
        for n, overrides in enumerate(job_overrides, start=initial_job_idx):
            (self.sweep / str(n)).mkdir(parents=True)  # exist_ok=False: a reused folder fails the test
            result = self.results.get(n, 0.5)
            crashed = isinstance(result, Exception)
            ret = JobReturn(overrides=list(overrides), status=JobStatus.FAILED if crashed else JobStatus.COMPLETED)
            ret.hydra_cfg = OmegaConf.create({"hydra": {"runtime": {"output_dir": str(self.sweep / str(n))}}})
            ret.return_value = result
            returns.append(ret)
        self.batches.append(list(range(initial_job_idx, initial_job_idx + len(job_overrides))))
        self.overrides += [list(o) for o in job_overrides]
        return returns

    @property
    def launched(self) -> list[int]:
        return [n for batch in self.batches for n in batch]


SAMPLER = {"_target_": "optuna.samplers.TPESampler", "seed": 1234, "n_startup_trials": 4}
CONTEXT = HydraContext(config_loader=None, callbacks=None)  # the parser needs a config loader only for glob()


def search(sweep: Path, n_trials: int, results: dict, storage: str | None = "sqlite", arguments=(), **config):
    """The sweep as `hparams_search=kd_optuna` configures it, by default on one parameter, with a fake launcher."""
    config = {
        "sampler": OmegaConf.create(SAMPLER),
        "direction": "maximize",
        "n_trials": n_trials,
        "n_jobs": 1,
        "max_failure_rate": 1.0,
        "storage": storage and f"sqlite:///{sweep / 'optuna.db'}",
        "study_name": "kd_optuna",
        "params": OmegaConf.create({"distill.temperature": "interval(1.0, 8.0)"}),
        **config,
    }
    sweeper = OptunaSearch(**config)
    sweeper.hydra_context, sweeper.config = CONTEXT, OmegaConf.create({"hydra": {"sweep": {"dir": str(sweep)}}})
    sweeper.launcher = launcher = FakeLauncher(sweep, results)
    sweeper.sweep(list(arguments))
    return launcher


def trials(sweep: Path) -> list[optuna.trial.FrozenTrial]:
    return optuna.load_study(study_name="kd_optuna", storage=f"sqlite:///{sweep / 'optuna.db'}").trials


def test_each_job_runs_its_trials_values_with_the_fixed_overrides(tmp_path):
    sweep = tmp_path / "sweep"  # not there yet: the sqlite storage's folder is made
    params = {"lr": "tag(log, interval(1e-4, 0.1))", "epochs": "int(interval(1, 3))", "opt": "choice(adam, sgd)"}
    fixed = ["~callbacks.model_summary", 'teacher.overrides=["trainer.max_epochs=1"]']
    launcher = search(sweep, 4, {}, params=OmegaConf.create(params), arguments=[*fixed, "seed=0,1"])
    for trial, overrides in zip(trials(sweep), launcher.overrides, strict=True):
        assert set(trial.params) == {"lr", "epochs", "opt", "seed"}  # seed=0,1 on the command line is searched
        assert overrides == [*(f"{k}={trial.params[k]}" for k in ("lr", "epochs", "opt", "seed")), *fixed]
        assert 1e-4 <= trial.params["lr"] <= 0.1 and trial.params["epochs"] in (1, 2, 3)
        assert trial.params["opt"] in ("adam", "sgd") and trial.params["seed"] in (0, 1)


def test_a_nan_job_is_a_failed_trial_and_the_search_goes_on(tmp_path):
    sweep = tmp_path / "sweep"
    launcher = search(sweep, 3, {1: math.nan})
    assert launcher.launched == [0, 1, 2]
    assert [t.state.name for t in trials(sweep)] == ["COMPLETE", "FAIL", "COMPLETE"]
    assert (sweep / "optimization_results.yaml").is_file()


def test_a_crashed_job_or_one_without_a_number_is_a_failed_trial_too(tmp_path):
    sweep = tmp_path / "sweep"
    launcher = search(sweep, 3, {0: RuntimeError("the config did not compose"), 1: None})
    assert launcher.launched == [0, 1, 2]
    assert [t.state.name for t in trials(sweep)] == ["FAIL", "FAIL", "COMPLETE"]


def test_a_failed_job_names_its_folder():
    ret = JobReturn(
        status=JobStatus.COMPLETED, hydra_cfg=OmegaConf.create({"hydra": {"runtime": {"output_dir": "/s/1"}}})
    )
    ret.return_value = math.nan
    with pytest.raises(TrialFailed, match=r"job /s/1 failed or diverged"):
        job_value(ret)
    ret.return_value = 0.25
    assert job_value(ret) == 0.25


@pytest.mark.parametrize("storage", ["sqlite", None])
def test_a_search_where_every_trial_failed_ends_without_a_best_trial(tmp_path, storage, caplog):
    sweep = tmp_path / "sweep"
    with caplog.at_level(logging.ERROR, logger="kdlab.sweeps.study"):
        launcher = search(sweep, 2, {0: math.nan, 1: math.nan}, storage)
    assert launcher.launched == [0, 1]
    assert not (sweep / "optimization_results.yaml").exists()  # SweepHealth then exits 1 naming both
    assert "No trial of study 'kd_optuna' completed" in caplog.text


def test_the_best_trial_is_written_to_optimization_results(tmp_path):
    sweep = tmp_path / "sweep"
    search(sweep, 3, {0: 0.2, 1: 0.9, 2: 0.4})
    best = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    assert best == {"name": "optuna", "best_params": trials(sweep)[1].params, "best_value": 0.9}


def test_n_jobs_trials_are_asked_and_launched_together(tmp_path):
    launcher = search(tmp_path / "sweep", 5, {}, n_jobs=2)
    assert launcher.batches == [[0, 1], [2, 3], [4]]


def test_more_failures_than_max_failure_rate_stop_the_search(tmp_path):
    sweep = tmp_path / "sweep"
    with pytest.raises(SearchStopped, match="1 of 2 trials failed"):
        search(sweep, 4, {1: math.nan}, n_jobs=2, max_failure_rate=0.4)
    assert [t.state.name for t in trials(sweep)] == ["COMPLETE", "FAIL"]  # told before it stopped
    assert search(tmp_path / "again", 4, {1: math.nan}, n_jobs=2, max_failure_rate=0.5).launched == [0, 1, 2, 3]


def test_a_resumed_search_runs_the_missing_trials_in_new_folders_with_new_draws(tmp_path):
    sweep = tmp_path / "sweep"
    search(sweep, 3, {1: math.nan})  # trial 1 fails: 2 of 3 done
    launcher = search(sweep, 3, {})
    assert launcher.launched == [3]  # one trial replaces the failed one, after folders 0-2
    study_trials = trials(sweep)
    assert [t.state.name for t in study_trials] == ["COMPLETE", "FAIL", "COMPLETE", "COMPLETE"]
    temperatures = [t.params["distill.temperature"] for t in study_trials]
    assert temperatures[3] not in temperatures[:3]  # reseeded: not a replay of trial 0's random draw

    assert search(sweep, 3, {}).launched == []  # n_trials reached: nothing to run


def test_hparams_search_kd_optuna_makes_kdlabs_sweeper_through_hydra(tmp_path):
    """The config users type, instantiated by Hydra's plugin registry as a multirun does."""
    sweep = tmp_path / "sweep"
    cfg = compose_config(
        ["experiment=distill_mlp", "hparams_search=kd_optuna", f"hydra.sweep.dir={sweep}", "hydra.sweeper.n_trials=2"],
        return_hydra_config=True,
    )
    sweeper = Plugins.instance().instantiate_sweeper(hydra_context=CONTEXT, task_function=print, config=cfg)
    search = sweeper.search
    assert isinstance(search.sampler, DictConfig) and search.sampler.seed == 1234  # a config: seeded per run
    search.launcher = launcher = FakeLauncher(sweep, {})
    sweeper.sweep([])
    assert launcher.launched == [0, 1]
    keys = {"distill.temperature", "distill.losses.kd.weight", "distill.losses.ce.weight"}
    assert [set(t.params) for t in trials(sweep)] == [keys, keys]
