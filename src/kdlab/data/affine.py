"""Continuous random affine and elastic distortions of uint8 batches, on their device.

Integer shifts (``augment_shift``) give each MNIST digit 25 views; the best MNIST MLPs of the literature
(Simard et al. 2003, Ciresan et al. 2010) train on continuously distorted digits instead. Each training
image gets its own transform, drawn from the datamodule's seeded augmentation stream, and the whole batch
is resampled at once: ``affine_grid``'s grid (``sampling_grid``) + ``grid_sample`` (bilinear, zero fill: a
corner uncovered by the transform is black, as a shift's border is), rounded back to uint8, so
normalisation, a teacher's own normalisation and ``Batch.pixels`` keep reading bytes. The views are
continuous, so the teacher-output cache cannot enumerate them: a run with this augmentation runs its
teacher live on every batch's exact pixels (kdlab.teachers.cache).

Elastic distortions (Simard, Steinkraus and Platt 2003) add a smooth random displacement to where each
output pixel reads from: a uniform(-1, 1) field per image and axis, smoothed by a Gaussian of std sigma
and scaled by alpha pixels. They ride in the same node (``augment_affine.elastic``) and the same single
resampling as the affine transform, so a distortion costs one ``grid_sample`` whatever it combines and
everything that keys on a continuous view (live teacher, identity keys, hparams) covers both at once.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

KEYS = ("rotate", "scale", "translate", "shear", "elastic")
ELASTIC_KEYS = ("alpha", "sigma")
PARAMS = ("angle", "scale", "shear", "dy", "dx")  # the columns of a drawn [B, 5] parameter tensor


@dataclass(frozen=True)
class Elastic:
    """Simard et al.'s elastic distortion: alpha scales (in pixels) a uniform(-1, 1) field smoothed by a Gaussian
    of std sigma pixels (truncated at ceil(3 sigma), zero beyond the border). Their MNIST setting: 34 and 4."""

    alpha: float
    sigma: float

    def field(self, n: int, height: int, width: int, generator: torch.Generator | None = None,
              device: torch.device | None = None) -> Tensor:  # fmt: skip
        """float32 [n, 2, height, width] displacements in pixels (x then y), one draw of n x 2 x H x W numbers.

        Smoothing is linear and separable, so it is two small matrix products, K_h U K_w^T, with banded
        [H, H] and [W, W] Gaussian matrices (alpha folded into K_h): the same sums as the two 1-D zero-padded
        convolutions, in one batched BLAS call each, with matrices built once per size and device.
        """
        device = generator.device if generator is not None else device
        u = torch.rand((n, 2, height, width), generator=generator, device=device).mul_(2).sub_(1)
        rows = _smoothing_matrix(height, self.sigma, self.alpha, u.device)
        cols = _smoothing_matrix(width, self.sigma, 1.0, u.device)
        return torch.matmul(torch.matmul(rows, u), cols.T)


def gaussian_kernel(sigma: float) -> Tensor:
    """float64 1-D Gaussian of std sigma over -ceil(3 sigma)..ceil(3 sigma), summing to 1."""
    radius = math.ceil(3 * sigma)
    x = torch.arange(-radius, radius + 1, dtype=torch.float64)
    k = torch.exp(-(x**2) / (2 * sigma**2))
    return k / k.sum()


@functools.lru_cache(maxsize=16)
def _smoothing_matrix(size: int, sigma: float, scale: float, device: torch.device) -> Tensor:
    """float32 [size, size] M with (M v)_i = scale * sum_k g(i - k) v_k: a zero-padded 1-D convolution as a product."""
    kernel = gaussian_kernel(sigma) * scale
    radius = kernel.numel() // 2
    offset = torch.arange(size)[:, None] - torch.arange(size)[None, :]  # i - k
    inside = offset.abs() <= radius
    matrix = torch.where(inside, kernel[(offset + radius).clamp(0, 2 * radius)], torch.zeros((), dtype=torch.float64))
    return matrix.to(device=device, dtype=torch.float32)


@dataclass(frozen=True)
class AffineAugment:
    """The ranges every training image's transform is drawn from: uniformly, independently per image.

    rotate: max |angle| in degrees; a positive angle turns the content counter-clockwise as displayed
        (row 0 on top), about the image's centre.
    scale: (low, high) zoom factor; above 1 enlarges the content.
    translate: max |offset| in pixels on each axis, continuous: sub-pixel offsets are interpolated.
    shear: max |angle| in degrees of a horizontal shear (a row y below the centre moves by tan(angle) * y).
    The content is scaled, then sheared, then rotated about the centre, then translated.
    elastic: an ``Elastic`` displacement added to where each output pixel reads from, or None.
    """

    rotate: float = 0.0
    scale: tuple[float, float] = (1.0, 1.0)
    translate: float = 0.0
    shear: float = 0.0
    elastic: Elastic | None = None

    @classmethod
    def from_config(cls, node: Mapping[str, Any] | None, image_size: Sequence[int], owner: str) -> AffineAugment | None:
        """``data.augment_affine`` checked: None when off (null, or ranges that leave every image as it is)."""
        if node is None:
            return None
        example = (
            "e.g. data.augment_affine={rotate:10,scale:[0.9,1.1],translate:2,shear:10} or "
            "data.augment_affine={elastic:{alpha:34,sigma:4}}, or null for none"
        )
        if not isinstance(node, Mapping):
            raise ValueError(
                f"{owner}: augment_affine must be a mapping of {', '.join(KEYS)}, got {node!r} ({example})"
            )
        if unknown := sorted(set(node) - set(KEYS)):
            raise ValueError(
                f"{owner}: augment_affine has unknown key(s) {unknown}; it takes {', '.join(KEYS)} ({example})"
            )

        def number(key: str, value: Any) -> float:
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ValueError(f"{owner}: augment_affine.{key} must be a number, got {value!r} ({example})")
            return float(value)

        rotate, translate, shear = (number(k, node.get(k, 0.0)) for k in ("rotate", "translate", "shear"))
        scale = node.get("scale", (1.0, 1.0))
        if isinstance(scale, (str, Mapping)) or not isinstance(scale, Sequence) or len(scale) != 2:
            raise ValueError(
                f"{owner}: augment_affine.scale must be a [low, high] pair of zoom factors, got {scale!r} ({example})"
            )
        low, high = (number("scale", s) for s in scale)
        side = min(int(d) for d in image_size)
        problems = [
            (not 0 <= rotate <= 180, f"rotate={rotate:g} must lie in 0..180 degrees (a max |angle|)"),
            (not 0 < low <= high, f"scale=[{low:g}, {high:g}] must be [low, high] with 0 < low <= high"),
            (not 0 <= translate < side, f"translate={translate:g} must lie in 0..{side} pixels, below the image side"),
            (not 0 <= shear < 90, f"shear={shear:g} must lie in 0..90 degrees, 90 excluded (a max |angle|)"),
        ]
        elastic = node.get("elastic")
        if elastic is not None:
            if not isinstance(elastic, Mapping) or sorted(elastic) != sorted(ELASTIC_KEYS):
                raise ValueError(
                    f"{owner}: augment_affine.elastic must be a mapping of exactly alpha (pixels) and sigma (pixels), "
                    f"got {elastic!r} ({example})"
                )
            alpha, sigma = (number(f"elastic.{k}", elastic[k]) for k in ELASTIC_KEYS)
            problems += [
                (alpha < 0, f"elastic.alpha={alpha:g} must be >= 0 (pixels; 0 displaces nothing)"),
                (not 0 < sigma <= side, f"elastic.sigma={sigma:g} must lie in 0..{side} pixels, 0 excluded"),
            ]
        if bad := [f"augment_affine.{message}" for failed, message in problems if failed]:
            raise ValueError(f"{owner}: {'; '.join(bad)} ({example})")
        augment = cls(rotate, (low, high), translate, shear, None if elastic is None else Elastic(alpha, sigma))
        return None if augment.is_identity else augment

    @property
    def is_identity(self) -> bool:
        still = self.elastic is None or self.elastic.alpha == 0
        return still and self.rotate == self.translate == self.shear == 0 and self.scale == (1.0, 1.0)

    def to_dict(self) -> dict[str, Any]:
        """Plain data for the saved hparams (weights-only checkpoint loading refuses tuples); ``elastic`` only
        when set, so an affine-only run's hparams read as they did before elastic existed."""
        plain = {"rotate": self.rotate, "scale": list(self.scale), "translate": self.translate, "shear": self.shear}
        if self.elastic is not None:
            plain["elastic"] = {"alpha": self.elastic.alpha, "sigma": self.elastic.sigma}
        return plain

    def sample(self, n: int, generator: torch.Generator | None = None, device: torch.device | None = None) -> Tensor:
        """float32 [n, 5] parameters (angle, scale, shear, dy, dx) drawn uniformly in the ranges: one draw of
        n x 5 numbers, whatever ranges are zero, so the stream advances the same for every setting."""
        device = generator.device if generator is not None else device
        u = torch.rand((n, len(PARAMS)), generator=generator, device=device)
        low, high = self.scale
        signed = u.mul(2).sub_(1)  # -1..1
        return torch.stack(
            [signed[:, 0] * self.rotate, low + u[:, 1] * (high - low), signed[:, 2] * self.shear,
             signed[:, 3] * self.translate, signed[:, 4] * self.translate], dim=1)  # fmt: skip


def affine_theta(params: Tensor, height: int, width: int) -> Tensor:
    """The [B, 2, 3] matrices ``affine_grid`` (align_corners=False) needs for parameters [B, 5] (see PARAMS).

    In pixel coordinates about the centre (x right, y down), the content moves by p_out = A p_in + t with
    A = R(angle) Sh(shear) scale; grid_sample asks the reverse, where each output pixel reads from:
    p_in = A^-1 (p_out - t), and in its normalised coordinates (u = 2 p / size on each axis)
    theta = [N A^-1 N^-1 | -N A^-1 t] with N = diag(2 / width, 2 / height). Computed in float64.
    """
    p = params.to(torch.float64)
    angle, scale, shear = torch.deg2rad(p[:, 0]), p[:, 1], torch.deg2rad(p[:, 2])
    cos, sin, tan = torch.cos(angle), torch.sin(angle), torch.tan(shear)
    # R^-1 for R = [[cos, sin], [-sin, cos]] (counter-clockwise on screen with y down) is [[cos, -sin], [sin, cos]];
    # Sh^-1 for Sh = [[1, tan], [0, 1]] is [[1, -tan], [0, 1]]; A^-1 = Sh^-1 R^-1 / scale.
    a = (cos - tan * sin) / scale
    b = (-sin - tan * cos) / scale
    c = sin / scale
    d = cos / scale
    inv = torch.stack([torch.stack([a, b], 1), torch.stack([c, d], 1)], 1)  # [B, 2, 2], rows x then y
    n = torch.tensor([2.0 / width, 2.0 / height], dtype=torch.float64, device=p.device)
    linear = inv * n[None, :, None] / n[None, None, :]  # N A^-1 N^-1
    t = torch.stack([p[:, 4], p[:, 3]], 1)  # (dx, dy): x first, as affine_grid's columns
    offset = -(inv @ t[:, :, None])[:, :, 0] * n
    return torch.cat([linear, offset[:, :, None]], 2).to(torch.float32)


def sampling_grid(theta: Tensor, height: int, width: int, displacement: Tensor | None = None) -> Tensor:
    """``affine_grid(theta, [B, C, height, width], align_corners=False)``, built from the pixel centres' coordinates.

    The same [B, H, W, 2] grid (to float rounding). On the CPU, affine_grid's batched [H*W, 3] x [3, 2]
    products cost several times the whole resampling of a 28x28 batch; here each coordinate is one small
    row term copied across the grid plus one small column term, written in place into the one grid
    tensor (no batch-sized temporaries to allocate and fault in at every step). ``displacement`` [B, 2, H, W]
    (pixels, x then y) is added in place, in the grid's units (2 / size per pixel): the elastic part.
    """
    xs = torch.arange(width, dtype=torch.float32, device=theta.device).mul_(2).add_(1).div_(width).sub_(1)
    ys = torch.arange(height, dtype=torch.float32, device=theta.device).mul_(2).add_(1).div_(height).sub_(1)
    grid = theta.new_empty(theta.shape[0], height, width, 2)
    for k in range(2):  # grid[..., k] = theta[:, k] @ (x, y, 1): x then y
        along_x = theta[:, k, 0, None] * xs  # [B, W]
        along_y = theta[:, k, 1, None] * ys + theta[:, k, 2, None]  # [B, H]
        grid[..., k].copy_(along_x[:, None, :]).add_(along_y[:, :, None])
        if displacement is not None:
            grid[..., k].add_(displacement[:, k], alpha=2.0 / (width, height)[k])
    return grid


def warp_images(x_uint8: Tensor, theta: Tensor, displacement: Tensor | None = None) -> Tensor:
    """uint8 [B, C, H, W] resampled by ``theta`` [B, 2, 3] plus ``displacement`` [B, 2, H, W] in pixels (elastic,
    or None), in one bilinear, zero-fill ``grid_sample``, rounded to the nearest byte: every channel alike."""
    if x_uint8.dtype != torch.uint8 or x_uint8.ndim != 4:
        raise TypeError(f"warp_images expects a uint8 [B, C, H, W] batch, got {x_uint8.dtype} {tuple(x_uint8.shape)}")
    x = x_uint8.to(torch.float32)
    displacement = None if displacement is None else displacement.to(x.device)
    grid = sampling_grid(theta.to(x.device), x.shape[2], x.shape[3], displacement)
    out = torch.nn.functional.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    # Bilinear weights sum to at most 1, so out lies in 0..255 up to rounding; clamp for the cast's sake.
    return out.round_().clamp_(0, 255).to(torch.uint8)


def random_affine(
    x: Tensor, augment: AffineAugment, generator: torch.Generator | None = None
) -> tuple[Tensor, Tensor, Tensor | None]:
    """Each image of uint8 ``x`` [B, C, H, W] distorted by its own transform drawn from ``augment``'s ranges.

    Returns the batch, the float32 [B, 5] affine parameters and the [B, 2, H, W] elastic displacement (None
    without elastic) applied, on ``x``'s device, so ``warp_images(x, affine_theta(params, H, W), displacement)``
    reproduces it. Draws the parameters, then the field (only when elastic is set, so an affine-only stream
    is what it was), from ``generator`` (on its device) if given, else from the global RNG of the batch's device.
    """
    if x.ndim != 4:
        raise ValueError(f"random_affine expects a [B, C, H, W] batch, got shape {tuple(x.shape)}")
    b, _, height, width = x.shape
    params = augment.sample(b, generator, x.device).to(x.device)
    elastic = augment.elastic
    displacement = None if elastic is None else elastic.field(b, height, width, generator, x.device).to(x.device)
    return warp_images(x, affine_theta(params, height, width), displacement), params, displacement
