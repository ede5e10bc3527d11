"""Read network weights from any file kdlab makes, without ever unpickling arbitrary objects."""

import hashlib
from pathlib import Path

import torch
from torch import nn

# Where a net's weights sit inside a Lightning checkpoint of a kdlab system.
NET_PREFIX = "net."


class CheckpointError(RuntimeError):
    """A checkpoint is missing, unreadable, or does not fit the configured network."""


def sha256_file(path: str | Path) -> str:
    """Content checksum of a weights file: tells two teachers apart even under the same path."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def load_checkpoint(path: str | Path) -> dict:
    """A Lightning checkpoint as plain data, loaded with weights_only=True (never arbitrary pickles)."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # pickle.UnpicklingError for custom objects, or a corrupt file
        raise CheckpointError(
            f"Refused to load {str(path)!r} with torch.load(weights_only=True): {err}. kdlab only reads "
            "checkpoints of tensors and plain containers; it may be corrupt, truncated or not made by kdlab."
        ) from err


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Weights from a TeacherModule/DistillationModule `.ckpt`, a plain state_dict, or `.safetensors`."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(
            f"Checkpoint {str(path)!r} does not exist. Point teacher.ckpt_path at a TeacherModule .ckpt, "
            "a state_dict .pt file or a .safetensors file, or set teacher.ckpt_path=null to train/cache one."
        )
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path), device="cpu")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # pickle.UnpicklingError for custom objects, or a corrupt file
        raise CheckpointError(
            f"Refused to load {str(path)!r} with torch.load(weights_only=True): {err}. kdlab only reads "
            "tensors and plain containers; re-save the weights as a state_dict "
            "(torch.save(net.state_dict(), path)) or as .safetensors."
        ) from err
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):  # a Lightning checkpoint
        state = obj["state_dict"]
        if any(k.startswith(NET_PREFIX) for k in state):
            return {k[len(NET_PREFIX) :]: v for k, v in state.items() if k.startswith(NET_PREFIX)}
        return state
    if isinstance(obj, dict) and all(isinstance(v, torch.Tensor) for v in obj.values()):
        return obj
    raise CheckpointError(f"{str(path)!r} holds a {type(obj).__name__}, not a state_dict or a Lightning checkpoint.")


def load_weights(net: nn.Module, path: str | Path, role: str = "teacher") -> nn.Module:
    """Load `path` into `net`, or say exactly which keys and shapes disagree and how to fix it."""
    state = read_state_dict(path)
    expected = net.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    mismatched = [
        f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(expected[k].shape)}"
        for k in sorted(set(state) & set(expected))
        if state[k].shape != expected[k].shape
    ]
    if missing or unexpected or mismatched:
        lines = [
            f"The {role} checkpoint {str(path)!r} does not match the configured {role} network ({type(net).__name__}).",
            f"missing keys: {missing or 'none'}",
            f"unexpected keys: {unexpected or 'none'}",
            f"shape mismatches: {mismatched or 'none'}",
            (
                f"Fix: configure the net the file was trained as: a teacher preset with that net (conf/teacher/*.yaml, "
                f"e.g. teacher=cnn_small {role}.ckpt_path=...) or its keys (e.g. '{role}.model.hidden=[512,256]'), or "
                f"point {role}.ckpt_path at a file of the configured net."
                if role.startswith("teacher")
                else f"Fix: rebuild the {role} with the net config saved beside its weights, or export the run again."
            ),
        ]
        raise CheckpointError(" ".join(lines))
    net.load_state_dict(state)
    return net
