"""Hydra instantiates sweepers only from the hydra_plugins package: this is kdlab's, a resuming Optuna sweeper.

Select it with `hydra.sweeper._target_: hydra_plugins.kdlab_optuna_sweeper.ResumableOptunaSweeper`
after `override /hydra/sweeper: optuna` (conf/hparams_search/kd_optuna.yaml); the logic is in
kdlab.sweeps.study.
"""

import logging
import warnings
from typing import Any

try:
    from hydra_plugins.hydra_optuna_sweeper.optuna_sweeper import OptunaSweeper
except ImportError:  # the optional [sweeps] extra is not installed: no sweeper to offer (and no warning)
    OptunaSweeper = object


class ResumableOptunaSweeper(OptunaSweeper):
    """The plugin's OptunaSweeper with kdlab's implementation: same config keys, resumable study."""

    def __init__(self, **params: Any) -> None:
        # optuna 2.10's RDB models use SQLAlchemy 1.4 APIs that 2.0 dropped (kdlab pins sqlalchemy<2),
        # and alembic logs each of its plugins at INFO when optuna's storage imports it
        warnings.filterwarnings("ignore", message="Deprecated API features detected", module=r"optuna\.")
        logging.getLogger("alembic").setLevel(logging.WARNING)
        from kdlab.sweeps.study import ResumableOptunaSweeperImpl  # imports optuna: only when selected

        self.sweeper = ResumableOptunaSweeperImpl(**params)
