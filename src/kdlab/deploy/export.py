"""Write a net as TorchScript or ONNX (raw uint8 in, logits out, any batch size) and prove a file is it.

Exporters. TorchScript comes from `torch.jit.script`, not `trace`: scripting keeps the code, so no
shape seen while tracing is baked in. (torch 2.13 marks TorchScript deprecated; it still loads in
C++ libtorch without Python, which is why it is offered, but ONNX is the long-lived format.)
ONNX comes from torch's torch.export-based exporter (`dynamo=True`, the default since torch 2.9; it
needs onnxscript). The older TorchScript-based exporter (`dynamo=False`) still works in torch 2.13
and exports faster (a fraction of a second against seconds per net), but it warns that it is
deprecated and rides on TorchScript, itself deprecated: it would break on a routine torch upgrade.
The batch axis is declared dynamic (`Dim("batch")`) and the example batch has 2 images, because
torch.export specialises a size-1 dimension to a constant. Weights are stored inside the .onnx
(`external_data=False`): one self-contained file to copy and to checksum.

Every export carries a manifest (the net's weight digest; its data's name, classes, per-channel mean and
std) so a file can be matched to its net later; `verify_export` refuses a file that does not load,
names another net, or does not reproduce the net's logits on a probe batch.
"""

from __future__ import annotations

import hashlib
import json
import logging
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from kdlab.deploy.parity import ParityError, compare
from kdlab.deploy.runtimes import ONNX_INPUT, ONNX_OUTPUT, MissingDependencyError, OnnxRunner, TorchRunner, require
from kdlab.runfolder import FolderNet

FORMATS = ("torchscript", "onnx")
SUFFIXES = {"torchscript": ".torchscript.pt", "onnx": ".onnx"}
MANIFEST_KEY = "kdlab.deploy"  # the ONNX metadata_props key
MANIFEST_FILE = MANIFEST_KEY + ".json"  # the TorchScript extra file
EXAMPLE_BATCH = 2  # not 1: torch.export would fix a size-1 batch axis to 1


@contextmanager
def _jit_quietly() -> Iterator[None]:
    """torch 2.13 warns on every torch.jit.script/load that TorchScript is deprecated; the report says it once."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*torch\.jit\..* is deprecated", category=DeprecationWarning)
        yield


class ExportError(RuntimeError):
    """An export file that is unreadable, made from another net, or that computes something else."""


def export_path(folder: Path, role: str, fmt: str) -> Path:
    return folder / f"{role}{SUFFIXES[fmt]}"


def digest(net: FolderNet) -> str:
    """sha256 over the weights and the normalisation: what an export must have been made from."""
    h = hashlib.sha256(f"mean={list(net.spec.mean)!r};std={list(net.spec.std)!r}".encode())
    for key, value in sorted(net.net.state_dict().items()):
        h.update(f"{key}:{value.dtype}:{tuple(value.shape)}".encode())
        h.update(value.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def manifest(net: FolderNet) -> dict[str, Any]:
    """Written into every export, so a file can later be matched to the net it claims to be."""
    from kdlab import __version__

    spec = net.spec
    return {
        "role": net.role,
        "net": net.config.get("_target_", type(net.net).__name__),
        "digest": digest(net),
        "data": spec.name,
        "mean": list(spec.mean),
        "std": list(spec.std),
        "classes": list(spec.classes),
        "input": f"uint8[N,{','.join(map(str, spec.input_shape))}] raw pixels 0..255",
        "output": f"float32[N,{spec.num_classes}] logits",
        "kdlab": __version__,
    }


def write_export(net: FolderNet, fmt: str, path: Path) -> Path:
    """Write `net` (normalisation included) to `path` in format `fmt`, manifest embedded."""
    if fmt not in FORMATS:
        raise ValueError(f"Unknown export format {fmt!r}; choose from {', '.join(FORMATS)}.")
    path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(manifest(net), sort_keys=True)
    if fmt == "torchscript":
        with _jit_quietly():
            torch.jit.script(net.model).save(str(path), _extra_files={MANIFEST_FILE: text})
    else:
        _write_onnx(net, path, text)
    return path


def _write_onnx(net: FolderNet, path: Path, manifest: str) -> None:
    require("onnx")
    require("onnxscript")
    example = torch.zeros(EXAMPLE_BATCH, *net.spec.input_shape, dtype=torch.uint8)
    # The exporter logs that torchvision's ops are not registered and warns about torch internals
    # (LeafSpec); neither concerns these nets, and they would bury the command's own output.
    registration = logging.getLogger("torch.onnx._internal.exporter._registration")
    level = registration.level
    registration.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            warnings.simplefilter("ignore", DeprecationWarning)
            program = torch.onnx.export(net.model, (example,), dynamo=True, input_names=[ONNX_INPUT],
                                        output_names=[ONNX_OUTPUT], verbose=False,
                                        dynamic_shapes=({0: torch.export.Dim("batch")},))  # fmt: skip
    finally:
        registration.setLevel(level)
    program.model.metadata_props[MANIFEST_KEY] = manifest
    program.save(str(path), external_data=False)


def open_export(path: Path, fmt: str, threads: int | None = None) -> TorchRunner | OnnxRunner:
    """Load an export for running; an unreadable file raises ExportError saying so."""
    threads = threads or torch.get_num_threads()
    if not path.is_file():
        raise ExportError(f"No {fmt} export at {path}. Create it with `python scripts/export.py <run folder>`.")
    try:
        if fmt == "torchscript":
            extra = {MANIFEST_FILE: ""}
            with _jit_quietly():
                module = torch.jit.load(str(path), map_location="cpu", _extra_files=extra)
            text = extra[MANIFEST_FILE]
            text = text.decode("utf-8", "replace") if isinstance(text, bytes) else text
            return TorchRunner(module, "torchscript", threads, {MANIFEST_KEY: text})
        if fmt == "onnx":
            return OnnxRunner(path, threads)
    except MissingDependencyError:
        raise
    except Exception as err:  # a truncated zip, a damaged protobuf, ...: each runtime raises its own type
        raise ExportError(
            f"{path} cannot be loaded as {fmt}: {type(err).__name__}: {str(err).strip()[:300]}. The file is corrupt "
            "or truncated (or not a model file). Delete it and export again: `python scripts/export.py <run folder>`."
        ) from err
    raise ValueError(f"Unknown export format {fmt!r}; choose from {', '.join(FORMATS)}.")


def read_manifest(runner: TorchRunner | OnnxRunner) -> dict[str, Any] | None:
    """The manifest kdlab embedded in a loaded export, or None when the file has none."""
    try:
        manifest = json.loads(runner.metadata.get(MANIFEST_KEY) or "null")
    except json.JSONDecodeError:
        return None
    return manifest if isinstance(manifest, dict) else None


def probe_batch(input_shape: tuple[int, ...], n: int = 7) -> torch.Tensor:
    """Fixed images that exercise the whole pixel range: random ones, one black, one white.

    7 images: not the export's example batch of 2, so a batch axis fixed by mistake shows here.
    """
    images = torch.randint(0, 256, (n, *input_shape), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    images[-2], images[-1] = 0, 255
    return images


def verify_export(
    path: Path, fmt: str, net: FolderNet, threads: int | None = None, probe: bool = True
) -> TorchRunner | OnnxRunner:
    """Refuse (ExportError) a file that does not load, names another net or misses the net's logits.

    probe=False skips the probe batch, for a caller that checks every test image next (and wants
    a failure there reported with the test-set numbers). Returns the loaded runner.
    """
    runner = open_export(path, fmt, threads)
    claimed, expected = read_manifest(runner), digest(net)
    if claimed is None:
        raise ExportError(
            f"{path} carries no kdlab manifest, so nothing says which net it holds. Export files made by "
            "`python scripts/export.py` carry one; export again rather than checking a foreign file."
        )
    if claimed.get("digest") != expected:
        raise ExportError(
            f"{path} was exported from another net: its manifest names {claimed.get('role')!r} "
            f"{claimed.get('net')!r} with weights digest {str(claimed.get('digest'))[:12]}..., but this run's "
            f"{net.role} has digest {expected[:12]}... (mean {list(net.spec.mean)}, std {list(net.spec.std)}). "
            "Export this run again, or point at the export folder that belongs to it."
        )
    if not probe:
        return runner
    images = probe_batch(net.spec.input_shape)
    with torch.inference_mode():
        reference = net.model(images)
    try:
        exported = runner.logits(images)
    except Exception as err:
        raise ExportError(f"{path} loads but fails on a batch of {len(images)} raw uint8 images: {err}") from err
    try:
        check = compare(net.role, fmt, reference, exported, reference.argmax(1))
    except ParityError as err:
        raise ExportError(str(err)) from err
    if not check.passed:
        raise ExportError(
            f"{path} names this run's {net.role} but does not reproduce its logits on a probe batch of "
            f"{len(images)} images: max |logit diff| {check.max_abs_diff:.3g} (limit {check.limit:.3g}), argmax "
            f"agreement {check.agreement:.0%}. The file was altered after export; export again."
        )
    return runner
