"""The shipped net's weights as safetensors, with everything needed to use them in the file's metadata.

A `.safetensors` file holds tensors and a flat str -> str header, no code: unlike a pickled `.pt` it
cannot run anything when loaded. The weights are the bare net's `state_dict` (the keys `student.pt`
has, so the file loads into the net built from `student_model.yaml`); the header carries, as JSON:
- `kdlab.model`: the net's config (`_target_`, input shape and classes filled in), to rebuild it;
- `kdlab.data`: the data it was trained on (name, input shape, classes, per-channel mean and std, the
  files' digests), i.e. the normalisation a caller applies to raw pixels: `(x / 255 - mean) / std`;
- `kdlab.digest`: the digest in the TorchScript and ONNX manifests of the same net (kdlab.deploy.export).
`load_safetensors` needs only the file; `verify_safetensors` refuses a file that is not the run's net.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch

from kdlab.data.spec import DataSpec
from kdlab.deploy.export import ExportError, digest
from kdlab.runfolder import FolderNet, RawPixelClassifier, RunFolderError, build_kdlab_net

SUFFIX = ".safetensors"
MODEL_KEY, DATA_KEY, DIGEST_KEY = "kdlab.model", "kdlab.data", "kdlab.digest"


def safetensors_path(folder: Path, role: str) -> Path:
    return folder / f"{role}{SUFFIX}"


def metadata(net: FolderNet) -> dict[str, str]:
    """The file's header: `format: pt` (what Hugging Face's loaders look for) and kdlab's keys, as JSON."""
    from kdlab import __version__

    return {
        "format": "pt",
        MODEL_KEY: json.dumps(net.config, sort_keys=True),
        DATA_KEY: json.dumps(net.spec.to_dict(), sort_keys=True),
        DIGEST_KEY: digest(net),
        "kdlab.role": net.role,
        "kdlab.version": __version__,
    }


def write_safetensors(net: FolderNet, path: Path) -> Path:
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {key: value.detach().cpu().contiguous() for key, value in net.net.state_dict().items()}
    save_file(tensors, str(path), metadata=metadata(net))
    return path


def read_safetensors(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """(tensors, header with kdlab's JSON values decoded); ExportError for a file that is not kdlab's."""
    from safetensors import safe_open

    path = Path(path)
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            header = f.metadata() or {}
            tensors = {key: f.get_tensor(key) for key in f.keys()}  # noqa: SIM118 (safe_open is no mapping)
        decoded = {key: json.loads(header[key]) for key in (MODEL_KEY, DATA_KEY)}
    except KeyError as err:
        raise ExportError(
            f"{path} has no {err} entry in its safetensors metadata: it was not written by `python scripts/export.py`, "
            "so nothing says which net or normalisation it needs. Export the run again."
        ) from err
    except Exception as err:  # a truncated or foreign file: safetensors raises its own error types
        raise ExportError(
            f"{path} cannot be read as safetensors: {type(err).__name__}: {str(err).strip()[:300]}. The file is "
            "corrupt or truncated: delete it and export again with `python scripts/export.py <run folder>`."
        ) from err
    return tensors, {**header, **decoded}


def load_safetensors(path: str | os.PathLike) -> RawPixelClassifier:
    """The net in `path` behind its normalisation (eval mode): raw uint8 pixels [N, C, H, W] in, logits out.

    Only kdlab's own nets are built (the `_target_` in the file must be under kdlab.models).
    """
    tensors, header = read_safetensors(path)
    try:
        net = build_kdlab_net(header[MODEL_KEY], f"{path} ({MODEL_KEY})")
        net.load_state_dict(tensors)
    except (RunFolderError, RuntimeError) as err:  # a foreign _target_, keys or shapes of another net
        raise ExportError(f"{path}: its weights do not build the net its metadata names: {err}") from err
    return RawPixelClassifier(net, DataSpec.from_dict(header[DATA_KEY])).eval().requires_grad_(False)


def verify_safetensors(path: Path, net: FolderNet) -> None:
    """Refuse (ExportError) a file whose tensors, config or normalisation are not exactly `net`'s."""
    tensors, header = read_safetensors(path)
    expected = net.net.state_dict()
    differ = sorted(k for k in {*tensors, *expected} if k not in tensors or k not in expected
                    or not torch.equal(tensors[k], expected[k].cpu()))  # fmt: skip
    problems = [f"tensor(s) {', '.join(differ[:5])}{' ...' if len(differ) > 5 else ''} differ"] if differ else []
    for key, ours in ((MODEL_KEY, net.config), (DATA_KEY, net.spec.to_dict())):
        if header[key] != ours:
            problems.append(f"its {key} metadata is {header[key]!r}, the run's is {ours!r}")
    if problems:
        raise ExportError(
            f"{path} is not this run's {net.role}: {'; '.join(problems)}. Export this run again, or point at the "
            "export folder that belongs to it."
        )
