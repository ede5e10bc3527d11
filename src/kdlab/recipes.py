"""What makes two training runs "the same recipe": the key behind the teacher cache and baselines."""

import hashlib
import json
from typing import Any

from omegaconf import DictConfig

from kdlab.config import plain

# Data keys that say where data lives or how it is loaded, not what is learnt from it.
DATA_LOCATION_KEYS = frozenset({"data_dir", "num_workers", "mirrors", "pypi_package", "verify", "_target_"})
# Trainer keys that change what is learnt (hardware, logging and progress keys do not).
TRAINER_RECIPE_KEYS = (
    "max_epochs",
    "precision",
    "limit_train_batches",
    "accumulate_grad_batches",
    "gradient_clip_val",
)


def recipe_of(cfg: DictConfig) -> dict[str, Any]:
    """The student-side recipe: net, data (not its location), optimiser, schedule, run length."""
    data = {k: plain(cfg.data[k]) for k in cfg.data if k not in DATA_LOCATION_KEYS}  # location unresolved
    return {
        "model": plain(cfg.model),
        "data": data,
        "optimizer": plain(cfg.optimizer),
        "scheduler": plain(cfg.scheduler),
        "trainer": {k: plain(cfg.trainer.get(k)) for k in TRAINER_RECIPE_KEYS},
    }


def digest(obj: Any, length: int = 16) -> str:
    """A short, stable content hash of plain data."""
    blob = json.dumps(obj, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:length]
