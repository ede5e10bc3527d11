"""kdlab: knowledge distillation on PyTorch Lightning + Hydra."""

__version__ = "0.1.0"
