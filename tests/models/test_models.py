"""The nets: shapes, the article's parameter counts, layer names the feature taps rely on."""

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from kdlab.config import CONFIG_DIR
from kdlab.models import MLP, SmallCNN


def n_params(net: torch.nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())


def test_article_pair_from_their_configs():
    teacher = instantiate(OmegaConf.load(CONFIG_DIR / "model" / "mlp_512_256.yaml"))
    student = instantiate(OmegaConf.load(CONFIG_DIR / "model" / "mlp_256_128.yaml"))
    # 784*512+512 + 512*256+256 + 256*10+10 and 784*256+256 + 256*128+128 + 128*10+10
    assert n_params(teacher) == 535_818
    assert n_params(student) == 235_146


@pytest.mark.parametrize("net", [MLP(), MLP(hidden=(32,), activation="gelu", dropout=0.2), SmallCNN()])
def test_logits_shape_for_image_batches(net):
    assert net(torch.randn(5, 1, 28, 28)).shape == (5, 10)


def test_mlp_layer_names_and_widths():
    names = dict(MLP(hidden=(64, 32)).named_modules())
    assert {"features.0", "features.1", "head"} <= set(names)
    assert names["features.1"][0].out_features == 32 and names["head"].in_features == 32


def test_cnn_layer_names_and_feature_shapes():
    net = SmallCNN(channels=(4, 8), hidden=16)
    seen = {}
    for name in ("features.0", "features.1", "neck"):
        net.get_submodule(name).register_forward_hook(lambda m, a, out, name=name: seen.__setitem__(name, out.shape))
    net(torch.zeros(2, 1, 28, 28))
    assert seen == {"features.0": (2, 4, 14, 14), "features.1": (2, 8, 7, 7), "neck": (2, 16)}


def test_dropout_is_active_only_in_training():
    net = MLP(hidden=(64,), dropout=0.5)
    x = torch.randn(4, 784)
    without_dropout = torch.nn.Sequential(*(m for m in net.features[0] if not isinstance(m, torch.nn.Dropout)))
    expected = net.head(without_dropout(x))
    assert torch.equal(net.eval()(x), expected)  # eval: dropout is the identity
    torch.manual_seed(0)
    trained = net.train()(x)
    assert not torch.allclose(trained, expected)  # train: units are dropped (and the rest scaled by 2)


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda: MLP(hidden=()), "hidden sizes"),
        (lambda: MLP(hidden=(0,)), "hidden sizes"),
        (lambda: MLP(dropout=1.0), "dropout"),
        (lambda: MLP(activation="swishy"), "Unknown activation 'swishy'"),
        (lambda: SmallCNN(channels=()), "channels"),
        (lambda: SmallCNN(channels=(4, 4, 4, 4, 4), image_size=28), "too small"),
    ],
)
def test_bad_arguments_say_what_is_wrong(make, match):
    with pytest.raises(ValueError, match=match):
        make()
