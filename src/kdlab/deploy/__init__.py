"""Deployment of a finished run: export (TorchScript, ONNX), parity on the test set, speed report.

Imports nothing optional: onnx, onnxscript and onnxruntime (`pip install 'kdlab[deploy]'`) are
loaded only when the ONNX format is asked for. A folder is read by kdlab.runfolder (a bad one raises
its RunFolderError), as scripts/evaluate.py reads it. The parts live in their modules (bundle, export,
runtimes, parity, speed, report, weights, card); the package offers the command and the safetensors loader.
"""

from kdlab.deploy.command import export_run, main
from kdlab.deploy.weights import load_safetensors

__all__ = ["export_run", "load_safetensors", "main"]
