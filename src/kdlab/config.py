"""Where the configs live, the typed schema for the keys users sweep most, and isolated composition."""

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hydra import compose, initialize_config_dir
from hydra.core.config_store import ConfigStore
from hydra.core.global_hydra import GlobalHydra
from hydra.core.utils import JobRuntime
from hydra.initialize import get_gh_backup, restore_gh_from_backup
from omegaconf import DictConfig, OmegaConf

# Package data, so an installed wheel composes the same configs; the repo's conf/ is a link to it.
CONFIG_DIR = Path(__file__).resolve().parent / "conf"


@dataclass
class DistillSchema:
    """Typed so that `distill.temperature=abc` fails at composition, before anything runs."""

    temperature: float = 4.0
    losses: dict[str, Any] = field(default_factory=dict)


ConfigStore.instance().store(group="distill", name="schema", node=DistillSchema)


def _safe_name(name: str) -> str:
    from kdlab.validation import check_name

    return check_name(name)


# Used in hydra.run.dir / hydra.sweep.dir, which Hydra resolves before it creates the run folder.
if not OmegaConf.has_resolver("kdlab_name"):
    OmegaConf.register_new_resolver("kdlab_name", _safe_name)


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


def compose_config(
    overrides: list[str] = (), config_name: str = "train", return_hydra_config: bool = False
) -> DictConfig:
    """Compose conf/ outside (or inside) a running Hydra app without disturbing its global state.

    Used to build a teacher's training config from its recipe while a distillation job runs, also
    in DDP child processes whose own Hydra search path points at the run folder, not at conf/.
    """
    saved = get_gh_backup()
    job_name = JobRuntime.instance().conf.get("name")  # initialize_config_dir renames the job "app"
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
            return compose(config_name, overrides=list(overrides), return_hydra_config=return_hydra_config)
    finally:
        restore_gh_from_backup(saved)
        if job_name is not None:
            JobRuntime.instance().set("name", job_name)
