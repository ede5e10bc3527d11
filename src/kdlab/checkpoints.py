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
            f"Refused to load {str(path)!r} as a checkpoint: {why_unreadable(path, err)}. kdlab reads checkpoints "
            "of tensors and plain containers only (torch.load with weights_only=True). Give a checkpoint a kdlab run "
            "wrote: <run folder>/checkpoints/last.ckpt (after every epoch) or interrupted.ckpt (after a signal)."
        ) from err


def why_unreadable(path: str | Path, err: Exception) -> str:
    """What is wrong with a file torch.load refused, in words (torch's own message can be empty or a number)."""
    size = Path(path).stat().st_size if Path(path).is_file() else 0
    if size == 0:
        return "the file is empty"
    with open(path, "rb") as f:
        head = f.read(4)
    if head[:2] != b"PK" and head[:1] != b"\x80":  # torch.save writes a zip archive (legacy: a pickle)
        return f"it is not a PyTorch file ({size} bytes that are neither a zip archive nor a pickle)"
    return f"{type(err).__name__}: {str(err).strip() or 'unreadable'}"


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
            f"Refused to load {str(path)!r} as weights: {why_unreadable(path, err)}. kdlab reads tensors and plain "
            "containers only (torch.load with weights_only=True): give a TeacherModule .ckpt, a state_dict saved with "
            "torch.save(net.state_dict(), path), or a .safetensors file."
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


def checkpoint_epoch(path: str | Path) -> int | None:
    """The epoch, counted from 1, whose weights a Lightning checkpoint holds (saved at that epoch's end or
    validation); None for a file without one (a state_dict, safetensors). The tensors are mapped, not read."""
    if Path(path).suffix == ".safetensors":
        return None
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # a legacy (non-zip) file cannot be mapped: it has been tested already, it is no error here
        obj = torch.load(path, map_location="cpu", weights_only=True)
    epoch = obj.get("epoch") if isinstance(obj, dict) else None
    return epoch + 1 if isinstance(epoch, int) else None  # Lightning saves the 0-based trainer.current_epoch
