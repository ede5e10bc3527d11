"""Multi-layer perceptron; the article's teacher is MLP(hidden=(512, 256)), its student (256, 128)."""

import math
from collections.abc import Sequence

import torch
from torch import nn

from kdlab.models.activations import make_activation


class MLP(nn.Module):
    """Flatten -> [Linear -> activation -> dropout] per hidden size -> Linear head.

    Hidden blocks are `features.0`, `features.1`, ... and the classifier is `head`: feature-based
    loss terms tap layers by these names.
    """

    def __init__(
        self,
        input_shape: Sequence[int],
        num_classes: int,
        hidden: Sequence[int] = (512, 256),
        activation: str = "relu",
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if not hidden or any(int(h) < 1 for h in hidden):
            raise ValueError(f"MLP hidden sizes must be positive integers, got {list(hidden)}.")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"MLP dropout must be in [0, 1), got {dropout}.")
        widths = [math.prod(input_shape), *map(int, hidden)]  # e.g. 1 x 28 x 28 = 784 inputs
        self.features = nn.Sequential(
            *(
                nn.Sequential(nn.Linear(w_in, w_out), make_activation(activation), nn.Dropout(dropout))
                for w_in, w_out in zip(widths[:-1], widths[1:], strict=True)
            )
        )
        self.head = nn.Linear(widths[-1], num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x.flatten(1)))
