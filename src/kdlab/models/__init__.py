"""Plain `nn.Module` classifiers: no Lightning here, so they load anywhere.

Every kdlab net takes `input_shape` (C, H, W) and `num_classes`; configs leave them out and
`net_config` fills them from the data's spec, so one model YAML serves every dataset.
"""

from collections.abc import Mapping
from typing import Any

from torch import nn

from kdlab.models.cnn import SmallCNN
from kdlab.models.mlp import MLP


def net_config(config: Mapping[str, Any], input_shape, num_classes: int, key: str = "model") -> dict[str, Any]:
    """A net's `_target_` config with the data's input shape and class count filled in (plain data).

    A config that sets either to something else is refused: the net could not read this data.
    """
    config = dict(config)
    for name, value in (("input_shape", [int(d) for d in input_shape]), ("num_classes", int(num_classes))):
        given = config.get(name)
        if given is not None and (list(given) if name == "input_shape" else given) != value:
            raise ValueError(
                f"{key}.{name}={given!r}, but the data gives {value!r}. Nets take their input shape and class "
                f"count from the data (data.input_shape, data.classes): drop {key}.{name}."
            )
        config[name] = value
    return config


def build_net(config: Mapping[str, Any], input_shape=None, num_classes: int | None = None) -> nn.Module:
    """Instantiate a net config; `input_shape`/`num_classes` fill it (see net_config) when given."""
    from hydra.utils import instantiate

    if input_shape is not None:
        config = net_config(config, input_shape, num_classes)
    return instantiate(dict(config), _convert_="all")


__all__ = ["MLP", "SmallCNN", "build_net", "net_config"]
