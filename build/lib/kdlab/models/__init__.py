"""Plain `nn.Module` classifiers: no Lightning here, so they load anywhere."""

from kdlab.models.cnn import SmallCNN
from kdlab.models.mlp import MLP

__all__ = ["MLP", "SmallCNN"]
