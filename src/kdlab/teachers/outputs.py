"""The frozen teacher's logits for every view of every training image, computed once and read during distillation.

A frozen teacher in eval mode is a fixed function of its input, and the augmentation has finitely
many views: (2s + 1)^2 shifts per image (x2 with flips), 25 for MNIST's s = 2. So its logits for every
(training image, view) pair can be computed once, in large no-grad batches, and each training step
reads the logits of the very view each image received (`Batch.index`, `.shift`, `.flip`) instead of
running the teacher: 55k images x 25 views x 10 logits = 55 MB in float32.

Rules that keep it exact:
- used only when the teacher contributes logits alone (no loss term taps a teacher feature);
- keyed by everything the logits depend on: the teacher's weights (sha256) and net, its input
  normalisation, the data's fingerprint and training split, the views, how the table is computed
  and the run's precision (a bf16-mixed run's live teacher computes in bf16, and so does its table);
- every entry carries the sha256 of its logits, verified on every read: a damaged entry is moved aside
  and rebuilt, never trained on; a seeded sample of entries is also checked against the live teacher
  before use, and the first training batch of every fit again, within the tolerance of the precision;
- validation and test run the live teacher (validation once per image and fit: kdlab.teachers.validation).

When a run uses an entry, where it lives and when it is built: kdlab.teachers.cache.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from kdlab.data.fetch import aside_path
from kdlab.data.transforms import normalize, shift_images

log = logging.getLogger(__name__)

BUILD_BATCH = 4096  # at most this many images per teacher forward while building: large GEMMs
BUILD_ACTIVATION_BYTES = 32 * 2**20  # ...and fewer where the teacher's largest activation would outgrow this
SAMPLE = 512  # (image, view) pairs checked against the live teacher on every use
AUTOCAST = {"bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}  # precisions whose teacher runs under autocast


class TeacherOutputsError(RuntimeError):
    """Cached teacher outputs disagree with the live teacher even after a rebuild."""


def view_offsets(max_shift: int, flip: bool) -> Tensor:
    """(dy, dx, flip) of every view, in storage order: v = flip * side^2 + (dy + s) * side + (dx + s)."""
    r = torch.arange(-max_shift, max_shift + 1)
    shifts = torch.cartesian_prod(r, r)
    flips = [0, 1] if flip else [0]
    return torch.cat([torch.cat([shifts, torch.full((len(shifts), 1), f)], 1) for f in flips])


def tolerance(precision: Any) -> float:
    """rtol = atol of a cached logit against a live one: float32's 1e-4, or 4 eps of the autocast dtype."""
    dtype = AUTOCAST.get(str(precision))
    return 1e-4 if dtype is None else 4 * torch.finfo(dtype).eps


@dataclass
class TeacherOutputs:
    """The teacher's logits [N, V, C] for N training images in V views (shifts, x2 with flips)."""

    logits: Tensor
    max_shift: int
    flip: bool
    key: str = ""
    path: str = ""
    tolerance: float = 1e-4

    def __post_init__(self) -> None:
        views = len(view_offsets(self.max_shift, self.flip))
        if self.logits.ndim != 3 or self.logits.shape[1] != views:
            raise ValueError(f"TeacherOutputs: logits must be [images, {views} views, classes] for max_shift="
                             f"{self.max_shift}, flip={self.flip}; got {tuple(self.logits.shape)}")  # fmt: skip
        self._flat = self.logits.reshape(-1, self.logits.shape[2])

    @property
    def views(self) -> int:
        return self.logits.shape[1]

    def lookup(self, index: Tensor, shift: Tensor | None, flip: Tensor | None = None) -> Tensor:
        """float32 logits [B, C] of training images `index` seen with `shift` [B, 2] and `flip` [B] (None: none)."""
        s, side = self.max_shift, 2 * self.max_shift + 1  # the row of a view: see view_offsets
        view = torch.full_like(index, s * side + s) if shift is None else (shift[:, 0] + s) * side + shift[:, 1] + s
        if flip is not None:
            view = view + flip.long() * side * side
        if self._flat.device != index.device:  # once: the whole table moves to the training device
            self._flat = self._flat.to(index.device)
        return self._flat.index_select(0, index * self.views + view).float()


def logits_sha256(logits: Tensor) -> str:
    return hashlib.sha256(logits.contiguous().view(torch.uint8).numpy()).hexdigest()


@contextlib.contextmanager
def evaluating(net: nn.Module):
    """`net` in eval mode for the block (dropout off, batch-norm statistics fixed), then in its mode again."""
    was_training = net.training
    try:
        yield net.eval()
    finally:
        net.train(was_training)


def logits_of_views(teacher: nn.Module, images: Tensor, offsets: Tensor, norm: dict, precision: Any, device) -> Tensor:
    """float32 logits of uint8 `images`, each shifted (zero fill) and flipped by its row of `offsets` as the
    datamodule's augmentation would, then normalised by the teacher's `norm`: bitwise the training input."""
    x = shift_images(images, offsets[:, :2])
    x = torch.where(offsets[:, 2].bool().to(x.device)[:, None, None, None], x.flip(-1), x)
    dtype = AUTOCAST.get(str(precision))
    with torch.autocast(torch.device(device).type, dtype=dtype) if dtype is not None else contextlib.nullcontext():
        return teacher(normalize(x, norm["mean"], norm["std"])).float()


@torch.no_grad()
def build_batch_size(teacher: nn.Module, image_shape, device) -> int:
    """The largest batch (a power of two, at most BUILD_BATCH) whose largest activation fits BUILD_ACTIVATION_BYTES."""
    outputs: list = []  # of every leaf module, for one image
    leaves = [m for m in teacher.modules() if next(m.children(), None) is None]
    hooks = [m.register_forward_hook(lambda module, args, output: outputs.append(output)) for m in leaves]
    try:
        with evaluating(teacher):
            teacher(torch.zeros(1, *image_shape, device=device))
    finally:
        for hook in hooks:
            hook.remove()
    largest = max((out[0].numel() * out.element_size() for out in outputs if isinstance(out, Tensor)), default=0)
    fits = max(1, BUILD_ACTIVATION_BYTES // max(largest, 1))
    return min(BUILD_BATCH, 1 << (fits.bit_length() - 1))


@torch.no_grad()  # not inference_mode: the table must stay an ordinary tensor, usable in training
def compute_teacher_outputs(
    teacher: nn.Module, images: Tensor, max_shift: int, flip: bool, norm: dict, device="cpu",
    precision: Any = "32-true", batch_size: int | None = None,
) -> TeacherOutputs:  # fmt: skip
    """The teacher's logits for every image of `images` (uint8 [N, C, H, W]) in every view (logits_of_views)."""
    device = torch.device(device)
    batch_size = batch_size or build_batch_size(teacher, images.shape[1:], device)
    offsets = view_offsets(max_shift, flip)
    out: Tensor | None = None
    with evaluating(teacher):
        for start in range(0, len(images), batch_size):
            x = images[start : start + batch_size].to(device)
            for v, offset in enumerate(offsets):
                logits = logits_of_views(teacher, x, offset.expand(len(x), 3).to(device), norm, precision, device)
                if out is None:
                    out = torch.empty(len(images), len(offsets), logits.shape[1])
                out[start : start + len(x), v] = logits.cpu()
    return TeacherOutputs(out, max_shift, flip, tolerance=tolerance(precision))


@torch.no_grad()
def check_sample(outputs: TeacherOutputs, teacher: nn.Module, images: Tensor, norm: dict, device, precision,
                 seed: int, size: int = SAMPLE) -> tuple[bool, str]:  # fmt: skip
    """Compare `size` seeded (image, view) entries with the live teacher: (all within tolerance, details)."""
    generator = torch.Generator().manual_seed(seed)
    n, views = outputs.logits.shape[:2]
    index = torch.randint(0, n, (size,), generator=generator)
    view = torch.randint(0, views, (size,), generator=generator)
    offsets = view_offsets(outputs.max_shift, outputs.flip)[view]
    with evaluating(teacher):
        live = logits_of_views(teacher, images.index_select(0, index).to(device), offsets.to(device), norm, precision,
                               device).cpu()  # fmt: skip
    cached = outputs.logits[index, view].float()
    tol = outputs.tolerance
    error = (cached - live).abs()
    bad = error > tol + tol * live.abs()
    worst = float(error.max()) if size else 0.0
    if bool(bad.any()):
        i = int(bad.any(1).nonzero()[0])
        return False, (f"{int(bad.any(1).sum())} of {size} sampled entries differ, e.g. image {int(index[i])} in view "
                       f"{tuple(offsets[i].tolist())}: max |difference| {worst:.3g}")  # fmt: skip
    return True, f"{size} sampled entries match the live teacher (max |difference| {worst:.2g})"


# -- storage --------------------------------------------------------------------------------------------
def save(outputs: TeacherOutputs, path: Path) -> None:
    """Atomically, with the logits' sha256: readers see no entry or a complete one, and can check it."""
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    meta = {"key": outputs.key, "sha256": logits_sha256(outputs.logits), "max_shift": str(outputs.max_shift),
            "flip": str(int(outputs.flip))}  # fmt: skip
    save_file({"logits": outputs.logits.contiguous()}, str(tmp), metadata=meta)
    os.replace(tmp, path)


def load(path: Path, key: str, tol: float) -> TeacherOutputs | None:
    """The entry at `path`, checksum verified; None if absent. A damaged entry is moved aside (then rebuilt)."""
    from safetensors import safe_open

    if not path.is_file():
        return None
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            logits = f.get_tensor("logits")
        if meta.get("key") != key:
            raise ValueError(f"it holds key {meta.get('key')!r}")
        if (found := logits_sha256(logits)) != meta.get("sha256"):
            raise ValueError(
                f"its logits have sha256 {found[:16]}..., its header says {str(meta.get('sha256'))[:16]}..."
            )
        return TeacherOutputs(logits, int(meta["max_shift"]), bool(int(meta["flip"])), key, str(path), tol)
    except Exception as err:  # a truncated, altered or foreign file: never trained on
        aside = aside_path(path)
        with contextlib.suppress(OSError):
            os.replace(path, aside)
        log.warning(
            "The teacher-output entry %s is damaged (%s): moved aside to %s, rebuilding it.", path, err, aside.name
        )
        return None
