"""What a checkpoint must hold for a resumed run to continue exactly: RNG states and the run's identity."""

from __future__ import annotations

import random
from typing import Any

import lightning as L
import numpy as np
import torch

CHECKPOINT_KEY = "kdlab"


def capture_rng() -> dict[str, Any]:
    """Every global RNG, as tensors and plain containers only (checkpoints load with weights_only=True)."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(cached)],
        "python": random.getstate(),
    }


def restore_rng(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    random.setstate(tuple(tuple(x) if isinstance(x, list) else x for x in state["python"]))


class ResumeState(L.Callback):
    """Puts the global RNG states and the run's identity into every checkpoint; restores the RNGs on resume.

    The data order and the augmentation draws have RNGs of their own (saved by the datamodule and its
    loader); this covers the rest, e.g. dropout. They are restored at the start of training, after
    the sanity check, which is where an uninterrupted run stands when it passes that point.
    """

    def __init__(self, identity: dict[str, Any]) -> None:
        self.identity = identity
        self._pending: dict[str, Any] | None = None

    def on_save_checkpoint(self, trainer, pl_module, checkpoint: dict[str, Any]) -> None:
        checkpoint[CHECKPOINT_KEY] = {"identity": self.identity, "rng": capture_rng()}

    def on_load_checkpoint(self, trainer, pl_module, checkpoint: dict[str, Any]) -> None:
        self._pending = checkpoint.get(CHECKPOINT_KEY, {}).get("rng")

    def on_train_start(self, trainer, pl_module) -> None:
        if self._pending is not None:
            restore_rng(self._pending)
            self._pending = None
