"""Deployment of a finished run: export (TorchScript, ONNX), parity on the test set, speed report.

Imports nothing optional: onnx, onnxscript and onnxruntime (`pip install 'kdlab[deploy]'`) are
loaded only when the ONNX format is asked for. A folder is read by kdlab.runfolder (a bad one raises
its RunFolderError), as scripts/evaluate.py reads it.
"""

from kdlab.deploy.bundle import Bundle, DeployNet, RawPixelClassifier, load_bundle
from kdlab.deploy.command import export_run, main
from kdlab.deploy.export import FORMATS, ExportError, open_export, verify_export, write_export
from kdlab.deploy.extras import INSTALL_HINT, MissingDependencyError
from kdlab.deploy.parity import TOLERANCE, Parity, ParityError
from kdlab.deploy.report import DeployResult, render_markdown, write_report
from kdlab.deploy.speed import DEFAULT, QUICK, SpeedSettings, count_flops, measure

__all__ = [
    "DEFAULT",
    "FORMATS",
    "INSTALL_HINT",
    "QUICK",
    "TOLERANCE",
    "Bundle",
    "DeployNet",
    "DeployResult",
    "ExportError",
    "MissingDependencyError",
    "Parity",
    "ParityError",
    "RawPixelClassifier",
    "SpeedSettings",
    "count_flops",
    "export_run",
    "load_bundle",
    "main",
    "measure",
    "open_export",
    "render_markdown",
    "verify_export",
    "write_export",
    "write_report",
]
