"""The optional `[deploy]` packages, imported only when a format needs them.

`import kdlab.deploy` must work on a training-only install; the ONNX path alone needs onnx (the
exporter writes through it), onnxscript (torch's torch.export-based ONNX exporter is built on it)
and onnxruntime (to check and time the file).
"""

from __future__ import annotations

import importlib
from types import ModuleType

INSTALL_HINT = "pip install 'kdlab[deploy]'"
# What each format needs beyond torch: TorchScript nothing, ONNX the exporter and the runtime.
NEEDS: dict[str, tuple[str, ...]] = {"torchscript": (), "onnx": ("onnx", "onnxscript", "onnxruntime")}


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
