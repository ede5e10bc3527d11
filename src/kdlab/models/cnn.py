"""LeNet-style CNN: a strong, cheap MNIST teacher (99%+) with a different inductive bias to an MLP."""

from collections.abc import Sequence

import torch
from torch import nn

from kdlab.models.activations import make_activation


class SmallCNN(nn.Module):
    """[Conv3x3 -> (BN) -> act -> MaxPool2] per channel width -> Flatten -> Linear -> act -> head.

    Conv blocks are `features.0`, `features.1`, ...; the penultimate layer is `neck`, the classifier
    `head`.
    """

    def __init__(
        self,
        input_shape: Sequence[int],
        num_classes: int,
        channels: Sequence[int] = (32, 64),
        hidden: int = 128,
        activation: str = "relu",
        batch_norm: bool = True,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if not channels or any(int(c) < 1 for c in channels):
            raise ValueError(f"SmallCNN channels must be positive integers, got {list(channels)}.")
        in_channels, height, width = (int(d) for d in input_shape)
        if min(height, width) >> len(channels) < 1:
            raise ValueError(
                f"SmallCNN halves the image {len(channels)} times: {height}x{width} is too small for that."
            )
        widths = [in_channels, *map(int, channels)]
        self.features = nn.Sequential(
            *(
                nn.Sequential(
                    nn.Conv2d(c_in, c_out, 3, padding=1, bias=not batch_norm),
                    nn.BatchNorm2d(c_out) if batch_norm else nn.Identity(),
                    make_activation(activation),
                    nn.MaxPool2d(2),
                )
                for c_in, c_out in zip(widths[:-1], widths[1:], strict=True)
            )
        )
        h, w = height >> len(channels), width >> len(channels)  # 28 -> 14 -> 7 with two blocks
        self.neck = nn.Sequential(
            nn.Flatten(),
            nn.Linear(widths[-1] * h * w, hidden),
            make_activation(activation),
            nn.Dropout(dropout),
        )
        self.head = nn.Linear(hidden, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.neck(self.features(x)))
