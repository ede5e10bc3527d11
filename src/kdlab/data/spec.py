"""The data contract: what every datamodule promises downstream (a `DataSpec`, its splits as `Split`s),
and what a dataset's reader hands the datamodule (`RawSplits`).

Models size themselves from `input_shape` and `classes`, a teacher carries the spec it was trained on
(so it is fed inputs normalised its own way), and the teacher-output cache, export, figures and the
omitted-class analysis read it instead of assuming MNIST. Only a dataset's own module knows its
files; the spec names the content it read by `fingerprint`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from torch import Tensor


@dataclass(frozen=True)
class DataSpec:
    name: str  # the dataset, as its config group option names it: mnist, fashion_mnist, digits, cifar10, ...
    input_shape: tuple[int, ...]  # (channels, height, width) of one image, as the nets receive it
    classes: tuple[str, ...]  # class names, by label
    mean: tuple[float, ...]  # per channel, on the 0..1 pixel scale: x = (pixels / 255 - mean) / std
    std: tuple[float, ...]
    fingerprint: Mapping[str, str] = field(default_factory=dict)  # content digest of each part read

    def __post_init__(self) -> None:
        object.__setattr__(self, "input_shape", tuple(int(d) for d in self.input_shape))
        object.__setattr__(self, "classes", tuple(str(c) for c in self.classes))
        object.__setattr__(self, "mean", tuple(float(m) for m in as_channels(self.mean, self.input_shape)))
        object.__setattr__(self, "std", tuple(float(s) for s in as_channels(self.std, self.input_shape)))
        object.__setattr__(self, "fingerprint", dict(self.fingerprint))
        if len(self.input_shape) != 3 or min(self.input_shape) < 1:
            raise ValueError(f"DataSpec: input_shape must be (channels, height, width), got {self.input_shape}")
        if len(self.classes) < 2:
            raise ValueError(f"DataSpec: a classifier needs at least 2 classes, got {list(self.classes)}")
        if not all(s > 0 for s in self.std):
            raise ValueError(f"DataSpec: every std must be > 0, got {list(self.std)}")

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def normalization(self) -> dict[str, list[float]]:
        return {"mean": list(self.mean), "std": list(self.std)}

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "input_shape": list(self.input_shape), "classes": list(self.classes),
                "mean": list(self.mean), "std": list(self.std)}  # fmt: skip

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> DataSpec:
        return cls(**{key: data[key] for key in ("name", "input_shape", "classes", "mean", "std", "fingerprint")})

    def incompatibilities(self, other: DataSpec) -> list[str]:
        """What keeps a net trained on `self` from reading `other`'s images: `key: self -> other`."""
        return [
            f"{key}: {getattr(self, key)!r} -> {getattr(other, key)!r}"
            for key in ("input_shape", "classes")
            if getattr(self, key) != getattr(other, key)
        ]


def as_channels(values: float | Sequence[float], input_shape: Sequence[int]) -> list[float]:
    """A per-channel mean or std: one value per channel, or one value for all of them."""
    values = [values] if isinstance(values, (int, float)) else list(values)
    channels = int(input_shape[0])
    if len(values) == 1:
        return values * channels
    if len(values) != channels:
        raise ValueError(f"{len(values)} normalisation values for {channels} channel(s): give one per channel or one")
    return values


@dataclass(frozen=True)
class Split:
    """One split in memory: images uint8 [N, C, H, W] and labels int64 [N]."""

    x: Tensor
    y: Tensor

    def __len__(self) -> int:
        return len(self.y)


@dataclass(frozen=True)
class RawSplits:
    """What a dataset's reader returns: its training and test files, and a digest of each part read."""

    train: Split
    test: Split
    fingerprint: dict[str, str]
