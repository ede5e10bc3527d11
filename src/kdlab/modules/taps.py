"""Capture intermediate outputs by module name with forward hooks, so nets need no special API."""

from functools import partial

import torch
from torch import nn


class FeatureTap:
    """Records the outputs of the named submodules of `net` on every forward pass."""

    def __init__(self, net: nn.Module, names: set[str] | tuple[str, ...], role: str) -> None:
        self.features: dict[str, torch.Tensor] = {}
        available = dict(net.named_modules())
        for name in sorted(set(names)):
            if name not in available:
                raise ValueError(
                    f"A loss term asks for {role} layer {name!r}, which {type(net).__name__} does not have. "
                    f"Available layers: {[n for n in available if n]}."
                )
            available[name].register_forward_hook(partial(self._record, name))

    def _record(self, name: str, module: nn.Module, args, output: torch.Tensor) -> None:
        self.features[name] = output

    def pop(self) -> dict[str, torch.Tensor]:
        """This pass's features; cleared so stale tensors (and their graphs) are not kept alive."""
        features, self.features = self.features, {}
        return features
