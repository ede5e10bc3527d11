"""Activation lookup by name, so configs say `activation: gelu` instead of a `_target_`."""

from torch import nn

ACTIVATIONS: dict[str, type[nn.Module]] = {
    "relu": nn.ReLU,
    "gelu": nn.GELU,
    "silu": nn.SiLU,
    "tanh": nn.Tanh,
    "leaky_relu": nn.LeakyReLU,
}


def make_activation(name: str) -> nn.Module:
    try:
        return ACTIVATIONS[name]()
    except KeyError:
        raise ValueError(
            f"Unknown activation {name!r}: choose one of {sorted(ACTIVATIONS)} "
            f"(set it with e.g. model.activation=relu)."
        ) from None
