"""kdlab.data.affine's elastic distortions (Simard et al. 2003): a smooth random displacement field in the same
resampling as the affine transform, drawn from the seeded augmentation stream."""

import math

import pytest
import torch

from kdlab.data import AffineAugment, affine_theta, random_affine, warp_images
from kdlab.data.affine import Elastic, gaussian_kernel

pytestmark = pytest.mark.unit

SIZE = (28, 28)


def noise(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 256, shape, dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_alpha_zero_displaces_nothing_and_returns_the_input_exactly():
    x = noise(16, 1, 28, 28)
    out, _, field = random_affine(x, AffineAugment(elastic=Elastic(0.0, 4.0)), gen(0))
    assert torch.equal(field, torch.zeros_like(field)) and torch.equal(out, x)


def test_the_field_is_the_two_zero_padded_1d_convolutions_of_its_uniform_draw():
    elastic = Elastic(alpha=34.0, sigma=4.0)
    field = elastic.field(6, 28, 20, gen(3))
    u = torch.rand((6, 2, 28, 20), generator=gen(3)).mul_(2).sub_(1).reshape(12, 1, 28, 20).double()
    k = gaussian_kernel(4.0)
    r = k.numel() // 2  # ceil(3 sigma) = 12
    smooth = torch.nn.functional.conv2d(u, k.view(1, 1, 1, -1), padding=(0, r))
    smooth = torch.nn.functional.conv2d(smooth, k.view(1, 1, -1, 1), padding=(r, 0))
    assert torch.allclose(field.double(), 34.0 * smooth.view(6, 2, 28, 20), rtol=0, atol=1e-4)


@pytest.mark.heavy
def test_the_field_is_smooth_and_as_large_as_sigma_and_alpha_imply():
    alpha, sigma = 34.0, 4.0
    field = Elastic(alpha, sigma).field(4096, 28, 28, gen(0))
    k = gaussian_kernel(sigma)
    # d(p) = alpha sum_j g(j) u(p - j) with |u| <= 1, so a step of one pixel changes it by at most alpha times the
    # kernel's total variation, 2 max(g) for a bell: about alpha / 5 here, against up to 2 alpha for raw noise.
    step = alpha * 2 * k.max().item()
    assert field.diff(dim=2).abs().max() <= step and field.diff(dim=3).abs().max() <= step
    # Away from the zero-padded border (radius 12 on 28 pixels: rows and columns 12..15 see the whole kernel),
    # each value is alpha sum_ij g(i) g(j) u_ij over independent uniforms of variance 1/3: mean 0 and
    # std alpha sum(g^2) / sqrt(3), about 1.4 px for Simard's setting.
    centre = field[:, :, 12:16, 12:16]
    expected_std = alpha * (k**2).sum().item() / math.sqrt(3)
    assert abs(centre.std().item() / expected_std - 1) < 0.05
    assert abs(centre.mean().item()) < 0.1 * expected_std
    # Its one-pixel steps along x have std alpha sqrt(sum g^2 sum (g(i) - g(i-1))^2 / 3): about a fifth of the
    # field's own std at sigma 4; white noise's steps would be sqrt(2) times larger than its values.
    steps = field[:, :, 12:16, 12:16].diff(dim=3)
    dg = torch.nn.functional.pad(k, (1, 1)).diff()
    expected_step = alpha * math.sqrt((k**2).sum().item() * (dg**2).sum().item() / 3)
    assert abs(steps.std().item() / expected_step - 1) < 0.05


def test_draws_come_from_the_generator_alone():
    augment = AffineAugment(rotate=10, elastic=Elastic(34.0, 4.0))
    x = noise(32, 1, 28, 28)
    torch.manual_seed(0)
    first = random_affine(x, augment, gen(7))
    torch.manual_seed(99)  # the global RNG plays no part
    again = random_affine(x, augment, gen(7))
    assert all(torch.equal(a, b) for a, b in zip(first, again, strict=True))
    assert not torch.equal(first[2], random_affine(x, augment, gen(8))[2])
    # What is returned is what was applied: the affine parameters, then the field, in one resampling.
    assert torch.equal(first[0], warp_images(x, affine_theta(first[1], 28, 28), first[2]))


def test_the_affine_parameters_come_first_in_the_stream_so_an_affine_only_stream_is_unchanged():
    x = noise(8, 1, 28, 28)
    affine = random_affine(x, AffineAugment(rotate=10), gen(1))
    both = random_affine(x, AffineAugment(rotate=10, elastic=Elastic(34.0, 4.0)), gen(1))
    assert torch.equal(affine[1], both[1]) and affine[2] is None


def test_every_channel_gets_its_images_field():
    rgb = noise(4, 3, 32, 32)
    augment = AffineAugment(elastic=Elastic(8.0, 3.0))
    out, _, field = random_affine(rgb, augment, gen(5))
    for c in range(3):
        alone, _, same = random_affine(rgb[:, c : c + 1], augment, gen(5))
        assert torch.equal(same, field) and torch.equal(out[:, c : c + 1], alone)
    assert not torch.equal(out, rgb)


def test_from_config_reads_elastic_and_round_trips_through_the_hparams():
    got = AffineAugment.from_config({"elastic": {"alpha": 34, "sigma": 4}}, SIZE, "dm")
    assert got == AffineAugment(elastic=Elastic(34.0, 4.0))
    assert got.to_dict()["elastic"] == {"alpha": 34.0, "sigma": 4.0}
    assert AffineAugment.from_config(got.to_dict(), SIZE, "dm") == got
    assert "elastic" not in AffineAugment(rotate=5).to_dict()  # affine-only hparams read as before
    assert AffineAugment.from_config({"elastic": {"alpha": 0, "sigma": 4}}, SIZE, "dm") is None  # displaces nothing
    assert AffineAugment.from_config({"rotate": 5, "elastic": None}, SIZE, "dm") == AffineAugment(rotate=5)


@pytest.mark.parametrize(
    ("elastic", "message"),
    [
        ({"alpha": -1, "sigma": 4}, r"elastic\.alpha=-1 must be >= 0"),
        ({"alpha": 34, "sigma": 0}, r"elastic\.sigma=0 must lie in 0\.\.28 pixels, 0 excluded"),
        ({"alpha": 34, "sigma": -2}, r"elastic\.sigma=-2 must lie"),
        ({"alpha": 34, "sigma": 40}, r"elastic\.sigma=40 must lie in 0\.\.28"),
        ({"alpha": "34", "sigma": 4}, r"augment_affine\.elastic\.alpha must be a number, got '34'"),
        ({"alpha": 34, "sigma": float("inf")}, r"elastic\.sigma must be a number"),
        ({"alpha": 34}, r"elastic must be a mapping of exactly alpha \(pixels\) and sigma"),
        ({"alpha": 34, "sigma": 4, "seed": 1}, r"elastic must be a mapping of exactly alpha"),
        (34, r"elastic must be a mapping"),
    ],
)
def test_bad_elastic_settings_are_refused_with_the_key_and_an_example(elastic, message):
    with pytest.raises(ValueError, match=message) as refused:
        AffineAugment.from_config({"elastic": elastic}, SIZE, "IDXDataModule")
    assert "IDXDataModule: " in str(refused.value) and "data.augment_affine={elastic:{alpha:34,sigma:4}}" in str(
        refused.value
    )
