"""Whole-batch image transforms as tensor ops, run after the batch reaches its device.

Per-sample transforms in DataLoader workers would cost more than the tiny MLPs they feed; here one
batched op handles a whole batch on the GPU. Augmentations act on the uint8 pixels (a border
uncovered by a shift is black, as a padded crop's is), normalisation comes last.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor


def normalize(x_uint8: Tensor, mean: float | Sequence[float], std: float | Sequence[float]) -> Tensor:
    """Pixel bytes [B, C, H, W] to standardised float32: ``(x / 255 - mean) / std``, per channel.

    One value (or a one-element list) applies to every channel.
    """
    if x_uint8.dtype != torch.uint8:
        raise TypeError(
            f"normalize expects raw uint8 pixels but got {x_uint8.dtype}; the batch was probably "
            "normalised already (e.g. both the DataModule and the LightningModule transform it). "
            "Normalise exactly once."
        )
    mean, std = _per_channel(mean, x_uint8), _per_channel(std, x_uint8)
    # In place on the one new float tensor: the same roundings as `(x / 255 - mean) / std`, without three
    # more batch-sized buffers.
    return x_uint8.to(torch.float32).div_(255.0).sub_(mean).div_(std)


def _per_channel(values: float | Sequence[float], x: Tensor) -> float | Tensor:
    if isinstance(values, (int, float)):
        return float(values)
    values = [float(v) for v in values]
    if len(values) == 1:
        return values[0]
    return torch.tensor(values, dtype=torch.float32, device=x.device).view(-1, 1, 1)


def random_flip(x: Tensor, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
    """Mirror each image left-right with probability 1/2; returns the batch and the bool [B] flips applied."""
    device = generator.device if generator is not None else x.device
    flips = torch.randint(0, 2, (x.shape[0],), generator=generator, device=device).bool().to(x.device)
    return torch.where(flips[:, None, None, None], x.flip(-1), x), flips


def shift_images(x: Tensor, offsets: Tensor) -> Tensor:
    """Translate each image of a [B, C, H, W] batch by its own (dy, dx), filling with zeros.

    ``offsets`` is an integer [B, 2] tensor; positive dy moves content down, positive dx right,
    so ``out[b, :, r, c] == x[b, :, r - dy, c - dx]`` where that pixel exists, else 0.
    """
    if x.ndim != 4:
        raise ValueError(f"shift_images expects a [B, C, H, W] batch, got shape {tuple(x.shape)}")
    if offsets.shape != (x.shape[0], 2):
        raise ValueError(f"offsets must have shape ({x.shape[0]}, 2) for this batch, got {tuple(offsets.shape)}")
    pad = int(offsets.abs().max()) if x.shape[0] else 0  # one host sync; random_shift knows it already
    return _shift_padded(x, offsets, pad)


def _shift_padded(x: Tensor, offsets: Tensor, pad: int) -> Tensor:
    """``shift_images`` for offsets known to lie within ``[-pad, pad]``: pad once, pick each image's window.

    The (2 pad + 1)^2 windows of the padded batch are a strided view (no copy), so the shift is one
    copy of whole windows: several times faster on CPU than gathering every pixel by its row and
    column index, with the very same values.
    """
    if pad == 0:
        return x
    b, c, h, w = x.shape
    padded = torch.nn.functional.pad(x, (pad, pad, pad, pad))  # padded[r + pad, c + pad] == x[r, c]
    sb, sc, sh, sw = padded.stride()
    k = 2 * pad + 1
    # windows[n, i, j] = padded[n, :, i:i+h, j:j+w]
    windows = padded.as_strided((b, k, k, c, h, w), (sb, sh, sw, sc, sh, sw))
    offsets = offsets.to(device=x.device, dtype=torch.long)
    # out[r, c] = x[r - dy, c - dx] = padded[r - dy + pad, c - dx + pad]: the window at (pad - dy, pad - dx)
    return windows[torch.arange(b, device=x.device), pad - offsets[:, 0], pad - offsets[:, 1]]


def random_shift(x: Tensor, max_shift: int, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
    """Shift each image by independent random offsets in ``[-max_shift, max_shift]`` on both axes.

    Returns the shifted batch and the int64 [B, 2] (dy, dx) offsets applied, on ``x``'s device, so
    ``shift_images(x, offsets)`` reproduces it. Draws from ``generator`` if given (on its device),
    otherwise from the global RNG of the batch's device.
    """
    if max_shift < 0:
        raise ValueError(f"max_shift must be >= 0 (pixels), got {max_shift}")
    if x.ndim != 4:
        raise ValueError(f"random_shift expects a [B, C, H, W] batch, got shape {tuple(x.shape)}")
    if max_shift == 0:
        return x, torch.zeros(x.shape[0], 2, dtype=torch.long, device=x.device)
    device = generator.device if generator is not None else x.device
    offsets = torch.randint(-max_shift, max_shift + 1, (x.shape[0], 2), generator=generator, device=device)
    offsets = offsets.to(x.device)
    return _shift_padded(x, offsets, max_shift), offsets
