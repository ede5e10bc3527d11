"""The nets: shapes, the article's parameter counts, layer names the feature taps rely on, and sizing from the data."""

import pytest
import torch
from omegaconf import OmegaConf

from kdlab.config import CONFIG_DIR
from kdlab.models import MLP, SmallCNN, build_net, net_config

pytestmark = pytest.mark.unit

MNIST = dict(input_shape=(1, 28, 28), num_classes=10)


def n_params(net: torch.nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())


def _model_yaml(name):
    return OmegaConf.to_container(OmegaConf.load(CONFIG_DIR / "model" / f"{name}.yaml"))


def test_article_pair_from_their_configs():
    teacher = build_net(_model_yaml("mlp_512_256"), (1, 28, 28), 10)
    student = build_net(_model_yaml("mlp_256_128"), (1, 28, 28), 10)
    # 784*512+512 + 512*256+256 + 256*10+10 and 784*256+256 + 256*128+128 + 128*10+10
    assert n_params(teacher) == 535_818
    assert n_params(student) == 235_146


def test_model_configs_leave_the_sizes_to_the_data():
    for path in sorted((CONFIG_DIR / "model").glob("*.yaml")):
        assert not {"input_shape", "num_classes", "in_features", "image_size"} & set(OmegaConf.load(path)), path.name


@pytest.mark.parametrize(
    "make",
    [
        lambda shape, k: MLP(shape, k),
        lambda shape, k: MLP(shape, k, hidden=(32,), activation="gelu", dropout=0.2),
        lambda shape, k: SmallCNN(shape, k),
    ],
    ids=["mlp", "mlp-gelu", "cnn"],
)
@pytest.mark.parametrize(("shape", "classes"), [((1, 28, 28), 10), ((3, 32, 32), 100), ((1, 8, 8), 10)])
def test_logits_shape_for_image_batches(make, shape, classes):
    assert make(shape, classes)(torch.randn(5, *shape)).shape == (5, classes)


def test_mlp_input_width_is_the_image_size():
    assert MLP((3, 32, 32), 10, hidden=(8,)).features[0][0].in_features == 3 * 32 * 32
    assert SmallCNN((3, 32, 32), 10, channels=(4,)).features[0][0].in_channels == 3


def test_mlp_layer_names_and_widths():
    names = dict(MLP(**MNIST, hidden=(64, 32)).named_modules())
    assert {"features.0", "features.1", "head"} <= set(names)
    assert names["features.1"][0].out_features == 32 and names["head"].in_features == 32


def test_cnn_layer_names_and_feature_shapes():
    net = SmallCNN(**MNIST, channels=(4, 8), hidden=16)
    seen = {}
    for name in ("features.0", "features.1", "neck"):
        net.get_submodule(name).register_forward_hook(lambda m, a, out, name=name: seen.__setitem__(name, out.shape))
    net(torch.zeros(2, 1, 28, 28))
    assert seen == {"features.0": (2, 4, 14, 14), "features.1": (2, 8, 7, 7), "neck": (2, 16)}


def test_dropout_is_active_only_in_training():
    net = MLP(**MNIST, hidden=(64,), dropout=0.5)
    x = torch.randn(4, 784)
    without_dropout = torch.nn.Sequential(*(m for m in net.features[0] if not isinstance(m, torch.nn.Dropout)))
    expected = net.head(without_dropout(x))
    assert torch.equal(net.eval()(x), expected)  # eval: dropout is the identity
    torch.manual_seed(0)
    trained = net.train()(x)
    assert not torch.allclose(trained, expected)  # train: units are dropped (and the rest scaled by 2)


def test_net_config_fills_the_data_sizes_and_refuses_other_ones():
    config = _model_yaml("mlp_256_128")
    filled = net_config(config, (3, 32, 32), 100)
    assert filled == {**config, "input_shape": [3, 32, 32], "num_classes": 100}  # plain data, for hparams
    assert net_config(filled, [3, 32, 32], 100) == filled  # the same values again are fine
    with pytest.raises(ValueError, match=r"model.num_classes=10, but the data gives 100.*drop model.num_classes"):
        net_config({**config, "num_classes": 10}, (3, 32, 32), 100)
    with pytest.raises(ValueError, match=r"teacher.input_shape=\[1, 28, 28\], but the data gives \[3, 32, 32\]"):
        net_config({**config, "input_shape": [1, 28, 28]}, (3, 32, 32), 100, key="teacher")


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda: MLP(**MNIST, hidden=()), "hidden sizes"),
        (lambda: MLP(**MNIST, hidden=(0,)), "hidden sizes"),
        (lambda: MLP(**MNIST, dropout=1.0), "dropout"),
        (lambda: MLP(**MNIST, activation="swishy"), "Unknown activation 'swishy'"),
        (lambda: SmallCNN(**MNIST, channels=()), "channels"),
        (lambda: SmallCNN(**MNIST, channels=(4, 4, 4, 4, 4)), "too small"),
        (lambda: SmallCNN((1, 8, 8), 10, channels=(4, 4, 4, 4)), r"8x8 is too small"),
    ],
)
def test_bad_arguments_say_what_is_wrong(make, match):
    with pytest.raises(ValueError, match=match):
        make()
