"""An Optuna search that survives failed trials and resumes: n_trials counts finished trials, jobs never overwrite.

Hydra's Optuna sweeper (hydra-optuna-sweeper 1.3, optuna 2.10) loads an existing study from its
storage but then runs n_trials more, numbers job folders from 0 again (over the finished ones),
stops at the first failed trial, crashes on a NaN result (it tells FAIL *with* the NaN value,
which optuna refuses) and crashes if no trial completed. `ResumableOptunaSweeperImpl` fixes these
around the plugin's own `sweep`; Hydra reaches it through
`hydra_plugins.kdlab_optuna_sweeper.ResumableOptunaSweeper` (a sweeper must live in hydra_plugins).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import optuna
from hydra.core.utils import JobReturn, JobStatus
from hydra.plugins.launcher import Launcher
from hydra.types import HydraContext, TaskFunction
from hydra.utils import instantiate
from hydra_plugins.hydra_optuna_sweeper._impl import OptunaSweeperImpl
from omegaconf import DictConfig
from optuna.trial import TrialState

log = logging.getLogger(__name__)

DONE = (TrialState.COMPLETE, TrialState.PRUNED)  # what counts toward n_trials: a failed trial is retried


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
    if trials:
        log.info(
            "Resuming study %r: %d of %d trials done, %d to go; new jobs from folder %d.",
            study.study_name,
            done,
            n_trials,
            max(n_trials - done, 0),
            next_job,
        )
    return max(n_trials - done, 0), next_job


def sqlite_folder(storage: Any) -> Path | None:
    """The folder of a `sqlite:///<path>` storage: sqlite creates the file, not its folder."""
    if isinstance(storage, str) and storage.startswith("sqlite:///") and storage != "sqlite:///:memory:":
        return Path(storage.removeprefix("sqlite:///")).parent
    return None


class TrialFailed(RuntimeError):
    """A trial's job failed or diverged: Optuna records the trial FAIL and the search goes on."""


class FailedJob:
    """What a job's NaN result becomes for the plugin's loop: `float()` of it raises TrialFailed.

    The plugin catches that around `study.tell`, tells FAIL without a value and logs
    "Failed experiment: <message>"; a plain NaN would be told as FAIL with the value and crash.
    """

    def __init__(self, folder: str) -> None:
        self.folder = folder

    def __float__(self) -> float:
        raise TrialFailed(f"job {self.folder} failed or diverged (it returned NaN); its log is in that folder.")


class FailNaNJobs:
    """The sweep's launcher, with each NaN result turned into a FailedJob."""

    def __init__(self, launcher: Launcher) -> None:
        self.launcher = launcher

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        returns = self.launcher.launch(job_overrides, initial_job_idx=initial_job_idx)
        for ret in returns:
            value = ret._return_value
            if ret.status == JobStatus.COMPLETED and isinstance(value, float) and math.isnan(value):
                ret.return_value = FailedJob(ret.hydra_cfg.hydra.runtime.output_dir)
        return returns


class ResumableOptunaSweeperImpl(OptunaSweeperImpl):
    """The plugin's sweeper, set up to resume its study before the plugin's loop runs."""

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        super().setup(hydra_context=hydra_context, task_function=task_function, config=config)
        self.launcher = FailNaNJobs(self.launcher)

    def sweep(self, arguments: list[str]) -> None:
        folder = sqlite_folder(self.storage)
        if folder is not None:
            folder.mkdir(parents=True, exist_ok=True)
        if self.storage is None:  # in memory: one storage object, so the plugin's study is this one
            self.storage = optuna.storages.InMemoryStorage()
        study = optuna.create_study(
            study_name=self.study_name,
            storage=self.storage,
            directions=self._get_directions(),
            load_if_exists=True,
        )
        self.n_trials, self.job_idx = resume_study(study, self.n_trials, Path(self.config.hydra.sweep.dir))
        self._reseed_sampler(len(study.trials))
        before = len(study.trials)
        try:
            super().sweep(arguments)  # loads the same study (load_if_exists) and runs self.n_trials
        except ValueError:
            # After its loop the plugin asks for the best trial, which raises when none completed;
            # any other ValueError (before or during the loop) leaves trials untold or unrun.
            trials = study.get_trials(deepcopy=False)
            all_told = len(trials) - before == self.n_trials and all(t.state != TrialState.RUNNING for t in trials)
            if not all_told or any(t.state == TrialState.COMPLETE for t in trials):
                raise
            log.error("No trial of study %r completed: no optimization_results.yaml.", study.study_name)

    def _reseed_sampler(self, n_trials: int) -> None:
        """A resumed seeded sampler would replay trial 0's random draws: seed it with seed + trials so far."""
        sampler_cfg = self.config.hydra.sweeper.get("sampler")
        if n_trials == 0 or sampler_cfg is None or sampler_cfg.get("seed") is None or sampler_cfg.get("_partial_"):
            return  # a fresh study, an unseeded sampler, or GridSampler (built later by the plugin)
        self.sampler = instantiate(sampler_cfg, seed=sampler_cfg.seed + n_trials)
