"""One calling convention for PyTorch eager, a TorchScript file and an ONNX file under onnxruntime.

Parity and timing treat the three alike: `runner.prepare()` before a block of calls (torch's thread
count is global, onnxruntime's is fixed per session), `runner.feed(x)` converts a uint8 batch to the
runtime's own input once, outside any timing, and `runner(fed)` is the call that is timed.

`import kdlab.deploy` must work on a training-only install: the ONNX path alone needs the `[deploy]`
extra, onnx (the exporter writes through it), onnxscript (torch's torch.export-based ONNX exporter is
built on it) and onnxruntime (to check and time the file), imported only when ONNX is asked for.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

INSTALL_HINT = "pip install 'kdlab[deploy]'"
NEEDS = {"torchscript": (), "onnx": ("onnx", "onnxscript", "onnxruntime")}  # each format's packages beyond torch
ONNX_INPUT, ONNX_OUTPUT = "pixels", "logits"


class MissingDependencyError(ImportError):
    """A format was asked for whose packages are not installed."""


def require(package: str, why: str = "ONNX export") -> ModuleType:
    """Import `package`, or say which extra installs it."""
    try:
        return importlib.import_module(package)
    except ImportError as err:
        raise MissingDependencyError(
            f"{why} needs the Python package {package!r}, which is not installed ({err}). Install kdlab's "
            f"deploy extra with `{INSTALL_HINT}` (onnx, onnxscript, onnxruntime), or export TorchScript only "
            "with `--formats torchscript`."
        ) from err


def require_formats(formats: tuple[str, ...]) -> None:
    """Fail before any work starts when a requested format's packages are missing."""
    for fmt in formats:
        for package in NEEDS.get(fmt, ()):
            require(package, why=f"The {fmt} format")


class TorchRunner:
    """An nn.Module or a loaded ScriptModule, called under inference_mode with `threads` intra-op threads."""

    def __init__(self, module: nn.Module, runtime: str, threads: int, metadata: dict[str, str] | None = None) -> None:
        self.module, self.runtime, self.threads = module, runtime, threads
        self.metadata = metadata or {}  # what the file carried beside the model (the kdlab manifest)

    def prepare(self) -> None:
        torch.set_num_threads(self.threads)

    def feed(self, x: Tensor) -> Tensor:
        return x.contiguous()

    def __call__(self, fed: Tensor) -> Tensor:
        with torch.inference_mode():
            return self.module(fed)

    def logits(self, x: Tensor) -> Tensor:
        self.prepare()
        return self(self.feed(x)).float()


class OnnxRunner:
    """An onnxruntime CPU session with `threads` intra-op threads (one inter-op thread: the graphs are a chain)."""

    runtime = "onnxruntime"

    def __init__(self, path: Path, threads: int) -> None:
        ort = require("onnxruntime")
        options = ort.SessionOptions()
        options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
        options.log_severity_level = 3  # errors only: warnings about unused initialisers are noise here
        self.session = ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])
        self.threads, self.metadata = threads, dict(self.session.get_modelmeta().custom_metadata_map)

    def prepare(self) -> None:
        pass

    def feed(self, x: Tensor) -> dict[str, np.ndarray]:
        return {ONNX_INPUT: np.ascontiguousarray(x.numpy())}

    def __call__(self, fed: dict[str, Any]) -> np.ndarray:
        return self.session.run([ONNX_OUTPUT], fed)[0]

    def logits(self, x: Tensor) -> Tensor:
        return torch.from_numpy(self(self.feed(x))).float()
