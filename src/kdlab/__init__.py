"""kdlab: knowledge distillation on PyTorch Lightning + Hydra."""

from importlib.metadata import PackageNotFoundError, version

try:  # one source of truth: the version pyproject.toml gave the installed package
    __version__ = version("kdlab")
except PackageNotFoundError:  # run from a source tree that was never installed
    __version__ = "0+unknown"
