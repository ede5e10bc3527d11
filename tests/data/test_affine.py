"""kdlab.data.affine: continuous random distortions of uint8 batches, checked against exact pixel moves."""

import pytest
import torch

from kdlab.data import AffineAugment, affine_theta, random_affine, shift_images, warp_images
from kdlab.data.affine import sampling_grid

pytestmark = pytest.mark.unit

SIZE = (28, 28)


def params(n: int, angle=0.0, scale=1.0, shear=0.0, dy=0.0, dx=0.0) -> torch.Tensor:
    return torch.tensor([[angle, scale, shear, dy, dx]], dtype=torch.float32).expand(n, 5)


def noise(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 256, shape, dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))


def warp(x: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    return warp_images(x, affine_theta(p, x.shape[2], x.shape[3]))


def test_the_identity_transform_returns_the_input_exactly():
    x = noise(8, 1, 28, 28)
    assert torch.equal(warp(x, params(8)), x)
    assert torch.equal(warp(noise(4, 3, 32, 20), params(4)), noise(4, 3, 32, 20))  # not square, 3 channels


def test_a_90_degree_rotation_turns_the_content_counter_clockwise():
    img = torch.zeros(1, 1, 5, 5, dtype=torch.uint8)
    img[0, 0, 0, 4] = 200  # top right
    img[0, 0, 2, 3] = 100  # right of the centre
    turned = warp(img, params(1, angle=90.0))[0, 0]
    expected = torch.zeros(5, 5, dtype=torch.uint8)
    expected[0, 0] = 200  # top left
    expected[1, 2] = 100  # above the centre
    assert torch.equal(turned, expected)
    x = noise(6, 1, 28, 28)  # every pixel lands on a pixel: the rotation is exact on the whole image
    assert torch.equal(warp(x, params(6, angle=90.0)), torch.rot90(x, 1, dims=(2, 3)))
    assert torch.equal(warp(x, params(6, angle=-90.0)), torch.rot90(x, -1, dims=(2, 3)))
    assert torch.equal(warp(x, params(6, angle=180.0)), torch.rot90(x, 2, dims=(2, 3)))


def test_whole_pixel_translations_are_the_integer_shifts_of_augment_shift():
    x = noise(5, 1, 28, 24)
    offsets = torch.tensor([[1, 0], [-2, 3], [0, -1], [2, 2], [-1, -3]])
    p = torch.zeros(5, 5)
    p[:, 1], p[:, 3:] = 1.0, offsets.float()
    assert torch.equal(warp(x, p), shift_images(x, offsets))


def test_a_half_pixel_translation_interpolates_between_neighbours():
    x = torch.zeros(1, 1, 4, 4, dtype=torch.uint8)
    x[0, 0, 1, 1] = 100
    out = warp(x, params(1, dx=0.5))[0, 0]
    assert out[1, 1] == 50 and out[1, 2] == 50 and int(out.sum()) == 100  # half of the pixel moves right


def test_a_45_degree_shear_moves_each_row_by_its_distance_below_the_centre():
    img = torch.zeros(1, 1, 5, 5, dtype=torch.uint8)
    img[0, 0, :, 2] = 255  # a vertical line through the centre
    out = warp(img, params(1, shear=45.0))[0, 0]
    expected = torch.zeros(5, 5, dtype=torch.uint8)
    for row in range(5):
        expected[row, row] = 255  # row y lands at column 2 + (y - 2)
    assert torch.equal(out, expected)


def test_scale_zooms_about_the_centre():
    img = torch.zeros(1, 1, 8, 8, dtype=torch.uint8)
    img[0, 0, 2:6, 2:6] = 255  # a 4x4 square about the centre
    # x2: output pixel c reads input 3.5 + (c - 3.5) / 2; the border reads 1.75, 3/4 of the way into the square
    double = torch.full((8, 8), 255, dtype=torch.uint8)
    double[[0, -1], :] = double[:, [0, -1]] = 191  # round(0.75 * 255)
    double[[0, 0, -1, -1], [0, -1, 0, -1]] = 143  # round(0.75^2 * 255)
    assert torch.equal(warp(img, params(1, scale=2.0))[0, 0], double)
    half = warp(img, params(1, scale=0.5))[0, 0]  # reads input 2c - 3.5: only c = 3, 4 land inside the square
    expected = torch.zeros(8, 8, dtype=torch.uint8)
    expected[3:5, 3:5] = 255
    assert torch.equal(half, expected)


def test_every_channel_gets_its_images_transform():
    gray = noise(4, 1, 32, 32)
    rgb = torch.cat([gray, gray, gray], 1)
    out, p, _ = random_affine(rgb, AffineAugment(10, (0.9, 1.1), 2, 10), torch.Generator().manual_seed(0))
    assert out.shape == (4, 3, 32, 32) and out.dtype == torch.uint8 and p.shape == (4, 5)
    assert torch.equal(out[:, 0], out[:, 1]) and torch.equal(out[:, 1], out[:, 2])
    assert torch.equal(out[:, :1], warp(gray, p))


def test_draws_come_from_the_generator_alone_and_lie_in_their_ranges():
    augment = AffineAugment(rotate=15, scale=(0.8, 1.2), translate=3, shear=5)
    x = noise(256, 1, 28, 28)

    def draw(seed):
        return random_affine(x, augment, torch.Generator().manual_seed(seed))

    torch.manual_seed(0)
    first = draw(7)
    torch.manual_seed(99)  # the global RNG plays no part
    again = draw(7)
    assert torch.equal(first[0], again[0]) and torch.equal(first[1], again[1])
    assert not torch.equal(first[1], draw(8)[1])
    p = first[1]
    assert p[:, 0].abs().max() <= 15 and p[:, 0].abs().max() > 10  # continuous angles spread over the range
    assert p[:, 1].min() >= 0.8 and p[:, 1].max() <= 1.2
    assert p[:, 2].abs().max() <= 5 and p[:, 3:].abs().max() <= 3
    assert len(p[:, 3].unique()) == 256  # continuous translations, not whole pixels
    assert torch.equal(first[0], warp(x, p))  # what is returned is what was applied


def test_from_config_fills_the_defaults_and_treats_identity_ranges_as_off():
    assert AffineAugment.from_config(None, SIZE, "dm") is None
    assert AffineAugment.from_config({"rotate": 0, "scale": [1, 1]}, SIZE, "dm") is None
    got = AffineAugment.from_config({"rotate": 10, "scale": [0.9, 1.1]}, SIZE, "dm")
    assert got == AffineAugment(10.0, (0.9, 1.1), 0.0, 0.0)
    assert got.to_dict() == {"rotate": 10.0, "scale": [0.9, 1.1], "translate": 0.0, "shear": 0.0}
    assert AffineAugment.from_config(got.to_dict(), SIZE, "dm") == got  # hparams round-trip


@pytest.mark.parametrize(
    ("node", "message"),
    [
        ({"rotate": -5}, r"rotate=-5 must lie in 0\.\.180 degrees"),
        ({"rotate": 200}, r"rotate=200 must lie in 0\.\.180"),
        ({"scale": [1.2, 0.8]}, r"scale=\[1\.2, 0\.8\] must be \[low, high\] with 0 < low <= high"),
        ({"scale": [0, 1]}, r"0 < low <= high"),
        ({"scale": 1.1}, r"scale must be a \[low, high\] pair"),
        ({"translate": -1}, r"translate=-1 must lie in 0\.\.28 pixels"),
        ({"translate": 28}, r"translate=28 must lie in 0\.\.28 pixels, below the image side"),
        ({"shear": 90}, r"shear=90 must lie in 0\.\.90 degrees, 90 excluded"),
        ({"rotate": "10"}, r"augment_affine\.rotate must be a number, got '10'"),
        ({"rotate": True}, "must be a number"),
        ({"rotate": float("nan")}, "must be a number"),
        ({"rotation": 10}, r"unknown key\(s\) \['rotation'\]; it takes rotate, scale, translate, shear"),
        ([10], "augment_affine must be a mapping"),
    ],
)
def test_bad_ranges_are_refused_with_the_key_and_an_example(node, message):
    with pytest.raises(ValueError, match=message) as refused:
        AffineAugment.from_config(node, SIZE, "IDXDataModule")
    assert "IDXDataModule: " in str(refused.value) and "data.augment_affine={rotate:10" in str(refused.value)


def test_several_problems_are_named_in_one_message():
    with pytest.raises(ValueError, match=r"rotate=-1 .*; augment_affine\.scale=\[2, 1\] .*; augment_affine\.shear=-3 "):
        AffineAugment.from_config({"rotate": -1, "scale": [2, 1], "shear": -3}, SIZE, "dm")


def test_the_sampling_grid_is_affine_grids():
    theta = affine_theta(AffineAugment(30, (0.7, 1.3), 3, 20).sample(64, torch.Generator().manual_seed(1)), 28, 20)
    expected = torch.nn.functional.affine_grid(theta, [64, 1, 28, 20], align_corners=False)
    assert torch.allclose(sampling_grid(theta, 28, 20), expected, rtol=0, atol=1e-6)  # 1e-6 of half the image
