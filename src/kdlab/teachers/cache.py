"""When a run reads cached teacher outputs (kdlab.teachers.outputs) instead of running its teacher; how it gets them.

Used only when the teacher contributes logits alone (no loss term taps a teacher feature) and the run's
precision has a cached form; `runtime.teacher_cache=auto` builds a missing entry only when the run puts at
least as many images through the teacher as the build does, `on` always builds, `off` runs the teacher.
A run with `data.augment_affine` draws continuous views no entry can enumerate: `auto` runs its teacher live,
`on` is refused.
Each teacher net (an ensemble's members each) reads its own entry, beside its teacher
(`<teacher entry>/outputs/<key>.safetensors`, or `<teacher_dir>/outputs-by-sha256/<sha256[:16]>/` for a
teacher given by path), built once under a lock and checked against the live teacher before use.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from torch import Tensor

from kdlab.data.batches import derive_seed
from kdlab.identity import digest
from kdlab.locks import file_lock
from kdlab.teachers import outputs

log = logging.getLogger(__name__)
MODES = ("auto", "on", "off")
GPU = ("gpu", "cuda", "auto")  # trainer.accelerator values that run on a GPU when there is one
FULL = ("32-true", "32", 32)  # trainer.precision values that compute in float32
FORMAT_VERSION = 2  # bump when what an entry holds changes: older entries then miss
OUTPUTS_DIR = "outputs"  # inside a cached teacher's entry
BY_SHA_DIR = "outputs-by-sha256"  # under teacher_dir, for teachers given by path


def check_mode(mode: str, datamodule) -> None:
    """Refuse `runtime.teacher_cache=on` where no entry can be exact: continuous affine views."""
    if mode == "on" and datamodule.augment_affine is not None:
        raise ValueError(
            f"runtime.teacher_cache=on asks for cached teacher outputs, but data.augment_affine="
            f"{datamodule.augment_affine.to_dict()} distorts every training image by a continuous random transform, "
            "and a cache holds only the finitely many views of shifts and flips: no entry could hold the views this "
            "run trains on. Use runtime.teacher_cache=auto or off (the teacher then scores each batch's own "
            "augmented pixels live), or data.augment_affine=null to train on cacheable views."
        )


def why_live(cfg: DictConfig, module, datamodule, mode: str, precision: Any) -> str | None:
    """Why the teacher must run live for this run whatever the cache holds (None: its outputs can be cached)."""
    check_mode(mode, datamodule)
    if mode == "off":
        return "runtime.teacher_cache=off"
    if not OmegaConf.select(cfg, "train", default=True):
        return "nothing is trained (train=false)"
    if feature_terms := module.teacher_feature_terms():
        return f"the loss term(s) {', '.join(feature_terms)} read teacher features, which are not cached"
    if precision not in FULL and str(precision) not in outputs.AUTOCAST:
        return f"trainer.precision={precision} runs the whole teacher in that dtype"
    if datamodule.augment_affine is not None:
        return (
            "data.augment_affine draws continuous views, which no cache can enumerate: the teacher scores each "
            "training batch's own augmented pixels"
        )
    return None


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
    known = [per_epoch * epochs] if epochs not in (None, -1) else []
    known += [steps * batch] if steps not in (None, -1) else []
    return min(known) if known else None


def provide_teacher_outputs(cfg: DictConfig, module, datamodule, refs: list, teacher_dir: str) -> dict[str, Any]:
    """Give `module` the cached teacher outputs when they are exact for this run; build them first if absent.

    `refs` holds one TeacherRef per teacher net (an ensemble's members in order): each net reads its own
    entry, the one a single-teacher run of it uses too. Returns what the run record keeps.
    """
    mode = OmegaConf.select(cfg, "runtime.teacher_cache", default="auto")
    precision = OmegaConf.select(cfg, "trainer.precision", default="32-true")
    if (reason := why_live(cfg, module, datamodule, mode, precision)) is not None:
        log.info("The teacher runs live in training: %s.", reason)
        return {"used": False, "reason": reason}
    # The build runs on this process's GPU (LOCAL_RANK, as launchers set it) on a GPU run, else on the CPU.
    on_gpu = torch.cuda.is_available() and OmegaConf.select(cfg, "trainer.accelerator", default="cpu") in GPU
    device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0))) if on_gpu else torch.device("cpu")
    images, hp = train_images(datamodule), datamodule.hparams
    views = len(outputs.view_offsets(hp.augment_shift, hp.augment_flip))
    plans = []
    for i, (net, ref, norm) in enumerate(zip(module.teacher_nets, refs, module.teacher_norms, strict=True)):
        norm = norm or datamodule.static_spec.normalization
        net.to(device)
        batch = outputs.build_batch_size(net, images.shape[1:], device)
        key = digest({"format": FORMAT_VERSION, "teacher": ref.sha256, "net": module.teacher_net_config(i),
                      "norm": norm, "data": datamodule.spec.fingerprint, "split": [hp.val_size, hp.split_seed,
                      sorted(hp.exclude_classes)], "views": [hp.augment_shift, hp.augment_flip], "batch": batch,
                      "precision": str(precision)})  # fmt: skip
        folder = (Path(ref.checkpoint).parent / OUTPUTS_DIR if ref.key else
                  Path(teacher_dir).expanduser().resolve() / BY_SHA_DIR / ref.sha256[:16])  # fmt: skip
        plans.append((net, norm, key, folder / f"{key}.safetensors", batch))
    if mode == "auto" and any(not path.is_file() for *_, path, _ in plans):
        planned = planned_images(cfg, len(images))
        if planned is not None and planned < views * len(images):
            reason = (
                f"building the teacher's outputs ({views} views x {len(images)} images) would cost more teacher "
                f"forwards than this run's ~{planned} training images; runtime.teacher_cache=on builds them anyway"
            )
            log.info("The teacher runs live in training: %s.", reason)
            return {"used": False, "reason": reason}
    entries = [_provide_one(net, images, norm, key, path, batch, hp, device, precision)
               for net, norm, key, path, batch in plans]  # fmt: skip
    module.use_teacher_outputs([entry for entry, _ in entries])
    infos = [info for _, info in entries]
    return {"used": True, "members": infos} if module.is_ensemble else {"used": True, **infos[0]}


def _provide_one(net, images, norm, key, path, batch, hp, device, precision) -> tuple[outputs.TeacherOutputs, dict]:
    """One teacher net's entry: read (checksum and sample checked) or built, and what the record keeps of it."""
    started, built = time.perf_counter(), False
    try:  # a read-only cache still serves a run: the entry is then built in memory
        path.parent.mkdir(parents=True, exist_ok=True)
        writable = os.access(path.parent, os.W_OK)
    except OSError:
        writable = False
    with file_lock(path.parent / f".{key}.lock") if writable else contextlib.nullcontext():
        entry = outputs.load(path, key, outputs.tolerance(precision))
        for attempt in range(2):
            if entry is None:
                log.info("Computing the teacher's outputs for %d images x %d views (once) into %s", len(images),
                         len(outputs.view_offsets(hp.augment_shift, hp.augment_flip)), path)  # fmt: skip
                entry = outputs.compute_teacher_outputs(net, images, hp.augment_shift, hp.augment_flip, norm, device,
                                                        precision, batch)  # fmt: skip
                entry.key, entry.path = key, str(path)
                if writable:
                    outputs.save(entry, path)
                else:
                    log.warning(
                        "%s is not writable: the teacher outputs are kept in memory, for this run.", path.parent
                    )
                built = True
            seed = derive_seed(0, int(key[:12], 16))
            ok, detail = outputs.check_sample(entry, net, images, norm, device, precision, seed)
            if ok:
                break
            if attempt == 1:
                raise outputs.TeacherOutputsError(
                    f"The teacher outputs in {path} disagree with the live teacher right after being rebuilt: "
                    f"{detail}. The teacher is not a fixed function of its input here (a layer that stays random in "
                    "eval mode?). Run with runtime.teacher_cache=off."
                )
            log.warning("The cached teacher outputs %s do not match the live teacher (%s): rebuilding.", path, detail)
            entry = None
    seconds = time.perf_counter() - started
    log.info("Teacher outputs %s (%s; %s): training reads them instead of running the teacher.",
             f"built in {seconds:.1f} s" if built else "read from the cache", path, detail)  # fmt: skip
    return entry, {"key": key, "path": str(path), "built_s": round(seconds, 2) if built else None}


def train_images(datamodule) -> Tensor:
    """The uint8 training split exactly as the run will see it, without touching the datamodule's own state.

    A copy of the datamodule is set up (seed 0: the split does not depend on it), so the run's
    datamodule still resolves its seed when the Trainer sets it up (under DDP, shared from rank 0).
    """
    probe = type(datamodule)(**{**datamodule.hparams, "seed": 0})
    probe.setup("fit")
    return probe.data_train.x
