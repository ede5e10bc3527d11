"""Where the configs live, the typed schema for the keys users sweep most, composition, and what kind of run it is."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hydra import compose, initialize_config_dir
from hydra.core.config_store import ConfigStore
from hydra.core.global_hydra import GlobalHydra
from omegaconf import DictConfig, OmegaConf

# Package data, so an installed wheel composes the same configs; the repo's conf/ is a link to it.
CONFIG_DIR = Path(__file__).resolve().parent / "conf"
SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.=,+-]*$")


class ConfigError(ValueError):
    """A config value that cannot work, found before any training."""


@dataclass
class DistillSchema:
    """Typed so that `distill.temperature=abc` fails at composition, before anything runs."""

    temperature: float = 4.0
    losses: dict[str, Any] = field(default_factory=dict)


ConfigStore.instance().store(group="distill", name="schema", node=DistillSchema)


def check_name(name: object) -> str:
    """`name` names a folder under outputs/: one plain path component, never `..` or a path."""
    if not isinstance(name, str) or not SAFE_NAME.match(name) or ".." in name:
        raise ConfigError(
            f"name={name!r} cannot name a run folder: it must be one plain folder name (letters, digits and "
            "_ . = , + -; no '/', no '..', not starting with '.'), because run folders live under "
            "outputs/<name>/. Use e.g. name=my_experiment."
        )
    return name


# Used in hydra.run.dir / hydra.sweep.dir, which Hydra resolves before it creates the run folder.
if not OmegaConf.has_resolver("kdlab_name"):
    OmegaConf.register_new_resolver("kdlab_name", check_name)


def plain(node: Any) -> Any:
    """Resolved plain containers (config nodes and nested mappings); anything else as it is.

    Checkpoints, hashes and hparams then hold no OmegaConf objects (checkpoints load with
    weights_only, hashes do not depend on how a value was written).
    """
    if OmegaConf.is_config(node):
        return OmegaConf.to_container(node, resolve=True)
    if isinstance(node, Mapping):
        return {key: plain(value) for key, value in node.items()}
    return node


def compose_config(overrides: list[str] = (), return_hydra_config: bool = False) -> DictConfig:
    """conf/train.yaml with `overrides`, through Hydra's public compose API.

    Inside a running kdlab app (e.g. a teacher's recipe composed for provisioning) Hydra is initialised
    with conf/ already and `compose` reads it; outside one (tests, scripts) conf/ is initialised for the call.
    """
    if GlobalHydra.instance().is_initialized():
        return compose("train", overrides=list(overrides), return_hydra_config=return_hydra_config)
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        return compose("train", overrides=list(overrides), return_hydra_config=return_hydra_config)


# -- what kind of run a config is: asked here and nowhere else ---------------------------------------------
def is_distillation(cfg: DictConfig) -> bool:
    """A run that distils a frozen teacher (module=distill), as opposed to training on the labels alone."""
    return str(OmegaConf.select(cfg, "module._target_", default="")).endswith("DistillationModule")


def is_ensemble(cfg: DictConfig) -> bool:
    """A distillation run whose teacher is a list of members (teacher=ensemble)."""
    return is_distillation(cfg) and OmegaConf.select(cfg, "teacher.members", default=None) is not None


def teacher_configs(cfg: DictConfig) -> list[tuple[str, DictConfig]]:
    """(config key, teacher config) of each teacher a run distils from: one, an ensemble's members, or none."""
    if is_ensemble(cfg):
        return [(f"teacher.members.{i}", member) for i, member in enumerate(cfg.teacher.members)]
    return [("teacher", cfg.teacher)] if is_distillation(cfg) else []
