"""Batch transforms: normalisation arithmetic (one value or one per channel), the direction, bounds and
seeding of shifts, and seeded flips."""

import itertools

import pytest
import torch

from kdlab.data import normalize, random_flip, random_shift, shift_images

pytestmark = pytest.mark.unit


def _reference_shift(image: torch.Tensor, dy: int, dx: int) -> torch.Tensor:
    """Slow, obvious shift of one [C, H, W] image: out[r, c] = image[r - dy, c - dx], else 0."""
    out = torch.zeros_like(image)
    h, w = image.shape[-2:]
    for r, c in itertools.product(range(h), range(w)):
        if 0 <= r - dy < h and 0 <= c - dx < w:
            out[:, r, c] = image[:, r - dy, c - dx]
    return out


def test_normalize_arithmetic():
    x = torch.tensor([0, 255, 51], dtype=torch.uint8)
    out = normalize(x, mean=0.5, std=0.25)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, torch.tensor([-2.0, 2.0, (0.2 - 0.5) / 0.25]))


def test_normalize_in_place_gives_the_formulas_values_bit_for_bit_and_keeps_its_input():
    x = torch.arange(256, dtype=torch.uint8).repeat(3).view(3, 1, 16, 16)
    kept = x.clone()
    out = normalize(x, mean=0.1307, std=0.3081)
    assert torch.equal(out, (x.to(torch.float32) / 255.0 - 0.1307) / 0.3081)  # the same roundings, in the same order
    assert torch.equal(x, kept)


def test_normalize_per_channel_is_each_channels_formula_bit_for_bit():
    x = torch.randint(0, 256, (4, 3, 5, 6), dtype=torch.uint8)
    mean, std = [0.4914, 0.4822, 0.4465], [0.2470, 0.2435, 0.2616]  # CIFAR-10's
    out = normalize(x, mean, std)
    assert out.dtype == torch.float32 and out.shape == x.shape
    for c in range(3):
        assert torch.equal(out[:, c], (x[:, c].to(torch.float32) / 255.0 - mean[c]) / std[c])
    assert torch.equal(normalize(x, [0.5], [0.25]), normalize(x, 0.5, 0.25))  # one value: every channel


def test_normalize_refuses_float_input_to_catch_double_normalisation():
    with pytest.raises(TypeError, match="already"):
        normalize(torch.zeros(3), 0.5, 0.25)


def test_shift_images_moves_a_pixel_down_and_left():
    image = torch.zeros(1, 1, 7, 7, dtype=torch.uint8)
    image[0, 0, 3, 3] = 200
    out = shift_images(image, torch.tensor([[1, -2]]))
    expected = torch.zeros_like(image)
    expected[0, 0, 4, 1] = 200
    assert torch.equal(out, expected)
    assert out.dtype == torch.uint8


def test_shift_images_zero_fills_and_matches_reference_per_sample():
    x = torch.arange(1, 3 * 2 * 6 * 5 + 1, dtype=torch.float32).reshape(3, 2, 6, 5)
    offsets = torch.tensor([[2, 0], [-1, 3], [0, -4]])
    out = shift_images(x, offsets)
    for b, (dy, dx) in enumerate(offsets.tolist()):
        assert torch.equal(out[b], _reference_shift(x[b], dy, dx))


def test_random_shift_is_identity_for_zero():
    x = torch.randint(0, 256, (4, 1, 28, 28), dtype=torch.uint8)
    out, offsets = random_shift(x, 0)
    assert out is x
    assert torch.equal(offsets, torch.zeros(4, 2, dtype=torch.long))


def test_random_shift_offsets_are_independent_bounded_and_seeded():
    base = torch.arange(1, 50, dtype=torch.uint8).reshape(1, 1, 7, 7)  # every pixel distinct, none 0
    x = base.repeat(300, 1, 1, 1)
    out, offsets = random_shift(x, 2, generator=torch.Generator().manual_seed(0))
    assert offsets.dtype == torch.long and offsets.shape == (300, 2)
    assert torch.equal(shift_images(x, offsets), out)  # the offsets returned are the ones applied
    candidates = {(dy, dx): _reference_shift(base[0], dy, dx) for dy in range(-3, 4) for dx in range(-3, 4)}
    seen = []
    for image in out:
        matches = [offset for offset, shifted in candidates.items() if torch.equal(image, shifted)]
        assert len(matches) == 1  # the image is the original moved intact, nothing else
        seen.append(matches[0])
    assert seen == [tuple(o) for o in offsets.tolist()]
    assert all(max(abs(dy), abs(dx)) <= 2 for dy, dx in seen)
    assert len(set(seen)) == 25  # all offsets of [-2, 2]^2 occur: drawn per sample and per axis
    again, _ = random_shift(x, 2, generator=torch.Generator().manual_seed(0))
    other, _ = random_shift(x, 2, generator=torch.Generator().manual_seed(1))
    assert torch.equal(out, again)
    assert not torch.equal(out, other)


def test_random_shift_uses_global_rng_without_generator():
    x = torch.randint(0, 256, (16, 1, 28, 28), dtype=torch.uint8)
    torch.manual_seed(3)
    first, offsets = random_shift(x, 3)
    torch.manual_seed(3)
    again, same = random_shift(x, 3)
    assert torch.equal(again, first) and torch.equal(same, offsets)


def test_random_shift_rejects_negative_and_unbatched():
    with pytest.raises(ValueError, match=">= 0"):
        random_shift(torch.zeros(1, 1, 4, 4), -1)
    with pytest.raises(ValueError, match=r"\[B, C, H, W\]"):
        random_shift(torch.zeros(4, 4), 1)


@pytest.mark.parametrize("channels_last", [False, True])
def test_random_shift_equals_the_reference_for_every_offset_channel_and_layout(channels_last):
    torch.manual_seed(0)
    images = torch.randint(1, 256, (50, 3, 6, 9), dtype=torch.uint8)  # no zero pixel: a missed fill shows
    if channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    offsets = torch.tensor(list(itertools.product(range(-2, 3), repeat=2)) * 2)  # all 25 shifts, twice
    shifted = shift_images(images, offsets)
    for image, (dy, dx), out in zip(images, offsets.tolist(), shifted, strict=True):
        assert torch.equal(out, _reference_shift(image, dy, dx)), (dy, dx)
    generator = torch.Generator().manual_seed(3)
    drawn, drawn_offsets = random_shift(images, 2, generator)
    assert torch.equal(drawn, shift_images(images, drawn_offsets))


def test_random_flip_mirrors_the_drawn_images_exactly_and_is_seeded():
    x = torch.randint(0, 256, (64, 3, 4, 7), dtype=torch.uint8)
    out, flips = random_flip(x, torch.Generator().manual_seed(0))
    assert flips.dtype == torch.bool and flips.shape == (64,) and out.dtype == torch.uint8
    assert 0 < int(flips.sum()) < 64  # one coin per image
    for image, flipped, result in zip(x, flips.tolist(), out, strict=True):
        expected = image[:, :, torch.arange(6, -1, -1)] if flipped else image  # column c -> 6 - c
        assert torch.equal(result, expected)
    again, same = random_flip(x, torch.Generator().manual_seed(0))
    other, _ = random_flip(x, torch.Generator().manual_seed(1))
    assert torch.equal(again, out) and torch.equal(same, flips)
    assert not torch.equal(other, out)
