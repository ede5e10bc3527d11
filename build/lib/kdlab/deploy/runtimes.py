"""One calling convention for PyTorch eager, a TorchScript file and an ONNX file under onnxruntime.

Parity and timing treat the three alike: `runner.prepare()` before a block of calls (torch's thread
count is global, onnxruntime's is fixed per session), `runner.feed(x)` converts a uint8 batch to the
runtime's own input once, outside any timing, and `runner(fed)` is the call that is timed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from kdlab.deploy.extras import require

RUNTIMES = ("eager", "torchscript", "onnxruntime")
RUNTIME_OF_FORMAT = {"torchscript": "torchscript", "onnx": "onnxruntime"}
ONNX_INPUT = "pixels"
ONNX_OUTPUT = "logits"


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
    """An onnxruntime CPU session; its thread count is set when the session is made."""

    runtime = "onnxruntime"

    def __init__(self, session: Any, threads: int) -> None:
        self.session, self.threads = session, threads
        self.metadata = dict(session.get_modelmeta().custom_metadata_map)

    def prepare(self) -> None:
        pass

    def feed(self, x: Tensor) -> dict[str, np.ndarray]:
        return {ONNX_INPUT: np.ascontiguousarray(x.numpy())}

    def __call__(self, fed: dict[str, np.ndarray]) -> np.ndarray:
        return self.session.run([ONNX_OUTPUT], fed)[0]

    def logits(self, x: Tensor) -> Tensor:
        return torch.from_numpy(self(self.feed(x))).float()


def onnx_session(path: Path, threads: int) -> Any:
    """A CPU session with `threads` intra-op threads (one inter-op thread: the graphs are a chain)."""
    ort = require("onnxruntime")
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3  # errors only: warnings about unused initialisers are noise here
    return ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])
