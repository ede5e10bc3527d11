"""The `logger` group's trackers: refused at the start when their package is missing, built with the run's name.

`logger=[tensorboard,mlflow]` selects several; each is a Lightning logger. TensorBoard ships with kdlab,
the others are extras (`pip install 'kdlab[mlflow]'`), so a missing one is said before any data is read or
any teacher trains, not at the first logged value minutes later. A tracker's run is named after the run
folder, so the MLflow or W&B entry and the folder holding metrics.json (the record) find each other.
"""

from __future__ import annotations

import importlib.util
import urllib.error
import urllib.request
from pathlib import Path

from hydra.utils import instantiate
from lightning.pytorch.loggers import Logger
from omegaconf import DictConfig, OmegaConf

from kdlab.config import ConfigError

# A logger class -> the package it imports and the kdlab extra that installs it.
EXTRAS = {
    "lightning.pytorch.loggers.MLFlowLogger": ("mlflow", "mlflow"),
    "lightning.pytorch.loggers.WandbLogger": ("wandb", "wandb"),
}
# A logger class -> its argument naming the tracker's run; left null in conf/logger/, it gets the run folder.
RUN_NAME_ARGS = {
    "lightning.pytorch.loggers.MLFlowLogger": "run_name",
    "lightning.pytorch.loggers.WandbLogger": "name",
}


def _selected(cfg: DictConfig) -> dict[str, DictConfig]:
    return {key: conf for key, conf in (cfg.get("logger") or {}).items() if conf is not None}


def check_tracker_packages(cfg: DictConfig) -> None:
    """Raise ConfigError when a selected tracker's package is not installed (checked without importing it)."""
    for key, conf in _selected(cfg).items():
        target = OmegaConf.select(conf, "_target_", default="")
        if target in EXTRAS and importlib.util.find_spec(EXTRAS[target][0]) is None:
            package, extra = EXTRAS[target]
            raise ConfigError(
                f"logger.{key} ({target.rsplit('.', 1)[-1]}) needs the {package} package, which is not installed "
                f"in this environment: install it with `pip install 'kdlab[{extra}]'` (`pip install -e '.[{extra}]'` "
                f"in a clone), or leave {key} out of logger=[...] (TensorBoard and csv need nothing more)."
            )


def check_tracking_servers(cfg: DictConfig, timeout_s: float = 10.0) -> None:
    """Raise ConfigError when a selected MLflow logger's http(s) tracking server does not answer.

    Lightning's MLFlowLogger first talks to the server at fit start, after the data is read and the teachers
    are trained, and MLflow's client retries for minutes: an address typed wrong would cost all of that.
    Any HTTP answer (MLflow's `/health` says OK) counts as up; only no answer at all is refused.
    """
    for key, conf in _selected(cfg).items():
        uri = str(OmegaConf.select(conf, "tracking_uri", default="") or "")
        if not uri.startswith(("http://", "https://")):
            continue
        try:
            urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout_s).close()
        except urllib.error.HTTPError:
            continue  # the server answered, if not as MLflow's own does
        except (urllib.error.URLError, OSError) as err:
            reason = getattr(err, "reason", err)
            raise ConfigError(
                f"logger.{key}.tracking_uri={uri} does not answer ({reason}), so nothing could be tracked there: "
                f"start the server (e.g. `mlflow server --host 127.0.0.1 --port 5000`), correct the address "
                f"(logger.{key}.tracking_uri=... or $MLFLOW_TRACKING_URI), or track into a local store with "
                f"logger.{key}.tracking_uri=sqlite:///outputs/mlflow.db."
            ) from None


def tracker_run_name(cfg: DictConfig, folder: Path) -> str:
    """The run folder under outputs/<name>/ (`runs/<time>`, `multirun/<time>/<job>`), or its own name elsewhere.

    A sweep job's folder alone is a number, the same in every sweep; the path under outputs/<name>/ is unique.
    """
    base = (Path(cfg.paths.log_dir) / cfg.name).resolve()
    folder = folder.resolve()
    return folder.relative_to(base).as_posix() if folder.is_relative_to(base) else folder.name


def build_loggers(cfg: DictConfig, folder: Path) -> list[Logger]:
    """The selected loggers, writing into `folder` (through `paths.output_dir`), trackers named after it."""
    loggers = []
    for conf in _selected(cfg).values():
        arg = RUN_NAME_ARGS.get(OmegaConf.select(conf, "_target_", default=""))
        named = {arg: tracker_run_name(cfg, folder)} if arg and conf.get(arg) is None else {}
        loggers.append(instantiate(conf, **named))
    return loggers
