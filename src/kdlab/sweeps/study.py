"""kdlab's Optuna search: a Hydra sweeper on public APIs only, that survives failed trials and resumes.

hydra-optuna-sweeper 1.3 is tied to optuna 2.10 (and so to SQLAlchemy 1.4), and kdlab needed its
private `_impl` to resume a study, fail a NaN trial and end a search where nothing completed. This
sweeper asks Optuna for `n_jobs` trials at a time (ask/tell), runs them through the launcher Hydra
is configured with (basic, or submitit's local one, which runs the batch at once) and tells Optuna
each result. The same command with `hydra.sweep.dir=<folder>` resumes: `n_trials` counts finished
trials in the study, so only the missing ones run, and never in a job folder already written.
Hydra reaches it through `hydra_plugins.kdlab_optuna_sweeper` (a sweeper must live in hydra_plugins).
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import optuna
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Override, Transformer
from hydra.core.plugins import Plugins
from hydra.core.utils import JobReturn
from hydra.plugins.launcher import Launcher
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import TrialState

log = logging.getLogger(__name__)

DONE = (TrialState.COMPLETE, TrialState.PRUNED)  # what counts toward n_trials: a failed trial is replaced
RESULTS_FILE = "optimization_results.yaml"  # the best trial, as hydra-optuna-sweeper wrote it


def distribution(override: Override) -> BaseDistribution:
    """A sweep override in Hydra's syntax as the Optuna distribution it searches.

    interval(a, b) is a float, int(interval(a, b)) an int (both bounds included), tag(log, ...) either
    on a log scale. range(...) of ints is an int over exactly the values Hydra's basic sweeper would
    run (stop excluded); a=1,2, choice(...), shuffle(...) and float ranges are categorical.
    """
    sweep = override.value()
    if override.is_interval_sweep():
        scale = "log" in sweep.tags
        if isinstance(sweep.start, int) and isinstance(sweep.end, int):
            return IntDistribution(sweep.start, sweep.end, log=scale)
        return FloatDistribution(sweep.start, sweep.end, log=scale)
    values = list(override.sweep_iterator(transformer=Transformer.encode))  # lists become their text
    if override.is_range_sweep() and not sweep.shuffle and all(type(v) is int for v in values):
        return IntDistribution(min(values), max(values), step=abs(int(sweep.step)))
    return CategoricalDistribution(values)


def search_space(overrides: list[Override]) -> tuple[dict[str, BaseDistribution], list[str]]:
    """The searched keys' distributions, and the fixed overrides (as typed) that every job gets.

    Overrides come as `hydra.sweeper.params` then the command line: a later one of a key replaces an
    earlier one (in its place), so `distill.temperature=4` on the command line fixes a searched key.
    """
    space: dict[str, BaseDistribution] = {}
    fixed: dict[str, str] = {}
    for override in overrides:
        key = override.get_key_element()
        if override.is_sweep_override():
            fixed.pop(key, None)
            space[key] = distribution(override)
        else:
            space.pop(key, None)
            fixed[key] = override.input_line
    return space, list(fixed.values())


def resume_study(study: optuna.Study, n_trials: int, sweep_dir: Path) -> tuple[int, int]:
    """Fail the trials a killed search left running; return (trials still to run, first new job number).

    A trial counts toward `n_trials` once it completed (or was pruned): a killed or failed one is
    replaced by a new trial. New job folders come after every existing numbered folder and every
    trial of the study, so no job folder is written twice and job n is trial n in a lone study.
    """
    trials = study.get_trials(deepcopy=False)
    for trial in trials:
        if trial.state == TrialState.RUNNING:  # one search per study: nothing else runs it
            log.warning("Trial %d was left running by a stopped search: marked failed.", trial.number)
            study.tell(trial.number, state=TrialState.FAIL)
    done = sum(trial.state in DONE for trial in trials)
    folders = sweep_dir.iterdir() if sweep_dir.is_dir() else []
    numbered = [int(p.name) for p in folders if p.is_dir() and p.name.isdigit()]
    next_job = max([len(trials), *(n + 1 for n in numbered)])
    to_go = max(n_trials - done, 0)
    if trials:
        name = study.study_name
        log.info(
            "Resuming study %r: %d of %d trials done, %d to go, from job %d.", name, done, n_trials, to_go, next_job
        )
    return to_go, next_job


def sqlite_folder(storage: str | None) -> Path | None:
    """The folder of a `sqlite:///<path>` storage: sqlite creates the file, not its folder."""
    if isinstance(storage, str) and storage.startswith("sqlite:///") and storage != "sqlite:///:memory:":
        return Path(storage.removeprefix("sqlite:///")).parent
    return None


class TrialFailed(Exception):
    """A trial's job failed, diverged or returned no number: Optuna records it FAIL and the search goes on."""


class SearchStopped(RuntimeError):
    """More of a batch's trials failed than `max_failure_rate` allows."""


def job_value(ret: JobReturn) -> float:
    """The number a job returned; TrialFailed naming its folder if it has none.

    kdlab's `sweep_job` turns a failed job into NaN; a job that failed outside it (its config did not
    compose) raises its own error from the public `return_value`.
    """
    folder = OmegaConf.select(ret.hydra_cfg, "hydra.runtime.output_dir") if ret.hydra_cfg else ret.overrides
    try:
        value = float(ret.return_value)
    except Exception as err:
        raise TrialFailed(f"job {folder} returned no number: {type(err).__name__}: {err}") from err
    if math.isnan(value):
        raise TrialFailed(f"job {folder} failed or diverged (it returned NaN); its log is in that folder.")
    return value


class OptunaSearch(Sweeper):
    """The sweeper: the keys of `hydra.sweeper` (hydra_plugins.kdlab_optuna_sweeper's config) as arguments."""

    def __init__(self, sampler: DictConfig | None, direction: str, n_trials: int, n_jobs: int,
                 max_failure_rate: float, storage: str | None, study_name: str | None,
                 params: DictConfig | None) -> None:  # fmt: skip
        if direction not in ("minimize", "maximize") or n_jobs < 1 or not 0.0 <= max_failure_rate <= 1.0:
            raise ValueError(f"hydra.sweeper: {direction=} (minimize|maximize), {n_jobs=} (>= 1), "
                             f"{max_failure_rate=} (0 to 1)")  # fmt: skip
        self.sampler, self.direction, self.n_trials, self.n_jobs = sampler, direction, n_trials, n_jobs
        self.max_failure_rate, self.storage, self.study_name = max_failure_rate, storage, study_name
        self.params = dict(params or {})
        self.hydra_context: HydraContext | None = None
        self.config: DictConfig | None = None
        self.launcher: Launcher | None = None  # these three: set by setup, as Hydra's BasicSweeper

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.hydra_context, self.config = hydra_context, config
        self.launcher = Plugins.instance().instantiate_launcher(
            hydra_context=hydra_context, task_function=task_function, config=config
        )

    def sweep(self, arguments: list[str]) -> None:
        """Run the trials the study still needs, `n_jobs` at a time, then write the best trial."""
        parser = OverridesParser.create(config_loader=self.hydra_context.config_loader)
        overrides = parser.parse_overrides([*(f"{k}={v}" for k, v in self.params.items()), *arguments])
        space, fixed = search_space(overrides)
        sweep_dir = Path(self.config.hydra.sweep.dir)
        study = self.open_study()
        to_go, job = resume_study(study, self.n_trials, sweep_dir)
        while to_go > 0:
            trials = [study.ask(space) for _ in range(min(self.n_jobs, to_go))]
            batch = [[*(f"{k}={trial.params[k]}" for k in space), *fixed] for trial in trials]
            returns = self.launcher.launch(batch, initial_job_idx=job)
            job, to_go = job + len(batch), to_go - len(batch)
            failed = 0
            for trial, ret in zip(trials, returns, strict=True):
                try:
                    study.tell(trial, job_value(ret))
                except TrialFailed as err:  # told without a value: optuna refuses FAIL with one
                    study.tell(trial, state=TrialState.FAIL)
                    log.warning("Trial %d failed, the search goes on: %s", trial.number, err)
                    failed += 1
            if failed > self.max_failure_rate * len(batch):
                raise SearchStopped(f"{failed} of {len(batch)} trials failed: over {self.max_failure_rate=}")
        self.write_best(study, sweep_dir)

    def open_study(self) -> optuna.Study:
        """The study from `storage` (made if new, its folder too), with its sampler seeded for this run.

        A resumed sampler with the configured seed would replay trial 0's random draws: it is seeded
        with seed + the study's trials so far.
        """
        folder = sqlite_folder(self.storage)
        if folder is not None:
            folder.mkdir(parents=True, exist_ok=True)
        storage = self.storage or optuna.storages.InMemoryStorage()  # one object: both handles share it
        study = optuna.create_study(
            storage=storage, study_name=self.study_name, direction=self.direction, load_if_exists=True
        )
        sampler = self.make_sampler(len(study.trials))
        kind = type(sampler).__name__ if sampler else "optuna's default"
        log.info("Study %r in %s: %s sampler, %s.", study.study_name, self.storage or "memory", kind, self.direction)
        return optuna.load_study(study_name=study.study_name, storage=storage, sampler=sampler)

    def make_sampler(self, trials_so_far: int) -> optuna.samplers.BaseSampler | None:
        """`hydra.sweeper.sampler` (a `_target_` config; null: optuna's default), its seed past the trials so far."""
        if self.sampler is None:
            return None
        seed = self.sampler.get("seed")
        return instantiate(self.sampler) if seed is None else instantiate(self.sampler, seed=seed + trials_so_far)

    def write_best(self, study: optuna.Study, sweep_dir: Path) -> None:
        """<sweep dir>/optimization_results.yaml, as hydra-optuna-sweeper wrote it; nothing if no trial completed."""
        if not study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
            log.error("No trial of study %r completed: no %s.", study.study_name, RESULTS_FILE)
            return
        best = study.best_trial
        log.info("Best trial %d: %s, value %s.", best.number, best.params, best.value)
        sweep_dir.mkdir(parents=True, exist_ok=True)
        results = {"name": "optuna", "best_params": best.params, "best_value": best.value}
        OmegaConf.save(OmegaConf.create(results), sweep_dir / RESULTS_FILE)
