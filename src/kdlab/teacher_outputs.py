"""The frozen teacher's logits for every view of every training image, computed once and read during distillation.

A frozen teacher in eval mode is a fixed function of its input, and the shift augmentation has
finitely many views: (2s + 1)^2 shifts per image, 25 for s = 2. So its logits for every (training
image, shift) pair can be computed once, in large no-grad batches, and each training step reads the
logits of the very shift each image received (`Batch.index`, `Batch.shift`) instead of running the
teacher: 55k images x 25 views x 10 logits = 55 MB in float32.

Rules that keep it exact:
- used only when the teacher contributes logits alone (no loss term taps a teacher feature), the data
  is kdlab's MNISTDataModule (its augmentation is the shift, enumerable) and the batches carry
  `index`; otherwise the teacher runs live and the log says why, once;
- keyed by the teacher's weights (sha256) and architecture, the data's checksums, the training split
  (val_size, split_seed, exclude_classes), the shift and the normalisation: any change is a miss;
- every run checks a random sample of entries against the live teacher before using them, and the
  first training batch of every fit again; a mismatch beyond float tolerance rebuilds the entry once,
  and refuses to train if it persists;
- float16 storage (`runtime.teacher_cache_dtype=float16`) only where the check finds no changed
  argmax and a KD loss changed by < 1e-3 relative, else float32 is stored;
- validation and test always run the live teacher.

An ensemble's members each read their own entry, combined per batch as their live logits would be.
Entries live beside the teacher they came from: `<teacher entry>/outputs/<key>.safetensors` for a
cached teacher, `<teacher_dir>/outputs-by-sha256/<sha256[:16]>/<key>.safetensors` for a teacher given
as `teacher.ckpt_path`. Switch with `runtime.teacher_cache=auto|on|off`: `auto` reads an entry when there is
one and builds a missing one only when the run puts at least as many images through the teacher as the
build does (a smoke run or a 2-epoch probe runs the teacher live instead); `on` always builds.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from omegaconf import DictConfig, OmegaConf
from torch import Tensor, nn

from kdlab.config import plain
from kdlab.data.transforms import normalize
from kdlab.identity import digest
from kdlab.locks import file_lock
from kdlab.losses.logits import kd_divergence

log = logging.getLogger(__name__)

FORMAT_VERSION = 1  # bump when what an entry holds changes: older entries then miss
OUTPUTS_DIR = "outputs"  # inside a cached teacher's entry
BY_SHA_DIR = "outputs-by-sha256"  # under teacher_dir, for teachers given by path
BUILD_BATCH = 4096  # at most this many images per teacher forward while building: large GEMMs
# ...and fewer where the teacher's largest activation would outgrow this: at 4096 images a CNN's first
# conv maps take 400 MB, memory-bound; 256-image channels_last batches built it 1.86x faster (README, Speed).
BUILD_ACTIVATION_BYTES = 32 * 2**20
SAMPLE = 512  # (image, view) pairs checked against the live teacher on every use
TOLERANCE = {"float32": (1e-4, 1e-4), "float16": (2e-3, 2e-3)}  # (rtol, atol) of the checks, per storage
FP16_KD_RTOL = 1e-3  # float16 storage only if it moves the KD loss by less than this, relatively
MODES = ("auto", "on", "off")


class TeacherOutputsError(RuntimeError):
    """Cached teacher outputs disagree with the live teacher even after a rebuild."""


def shift_offsets(max_shift: int) -> Tensor:
    """The (dy, dx) of every view, in storage order: view v = (dy + s) * (2s + 1) + (dx + s)."""
    r = torch.arange(-max_shift, max_shift + 1)
    return torch.cartesian_prod(r, r)


@dataclass
class TeacherOutputs:
    """The teacher's logits [N, V, C] for N training images in V = (2s + 1)^2 shifted views."""

    logits: Tensor
    max_shift: int
    key: str = ""
    path: str = ""

    def __post_init__(self) -> None:
        side = 2 * self.max_shift + 1
        if self.logits.ndim != 3 or self.logits.shape[1] != side * side:
            raise ValueError(
                f"TeacherOutputs: logits must be [images, {side * side} views, classes] for max_shift="
                f"{self.max_shift}, got {tuple(self.logits.shape)}"
            )
        self._flat = self.logits.reshape(-1, self.logits.shape[2])

    @property
    def views(self) -> int:
        return self.logits.shape[1]

    @property
    def tolerance(self) -> tuple[float, float]:
        return TOLERANCE["float16" if self.logits.dtype == torch.float16 else "float32"]

    def lookup(self, index: Tensor, shift: Tensor | None) -> Tensor:
        """float32 logits [B, C] of images `index` (positions in the training split) shifted by `shift` [B, 2].

        `shift` None means unshifted. A handful of tensor ops on the batch's device, no host sync.
        """
        if self._flat.device != index.device:  # once: the whole table moves to the training device
            self._flat = self._flat.to(index.device)
        s, side = self.max_shift, 2 * self.max_shift + 1
        if shift is None:
            rows = index * self.views + (s * side + s)
        else:
            rows = index * self.views + (shift[:, 0] + s) * side + (shift[:, 1] + s)
        return self._flat.index_select(0, rows).float()


def shift_all(x: Tensor, dy: int, dx: int, fill: float = 0.0) -> Tensor:
    """Every image of `x` [B, C, H, W] moved by the same (dy, dx), the uncovered border set to `fill`:
    `out[r, c] = x[r - dy, c - dx]` as kdlab.data.shift_images computes it, by slicing instead of a gather."""
    h, w = x.shape[-2:]
    p = max(abs(dy), abs(dx))
    if p == 0:
        return x
    padded = F.pad(x, (p, p, p, p), value=fill)  # padded[r + p, c + p] == x[r, c]
    return padded[..., p - dy : p - dy + h, p - dx : p - dx + w]


@dataclass(frozen=True)
class BuildSettings:
    """How the table is computed: part of the entry's key, since either may move the last bits of a logit."""

    batch_size: int
    channels_last: bool  # conv teachers: NHWC convolutions, faster on CPU here (and what GPUs prefer)


@torch.no_grad()
def build_settings(teacher: nn.Module, image_shape: Sequence[int], device: torch.device | str = "cpu") -> BuildSettings:
    """The largest batch (a power of two, at most BUILD_BATCH) whose largest activation fits BUILD_ACTIVATION_BYTES."""
    largest = 0

    def measure(module, inputs, output) -> None:
        nonlocal largest
        if isinstance(output, Tensor):
            largest = max(largest, output[0].numel() * output.element_size())

    leaves = [m for m in teacher.modules() if next(m.children(), None) is None]
    hooks = [m.register_forward_hook(measure) for m in leaves]
    was_training = teacher.training
    teacher.eval()
    try:
        teacher(torch.zeros(1, *image_shape, device=device))
    finally:
        teacher.train(was_training)
        for hook in hooks:
            hook.remove()
    fits = max(1, BUILD_ACTIVATION_BYTES // max(largest, 1))
    batch_size = min(BUILD_BATCH, 1 << (fits.bit_length() - 1))
    return BuildSettings(batch_size, channels_last=any(p.dim() == 4 for p in teacher.parameters()))


@torch.no_grad()  # not inference_mode: the table must stay an ordinary tensor, usable in training
def compute_teacher_outputs(
    teacher: nn.Module,
    images: Tensor,
    max_shift: int,
    mean: float,
    std: float,
    device: torch.device | str = "cpu",
    settings: BuildSettings | None = None,
) -> TeacherOutputs:
    """The teacher's logits for every image of `images` (uint8 [N, 1, H, W]) in every shifted view.

    The inputs are bitwise those of training, which shifts the uint8 image (zero fill) and then
    normalises: normalising first and filling the border with normalize(0) moves the very same floats.
    `settings` None: `build_settings(teacher)`. The teacher itself is left as it was.
    """
    settings = settings or build_settings(teacher, images.shape[1:], device)
    layout = torch.channels_last if settings.channels_last else torch.contiguous_format
    net = copy.deepcopy(teacher).eval().to(memory_format=layout)  # a copy: the live teacher keeps its layout
    offsets = shift_offsets(max_shift).tolist()
    fill = float(normalize(torch.zeros(1, dtype=torch.uint8), mean, std))
    n = len(images)
    out: Tensor | None = None
    for start in range(0, n, settings.batch_size):
        x = normalize(images[start : start + settings.batch_size].to(device), mean, std)
        for view, (dy, dx) in enumerate(offsets):
            logits = net(shift_all(x, dy, dx, fill).contiguous(memory_format=layout)).float()
            if out is None:
                out = torch.empty(n, len(offsets), logits.shape[1])
            out[start : start + len(x), view] = logits.cpu()
    return TeacherOutputs(out, max_shift)


@torch.no_grad()
def check_sample(
    outputs: TeacherOutputs, teacher: nn.Module, images: Tensor, mean: float, std: float, device, size: int = SAMPLE
) -> tuple[bool, str]:
    """Compare `size` random (image, view) entries with the live teacher: (all within tolerance, details)."""
    generator = torch.Generator().manual_seed(int.from_bytes(os.urandom(8), "little") >> 1)
    n, views = outputs.logits.shape[:2]
    index = torch.randint(0, n, (size,), generator=generator)
    view = torch.randint(0, views, (size,), generator=generator)
    shift = shift_offsets(outputs.max_shift)[view]
    live = _live(teacher, images, index, shift, mean, std, device)
    cached = outputs.logits[index, view].float()
    rtol, atol = outputs.tolerance
    error = (cached - live).abs()
    bad = error > atol + rtol * live.abs()
    worst = float(error.max()) if size else 0.0
    if bool(bad.any()):
        i = int(bad.any(1).nonzero()[0])
        return False, (
            f"{int(bad.any(1).sum())} of {size} sampled entries differ, e.g. image {int(index[i])} shifted by "
            f"{tuple(shift[i].tolist())}: max |difference| {worst:.3g}"
        )
    return True, f"{size} sampled entries match the live teacher (max |difference| {worst:.2g})"


def _live(teacher: nn.Module, images: Tensor, index: Tensor, shift: Tensor, mean, std, device) -> Tensor:
    from kdlab.data.transforms import shift_images

    was_training = teacher.training
    teacher.eval()
    try:
        x = shift_images(images.index_select(0, index).to(device), shift.to(device))
        return teacher(normalize(x, mean, std)).float().cpu()
    finally:
        teacher.train(was_training)


def to_float16_if_harmless(outputs: TeacherOutputs, temperatures: Sequence[float], student_logits: Tensor) -> bool:
    """Store float16 only if that changes no argmax and the KD loss by < FP16_KD_RTOL relative (else keep float32).

    The KD loss is measured at every temperature in use against `student_logits` [N, C] (the run's
    student on a sample of the entries, see `provide_teacher_outputs`) for the sampled entries.
    """
    full = outputs.logits
    half = full.half()
    if not torch.equal(full.argmax(-1), half.argmax(-1)):
        return False
    sample = full.reshape(-1, full.shape[-1])[: len(student_logits)]
    sample_half = half.reshape(-1, full.shape[-1])[: len(student_logits)].float()
    for t in temperatures or (1.0,):
        exact = kd_divergence(student_logits, sample, t)
        rounded = kd_divergence(student_logits, sample_half, t)
        if abs(float(rounded - exact)) > FP16_KD_RTOL * abs(float(exact)):
            return False
    outputs.logits = half
    outputs.__post_init__()
    return True


# -- storage --------------------------------------------------------------------------------------------
def save(outputs: TeacherOutputs, path: Path, metadata: dict[str, str]) -> None:
    """Atomically: readers see no entry or a complete one."""
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    save_file(
        {"logits": outputs.logits.contiguous()}, str(tmp), metadata={**metadata, "max_shift": str(outputs.max_shift)}
    )
    os.replace(tmp, path)


def load(path: Path, key: str) -> TeacherOutputs | None:
    """The entry at `path`, or None if absent or unreadable (it is then rebuilt)."""
    from safetensors import safe_open

    if not path.is_file():
        return None
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            logits = f.get_tensor("logits")
        if meta.get("key") != key:
            raise ValueError(f"it holds key {meta.get('key')!r}")
        return TeacherOutputs(logits, int(meta["max_shift"]), key=key, path=str(path))
    except Exception as err:  # a truncated or foreign file: rebuild rather than fail the run
        log.warning("Ignoring the teacher-output cache entry %s (%s); it is rebuilt.", path, err)
        return None


# -- what a run asks for ------------------------------------------------------------------------------
def outputs_key(
    teacher_sha256: str, teacher_model: Any, data: dict[str, str], datamodule, max_shift: int, build: BuildSettings
) -> str:
    """Everything the stored logits depend on; any change gives another entry."""
    hp = datamodule.hparams
    return digest(
        {
            "format": FORMAT_VERSION,
            "teacher": teacher_sha256,
            "teacher_model": plain(teacher_model),
            "data": dict(data),
            "split": {"val_size": hp.val_size, "split_seed": hp.split_seed, "exclude": sorted(hp.exclude_classes)},
            "augment_shift": max_shift,
            "normalize": {"mean": float(hp.mean), "std": float(hp.std)},
            "build": {"batch_size": build.batch_size, "channels_last": build.channels_last},
        }
    )


def outputs_folder(teacher_dir: str | os.PathLike, teacher) -> Path:
    """Beside the cached teacher (its entry folder), or under teacher_dir by the sha256 of a teacher given by path."""
    if getattr(teacher, "key", None):
        return Path(teacher.checkpoint).parent / OUTPUTS_DIR
    return Path(teacher_dir).expanduser().resolve() / BY_SHA_DIR / teacher.sha256[:16]


def why_live(cfg: DictConfig, module, datamodule) -> str | None:
    """Why the teacher must run live for this run (None: its outputs can be cached)."""
    from kdlab.data import MNISTDataModule

    mode = OmegaConf.select(cfg, "runtime.teacher_cache", default="auto")
    if mode not in MODES:
        raise ValueError(
            f"runtime.teacher_cache={mode!r} is not one of {', '.join(MODES)}: 'auto' reads the teacher's logits "
            "from a cache when that is exact and builds one when that costs no more than this run's live teacher, "
            "'on' always builds it, 'off' always runs the teacher."
        )
    if mode == "off":
        return "runtime.teacher_cache=off"
    if not OmegaConf.select(cfg, "train", default=True):
        return "nothing is trained (train=false)"
    if not hasattr(module, "use_teacher_outputs"):
        return f"{type(module).__name__} cannot read cached teacher outputs"
    if feature_terms := module.teacher_feature_terms():
        return f"the loss term(s) {', '.join(feature_terms)} read teacher features, which are not cached"
    same_views = isinstance(datamodule, MNISTDataModule) and all(
        getattr(type(datamodule), hook) is getattr(MNISTDataModule, hook)
        for hook in ("preprocess_batch", "on_after_batch_transfer", "on_before_batch_transfer")
    )
    if not same_views:  # only MNISTDataModule's own augmentation, the shift, is known to be enumerable
        return f"the data ({type(datamodule).__name__}) may augment in ways kdlab cannot enumerate"
    return None


def provide_teacher_outputs(cfg: DictConfig, module, datamodule, data: dict[str, str], teacher) -> dict[str, Any]:
    """Give `module` the cached teacher outputs when they are exact for this run; build them first if absent.

    `teacher` is the run's TeacherRef, or an ensemble's list of them: each member then reads its own
    entry (the one a single-teacher run of that member uses too). Returns what the run record keeps:
    whether they are used, and the entry (key, path, dtype), the members' entries, or why not.
    """
    reason = why_live(cfg, module, datamodule)
    if reason is not None:
        log.info("The teacher runs live in training: %s.", reason)
        return {"used": False, "reason": reason}
    dtype = OmegaConf.select(cfg, "runtime.teacher_cache_dtype", default="float32")
    if dtype not in TOLERANCE:
        raise ValueError(f"runtime.teacher_cache_dtype={dtype!r}: use float32 or float16")
    if getattr(module, "is_ensemble", False):
        nets, refs, models = list(module.teacher.members), list(teacher), [m.model for m in cfg.teacher.members]
    else:
        nets, refs, models = [module.teacher], [teacher], [cfg.teacher.model]
    device = _device(cfg)
    images = train_images(datamodule)
    max_shift = int(datamodule.hparams.augment_shift)
    nets = [net.to(device) for net in nets]
    places = [entry_place(cfg, datamodule, data, images, net, ref, model, device)
              for net, ref, model in zip(nets, refs, models, strict=True)]  # fmt: skip
    missing = sum(not path.is_file() for _, path, _ in places)
    if missing and OmegaConf.select(cfg, "runtime.teacher_cache") == "auto":
        views, planned = (2 * max_shift + 1) ** 2, planned_images(cfg, len(images))
        if planned is not None and planned < views * len(images):
            reason = (
                f"building the teacher's outputs ({views} views x {len(images)} images) would cost more teacher "
                f"forwards than this run's ~{planned} training images; runtime.teacher_cache=on builds them anyway"
            )
            log.info("The teacher runs live in training: %s.", reason)
            return {"used": False, "reason": reason}
    entries = [
        _provide_one(module, datamodule, images, net, key, path, build, dtype, device)
        for (key, path, build), net in zip(places, nets, strict=True)
    ]
    module.use_teacher_outputs([outputs for outputs, _ in entries])
    infos = [info for _, info in entries]
    return {"used": True, "members": infos} if getattr(module, "is_ensemble", False) else {"used": True, **infos[0]}


def planned_images(cfg: DictConfig, n_train: int) -> int | None:
    """About how many training images this run puts through the teacher (None: unknown), from its Trainer limits."""
    batch = int(OmegaConf.select(cfg, "data.batch_size", default=0) or 0)
    trainer = OmegaConf.select(cfg, "trainer", default=None)
    if not batch or trainer is None:
        return None
    if fast := trainer.get("fast_dev_run"):
        return (1 if fast is True else int(fast)) * batch
    limit = trainer.get("limit_train_batches")
    if isinstance(limit, float):  # Lightning: a float is a fraction of the epoch, an int a number of batches
        per_epoch = int(n_train * limit)
    else:
        per_epoch = n_train if limit is None else min(n_train, int(limit) * batch)
    epochs, steps = trainer.get("max_epochs"), trainer.get("max_steps")
    known = []
    if epochs not in (None, -1):
        known.append(per_epoch * epochs)
    if steps not in (None, -1):
        known.append(steps * batch)
    return min(known) if known else None


def entry_place(cfg, datamodule, data, images, net, ref, model, device) -> tuple[str, Path, BuildSettings]:
    """One teacher net's entry: its key, its file and how it is built."""
    build = build_settings(net, images.shape[1:], device)
    key = outputs_key(ref.sha256, model, data, datamodule, int(datamodule.hparams.augment_shift), build)
    return key, outputs_folder(cfg.paths.teacher_dir, ref) / f"{key}.safetensors", build


def _provide_one(module, datamodule, images, net, key, path, build, dtype, device) -> tuple[TeacherOutputs, dict]:
    """One teacher net's entry: read (and checked) or built, and what the record keeps of it."""
    max_shift = int(datamodule.hparams.augment_shift)
    mean, std = datamodule.hparams.mean, datamodule.hparams.std
    started = time.perf_counter()
    built = False
    writable = _writable(path.parent)
    with file_lock(path.parent / f".{key}.lock") if writable else contextlib.nullcontext():
        outputs = load(path, key)
        for attempt in range(2):
            if outputs is None:
                log.info("Computing the teacher's outputs for %d images x %d views (once) into %s",
                         len(images), (2 * max_shift + 1) ** 2, path)  # fmt: skip
                outputs = compute_teacher_outputs(net, images, max_shift, mean, std, device, build)
                outputs.key, outputs.path = key, str(path)
                if dtype == "float16":
                    student = _student_sample(module.net, images, max_shift, mean, std, device)
                    if not to_float16_if_harmless(outputs, _temperatures(module), student):
                        log.info("float16 would change the teacher's argmax or the KD loss by >= %g: storing float32.",
                                 FP16_KD_RTOL)  # fmt: skip
                if writable:
                    save(outputs, path, {"key": key})
                else:
                    log.warning(
                        "%s is not writable: the teacher outputs are kept in memory for this run only.", path.parent
                    )
                built = True
            ok, detail = check_sample(outputs, net, images, mean, std, device)
            if ok:
                break
            if attempt == 1:
                raise TeacherOutputsError(
                    f"The teacher outputs in {path} disagree with the live teacher right after being rebuilt: "
                    f"{detail}. The teacher is not a fixed function of its input here (a layer that stays random "
                    "in eval mode?). Run with runtime.teacher_cache=off."
                )
            log.warning("The cached teacher outputs %s do not match the live teacher (%s): rebuilding.", path, detail)
            outputs = None
    seconds = time.perf_counter() - started
    stored = str(outputs.logits.dtype).removeprefix("torch.")
    how = f"built in {seconds:.1f} s" if built else "read from the cache"
    log.info("Teacher outputs %s (%s, %s; %s): training reads them instead of running the teacher.",
             how, path, stored, detail)  # fmt: skip
    info = {"key": key, "path": str(path), "dtype": stored, "built_s": round(seconds, 2) if built else None}
    return outputs, info


def train_images(datamodule) -> Tensor:
    """The uint8 training split exactly as the run will see it, without touching the datamodule's own state.

    A copy of the datamodule is set up (seed 0: the split does not depend on it), so the run's
    datamodule still resolves its seed when the Trainer sets it up (under DDP, shared from rank 0).
    """
    hp = dict(datamodule.hparams)
    hp["seed"] = 0
    probe = type(datamodule)(**hp)
    probe.setup("fit")
    return probe.data_train.x


def _temperatures(module) -> list[float]:
    return sorted({float(t.temperature) for t in module.losses.values() if getattr(t, "temperature", None)})


@torch.no_grad()
def _student_sample(net: nn.Module, images: Tensor, max_shift: int, mean: float, std: float, device) -> Tensor:
    """The run's student on the first SAMPLE entries in storage order (image 0's views, image 1's, ...)."""
    from kdlab.data.transforms import shift_images

    offsets = shift_offsets(max_shift)
    n = -(-SAMPLE // len(offsets))
    x = images[:n].to(device).repeat_interleave(len(offsets), 0)
    shift = offsets.repeat(n, 1).to(device)
    was_training = net.training
    net.eval()
    try:
        return net.to(device)(normalize(shift_images(x, shift), mean, std)).float().cpu()
    finally:
        net.train(was_training)


def _device(cfg: DictConfig) -> torch.device:
    accelerator = OmegaConf.select(cfg, "trainer.accelerator", default="cpu")
    if accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available()):
        return torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")
    return torch.device("cpu")


def _writable(folder: Path) -> bool:
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError:
        return False
    return os.access(folder, os.W_OK)
