"""Hydra instantiates sweepers only from the hydra_plugins package: this is kdlab's Optuna search.

`override /hydra/sweeper: kdlab_optuna` (conf/hparams_search/kd_optuna.yaml) selects it; its keys
are KdlabOptunaSweeperConf's and the logic is kdlab.sweeps.study.OptunaSearch. Hydra imports every
module here at start-up, so this one imports neither optuna nor kdlab until the sweeper is made:
without the optional [sweeps] extra it costs nothing.
"""

import logging
from dataclasses import dataclass
from typing import Any

from hydra.core.config_store import ConfigStore
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig


@dataclass  # no `from __future__ import annotations` here: Hydra's plugin scan runs this module outside sys.modules
class KdlabOptunaSweeperConf:
    _target_: str = "hydra_plugins.kdlab_optuna_sweeper.KdlabOptunaSweeper"
    _recursive_: bool = False  # the sampler reaches the sweeper as a config: it seeds it per run
    sampler: Any = None  # a `_target_` config, e.g. optuna.samplers.TPESampler; null: optuna's default
    direction: str = "minimize"  # or maximize, of the value the task returns
    n_trials: int = 20  # finished (COMPLETE or PRUNED) trials in the study, counting earlier runs'
    n_jobs: int = 1  # trials asked of Optuna, and launched, at a time
    max_failure_rate: float = 1.0  # stop the search when more of a batch's trials fail
    storage: str | None = None  # e.g. sqlite:///<path>: a resumable study; null: in memory
    study_name: str | None = None  # one study per name in a storage
    params: dict[str, str] | None = None  # the search space, in Hydra's sweep syntax


ConfigStore.instance().store(group="hydra/sweeper", name="kdlab_optuna", node=KdlabOptunaSweeperConf, provider="kdlab")


class KdlabOptunaSweeper(Sweeper):
    """Hydra's handle on kdlab.sweeps.study.OptunaSearch (a plugin class must be defined in hydra_plugins)."""

    def __init__(self, **config: Any) -> None:
        logging.getLogger("alembic").setLevel(logging.WARNING)  # optuna's sqlite storage: one INFO line per step
        from kdlab.sweeps.study import OptunaSearch  # imports optuna: only when this sweeper is selected

        self.search = OptunaSearch(**config)

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.search.setup(hydra_context=hydra_context, task_function=task_function, config=config)

    def sweep(self, arguments: list[str]) -> None:
        self.search.sweep(arguments)
