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
        in_channels: int = 1,
        channels: Sequence[int] = (32, 64),
        hidden: int = 128,
        num_classes: int = 10,
        image_size: int = 28,
        activation: str = "relu",
        batch_norm: bool = True,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if not channels or any(int(c) < 1 for c in channels):
            raise ValueError(f"SmallCNN channels must be positive integers, got {list(channels)}.")
        if image_size >> len(channels) < 1:
            raise ValueError(f"SmallCNN halves the image {len(channels)} times: {image_size}px is too small for that.")
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
        side = image_size >> len(channels)  # 28 -> 14 -> 7 with two blocks
        self.neck = nn.Sequential(
            nn.Flatten(),
            nn.Linear(widths[-1] * side * side, hidden),
            make_activation(activation),
            nn.Dropout(dropout),
        )
        self.head = nn.Linear(hidden, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.neck(self.features(x)))
