"""Speed of kdlab's training loop against hand-written PyTorch loops of the same math, side by side.

    make bench                                        # = python scripts/benchmark.py --json outputs/bench.json
    python scripts/benchmark.py --batch-sizes 128 --rows 'distill/*' --repeats 5
    python scripts/benchmark.py --quick --data-dir data/mnist   # a smoke run: tiny epochs, one repeat
    python scripts/benchmark.py --time-to-accuracy              # seconds to a validation accuracy (below)

`--data-dir` is the folder of the MNIST files (data.data_dir). Generated stand-ins (tests/conftest.py's
write_synthetic_mnist) have no published checksums: add `--override data.verify=false`, and
`--override data.val_size=<n>` below their training images.

Each row trains for `--epochs` epochs and is timed in its steady state only: from training step
`--warmup` on to the end of training (validation and checkpoints of every epoch included where the
row has them). Process start, config composition, Trainer setup, the sanity check and the warm-up
steps are timed apart (`setup_s`, `warmup_s`). Rows run interleaved (every row once, then every row
again, `--repeats` times), so a change of machine load hits them alike; medians are reported. Every row
computes with the same torch thread count (`--threads`, as runtime.threads).

Rows, per family (`distill` = distill_mlp, `scratch` = student_scratch_mlp, `teacher` = train_teacher_mlp):
    plain        a hand-written loop of the same math: in-memory uint8 batches, kdlab's own
                 random_shift/random_flip/normalize, the same nets, CE (+ KD) written out, AdamW + one-cycle
    lightning    the plain loop's step as the smallest LightningModule (its net, loss, optimiser and
                 schedule, kdlab's datamodule) through the same bare Trainer: Lightning's own cost per step
    bare         kdlab's LightningModule through a bare Trainer (no logger, bar, checkpoints, validation)
    plain+val    the plain loop plus a plain validation pass per epoch
    kdlab        kdlab as train.py runs it (kdlab.run.train): the experiment's callbacks with the Rich bar
                 rendering as in a terminal, TensorBoard, checkpoints, validation every epoch
The `distill-cached` family reads the teacher's logits from the teacher-output cache instead of running
the teacher (kdlab.teachers.outputs); `distill` rows run it live. The plain and bare cached rows read one
table the benchmark builds at the start (`teacher_cache.build_s`); the kdlab row builds its own cache entry
as train.py does (runtime.teacher_cache=on), in its first repeat's setup. `bare bf16-mixed` and `bare compile`
rows measure CPU mixed precision and a compiled student, `bare fused` the opt-in fused optimiser
(`+optimizer.fused=true`), each against `bare` at the same batch size.

Time to accuracy (`--time-to-accuracy`): what a researcher waits for, the whole run.
    python scripts/benchmark.py --time-to-accuracy --json outputs/tta.json --plot outputs/tta.png
    python scripts/benchmark.py --time-to-accuracy --recipes distill_mlp --presets fast --target distill_mlp=98.5
For each recipe (`--recipes`: train_teacher_mlp, student_scratch_mlp, distill_mlp and their digits
counterparts) and preset (`--presets`: standard = the experiment, fast = `<experiment>_fast`), two rows
(and `levers`: the fast preset's levers one at a time, kdlab rows only; see LEVERS):
    kdlab   kdlab.run.train on the experiment's config, as train.py runs it (test=true, its callbacks, the
            Rich bar as in a terminal, TensorBoard, checkpoints), in a fresh run folder every repeat
    plain   the hand-written loop above with the recipe's net, batch size, epochs, optimiser and per-step
            schedule, validated on the same validation split after the same epochs (the recipe's
            trainer.check_val_every_n_epoch: which epoch is tested depends on it), then testing the weights of
            its best validation (the first best, as kdlab's checkpoint keeps). Settings that only change speed
            (precision, compile) are not copied: it runs float32 in eager mode, on the whole validation split.
Each row's figures, in seconds of wall time (time.perf_counter) counted from the run's start:
    kdlab   start = the call of kdlab.run.train (the process's start-up, imports and config composition,
            alike for every run a user starts, are not in it); so every figure includes claiming the run
            folder, checking the config, reading and fingerprinting the data, provisioning the teacher from
            its cache, the Trainer's setup and sanity check. A validation's time is stamped by a callback
            (ValidationCurve, added as `+callbacks.bench_curve`) at Lightning's on_validation_end: after
            val/acc is computed and logged, exact to the call (the epoch lines' timestamps are whole
            seconds, printed after the checkpoints); the epoch's checkpoint writes come after the stamp.
            `total_s` = until kdlab.run.train returns: fit, the test of the best checkpoint, the run's
            record and files.
    plain   start = before the data is read (by kdlab's own datamodule, the same reading and checks);
            then loading the teacher's weights, building the net and optimiser. A validation's time is taken
            when its accuracy is known; `total_s` includes the test pass of the best epoch's weights.
`to_target_s` = the time of the first validation whose accuracy reaches the recipe's target (`--target
EXPERIMENT=PCT`; defaults in TTA_TARGETS), null when none does (never 0); medians count a miss as slower
than any time, so a median is null when most repeats missed. `test_acc` is the run's test accuracy (median).
Distillations: before any timed run, an untimed first pass (one kdlab epoch) trains the teacher into the
cache of `--teacher-dir` (default: kdlab's paths.teacher_dir, which train.py uses) if it is not there,
and builds its teacher-output entry unless the preset sets runtime.teacher_cache=off; the timed kdlab runs
find both cached (reading and checking them is in their time). The plain loop reads the same logits from
a table built in memory in that first pass, only when kdlab read its entry (checked on every run).
Rows run interleaved (every row once, then again, `--repeats` times); medians; a table on stdout (kdlab's
time to target over the plain loop's, and the fast preset's over the standard one's), `--json` the runs
with their curves, `--plot` accuracy against seconds (matplotlib: the `plots` extra).
`--quick` with it: one repeat of runs (and teachers) of 2 epochs (or k, for a preset validating every k):
checks the script, measures nothing.

Absolute numbers depend on the machine and its load: read the ratios, measured in one process.
"""

from __future__ import annotations

import argparse
import contextlib
import fnmatch
import gc
import io
import itertools
import json
import math
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf, open_dict

from kdlab.checkpoints import load_weights
from kdlab.config import CONFIG_DIR, compose_config
from kdlab.console import quiet_libraries
from kdlab.data import AffineAugment, normalize, random_affine, random_flip, random_shift
from kdlab.losses.logits import kd_divergence
from kdlab.models import build_net
from kdlab.modules.schedulers import bind_scheduler
from kdlab.run import REFUSALS, train
from kdlab.run.fit import count_params
from kdlab.run.threads import ThreadPlan, apply_threads, plan_threads
from kdlab.teachers.outputs import compute_teacher_outputs

FAMILIES = {"distill": "distill_mlp", "distill-cached": "distill_mlp", "scratch": "student_scratch_mlp",
            "teacher": "train_teacher_mlp"}  # fmt: skip
KINDS = ("plain", "lightning", "bare", "plain+val", "kdlab")
EXTRA_KINDS = ("bare bf16-mixed", "bare compile", "bare fused")
QUICK_ROWS = "distill/*,distill-cached/*,scratch/kdlab"
TARGETS = {  # (numerator row, denominator row, batch size): the ratio kdlab must reach (issue 9)
    "kdlab as users run it / plain+val, live teacher, 128": ("distill/kdlab", "distill/plain+val", 128, 0.85),
    "kdlab as users run it / plain+val, live teacher, 512": ("distill/kdlab", "distill/plain+val", 512, 0.92),
    "bare Trainer / plain, live teacher, 128": ("distill/bare", "distill/plain", 128, 0.90),
}


# -- timing ---------------------------------------------------------------------------------------------
@dataclass
class Timing:
    """One run of one row: images trained in the timed window and its seconds."""

    images: int
    seconds: float
    cpu_s: float  # CPU time of this process (all its threads) in the same window: robust to other load
    setup_s: float  # from the row's start to its first training step (Trainer setup, sanity check, ...)
    warmup_s: float  # the first `warmup` steps, not in `seconds`

    @property
    def rate(self) -> float:
        return self.images / self.seconds

    @property
    def cpu_rate(self) -> float:
        """Images per CPU-second: on a shared machine, where wall time is noise, the cost that remains."""
        return self.images / self.cpu_s


def _sync(device: torch.device | str) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


class Clock(L.Callback):
    """Times a fit: setup until the first step, `warmup` steps, then the steady state to the end of training.

    The steady state ends at `on_train_end`, after the last epoch's validation and checkpoints.
    """

    def __init__(self, warmup: int = 20, started: float | None = None) -> None:
        self.warmup = warmup
        self.started = time.perf_counter() if started is None else started
        self.steps, self.images = 0, 0
        self.first = self.start = self.end = None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if self.first is None:
            self.first = time.perf_counter()
        if self.steps == self.warmup:
            _sync(pl_module.device)
            self.start, self.cpu_start = time.perf_counter(), time.process_time()
        if self.steps >= self.warmup:
            self.images += len(batch.y)
        self.steps += 1

    def on_train_end(self, trainer, pl_module) -> None:
        _sync(pl_module.device)
        self.end, self.cpu_end = time.perf_counter(), time.process_time()

    def timing(self) -> Timing:
        if self.start is None or self.end is None:
            raise RuntimeError(f"the fit ran {self.steps} steps, fewer than the {self.warmup} warm-up steps")
        return Timing(
            self.images,
            self.end - self.start,
            self.cpu_end - self.cpu_start,
            self.first - self.started,
            self.start - self.first,
        )


# -- the plain loops --------------------------------------------------------------------------------------
@dataclass
class Bench:
    """What every row shares: settings, threads, configs, data, the teacher file and the teacher-output cache."""

    args: argparse.Namespace
    root: Path
    device: torch.device
    teacher_ckpt: str
    threads: ThreadPlan
    configs: dict[tuple[str, int, tuple[str, ...]], DictConfig] = field(default_factory=dict)
    data: Any = None  # a set-up datamodule (conf/data/mnist.yaml), for the plain loops
    outputs: dict[str, Any] = field(default_factory=dict)  # the cached teacher logits, once built
    runs: Iterator[int] = field(default_factory=itertools.count)  # numbers the kdlab rows' run folders
    datasets: dict[str, Any] = field(default_factory=dict)  # time to accuracy: datamodules read, by data config
    teachers: dict[str, dict] = field(default_factory=dict)  # time to accuracy: each distillation's teacher

    def config(self, family: str, batch_size: int) -> DictConfig:
        return self.variant(family, batch_size, ())

    def variant(self, family: str, batch_size: int, extra: tuple[str, ...]) -> DictConfig:
        """The row's config with `extra` overrides, composed once: every repeat of a row reuses it."""
        if (family, batch_size, extra) not in self.configs:
            self.configs[family, batch_size, extra] = compose(self, family, batch_size, extra)
        return self.configs[family, batch_size, extra]

    @property
    def steps_per_epoch(self) -> int | None:
        return self.args.steps_per_epoch

    def net(self, config: DictConfig) -> torch.nn.Module:
        """A net config built for the data (its input shape and classes), as kdlab's systems build it."""
        spec = self.data.static_spec
        return build_net(config, spec.input_shape, spec.num_classes)


def compose(bench: Bench, family: str, batch_size: int, extra: tuple[str, ...] = (), folder: str = "") -> DictConfig:
    args = bench.args
    overrides = [
        f"experiment={FAMILIES[family]}",
        f"data.data_dir={args.data_dir}",
        f"data.batch_size={batch_size}",
        f"trainer.max_epochs={args.epochs}",
        "test=false",
        *args.override,
        *extra,
    ]
    if family.startswith("distill"):
        overrides.append(f"teacher.ckpt_path={bench.teacher_ckpt}")
    if bench.steps_per_epoch:
        overrides.append(f"trainer.limit_train_batches={bench.steps_per_epoch}")
        overrides.append(f"trainer.limit_val_batches={val_batches(bench, batch_size)}")
    return compose_run(bench, overrides, folder or f"{family}-{batch_size}")


def compose_run(bench: Bench, overrides: list[str], folder: str) -> DictConfig:
    """A kdlab run's config with `overrides`, writing into the bench's folder `runs/<folder>`, with its threads."""
    head = [f"paths.root_dir={bench.root}", f"runtime.threads={bench.threads.threads}"]
    tail = ["trainer=gpu"] if bench.args.device == "cuda" else []
    cfg = compose_config([*head, *overrides, *tail], return_hydra_config=True)
    with open_dict(cfg):
        cfg.paths.output_dir = str(bench.root / "runs" / folder)
        cfg.hydra.runtime.output_dir = cfg.paths.output_dir
    return cfg


def val_batches(bench: Bench, batch_size: int) -> int:
    """With shortened epochs, validation shrinks in proportion, so its share of an epoch stays the real one."""
    dm = bench.data
    full_steps = -(-len(dm.data_train) // batch_size)
    full_val = -(-len(dm.data_val) // dm.hparams.eval_batch_size)
    return max(1, round(full_val * bench.steps_per_epoch / full_steps))


def kd_terms(cfg: DictConfig) -> tuple[float, float, float]:
    """(CE weight, KD weight, temperature) of a distillation config, for the plain loops' hand-written loss."""
    losses = cfg.distill.losses
    active = sorted(name for name, term in losses.items() if term is not None and term.weight)
    if active != ["ce", "kd"] or losses.ce.get("label_smoothing"):
        raise SystemExit(f"benchmark: the plain loops write out CE + KD (no label smoothing); this config's terms are "
                         f"{active}, so they would not time the same math as kdlab.")  # fmt: skip
    return float(losses.ce.weight), float(losses.kd.weight), float(losses.kd.temperature)


def plain_loss(logits: torch.Tensor, y: torch.Tensor, t_logits: torch.Tensor | None, terms) -> torch.Tensor:
    """kdlab's training loss, written out: cross-entropy alone, or w_ce CE + w_kd KD with a teacher's logits."""
    if t_logits is None:
        return F.cross_entropy(logits, y)
    w_ce, w_kd, temperature = terms
    return w_ce * F.cross_entropy(logits, y) + w_kd * kd_divergence(logits, t_logits, temperature)


@dataclass
class PlainLoop:
    """One hand-written training run: no framework, the same nets, data, augmentation, losses and optimiser."""

    net: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: Any  # a per-step LR scheduler, or None
    teacher: torch.nn.Module | None  # a distillation's frozen teacher (validation always runs it live)
    cached: Any  # the teacher's cached logits (TeacherOutputs) read in training instead of running it, or None
    terms: tuple[float, float, float] | None  # (CE weight, KD weight, temperature) of a distillation
    x_train: torch.Tensor  # uint8 images, on the device
    y_train: torch.Tensor
    steps: int  # training steps per epoch
    batch_size: int
    eval_batch_size: int
    shift: int
    flip: bool
    affine: Any  # the recipe's AffineAugment (kdlab.data.affine), or None
    mean: Any
    std: Any
    generator: torch.Generator  # the augmentation's


def plain_loop(
    cfg: DictConfig, dm, device: torch.device, epochs: int, teacher_ckpt: str | None = None, cached: Any = None,
    steps: int | None = None,
) -> PlainLoop:  # fmt: skip
    """The loop of `cfg`'s recipe on `dm`'s tensors: its net, optimiser and per-step schedule over `epochs` epochs
    of `steps` steps (default: the whole training split); a distillation reads its teacher from `teacher_ckpt`."""
    spec = dm.static_spec
    net = build_net(cfg.model, spec.input_shape, spec.num_classes).to(device)
    teacher = terms = None
    if teacher_ckpt:
        terms = kd_terms(cfg)
        teacher = build_net(cfg.teacher.model, spec.input_shape, spec.num_classes)
        teacher = load_weights(teacher, teacher_ckpt).to(device).eval()
        teacher.requires_grad_(False)
    x_train, y_train = dm.data_train.x.to(device), dm.data_train.y.to(device)
    batch_size = int(cfg.data.batch_size)
    steps = steps or -(-len(y_train) // batch_size)
    optimizer = instantiate(cfg.optimizer)(params=net.parameters())
    scheduler = bind_scheduler(instantiate(cfg.scheduler), optimizer, steps * epochs) if cfg.scheduler else None
    affine = AffineAugment.from_config(cfg.data.get("augment_affine"), tuple(spec.input_shape[1:]), "benchmark")
    return PlainLoop(net, optimizer, scheduler, teacher, cached, terms, x_train, y_train, steps, batch_size,
                     int(dm.hparams.eval_batch_size), cfg.data.augment_shift, cfg.data.augment_flip, affine,
                     spec.mean, spec.std, torch.Generator(device=device).manual_seed(0))  # fmt: skip


def plain_epoch(loop: PlainLoop, before_step: Callable[[int], None] | None = None) -> None:
    """One epoch of the hand-written loop; `before_step(images)` is called before each step (the rows' clocks)."""
    loop.net.train()
    batch_size = loop.batch_size
    order = torch.randperm(len(loop.y_train), device=loop.x_train.device)
    for b in range(loop.steps):
        index = order[b * batch_size : (b + 1) * batch_size]
        if before_step is not None:
            before_step(len(index))
        x, y = loop.x_train.index_select(0, index), loop.y_train.index_select(0, index)
        x = random_affine(x, loop.affine, loop.generator)[0] if loop.affine else x  # the datamodule's order:
        x, offsets = random_shift(x, loop.shift, loop.generator) if loop.shift else (x, None)  # distort, shift,
        x, flips = random_flip(x, loop.generator) if loop.flip else (x, None)  # flip, normalise
        x = normalize(x, loop.mean, loop.std)
        t_logits = None
        if loop.cached is not None:
            t_logits = loop.cached.lookup(index, offsets, flips)
        elif loop.teacher is not None:
            with torch.no_grad():
                t_logits = loop.teacher(x)
        loss = plain_loss(loop.net(x), y, t_logits, loop.terms)
        loop.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        loop.optimizer.step()
        if loop.scheduler is not None:
            loop.scheduler.step()


class StepClock:
    """The plain rows' Clock: the first step, `warmup` steps, then the images and time of the steady state."""

    def __init__(self, warmup: int, device: torch.device) -> None:
        self.warmup, self.device = warmup, device
        self.steps, self.images = 0, 0
        self.first = self.start = None

    def __call__(self, images: int) -> None:
        if self.first is None:
            self.first = time.perf_counter()
        if self.steps == self.warmup:
            _sync(self.device)
            self.start, self.cpu_start = time.perf_counter(), time.process_time()
        if self.steps >= self.warmup:
            self.images += images
        self.steps += 1


def plain_row(bench: Bench, family: str, batch_size: int, validate: bool) -> Timing:
    """The hand-written loop of the family's recipe, timed like the Lightning rows."""
    started = time.perf_counter()
    cfg, device, args, dm = bench.config(family, batch_size), bench.device, bench.args, bench.data
    teacher_ckpt = bench.teacher_ckpt if family.startswith("distill") else None
    cached = bench.outputs["cache"] if family == "distill-cached" else None
    loop = plain_loop(cfg, dm, device, args.epochs, teacher_ckpt, cached, bench.steps_per_epoch)
    x_val, y_val = dm.data_val.x.to(device), dm.data_val.y.to(device)
    limit = val_batches(bench, batch_size) if bench.steps_per_epoch else None
    clock = StepClock(args.warmup, device)
    for _ in range(args.epochs):
        plain_epoch(loop, clock)
        if validate:
            plain_validation(loop, x_val, y_val, limit)
    _sync(device)
    end, cpu_end = time.perf_counter(), time.process_time()
    return Timing(clock.images, end - clock.start, cpu_end - clock.cpu_start, clock.first - started,
                  clock.start - clock.first)  # fmt: skip


def plain_validation(loop: PlainLoop, x_val: torch.Tensor, y_val: torch.Tensor, limit: int | None = None) -> dict:
    """What kdlab's validation computes (loss terms, accuracy; with a teacher, agreement and KL), plainly,
    on the first `limit` batches (all by default)."""
    net, teacher, terms, batch_size = loop.net, loop.teacher, loop.terms, loop.eval_batch_size
    net.eval()
    sums = torch.zeros(6, device=x_val.device)
    with torch.inference_mode():
        for k, b in enumerate(range(0, len(y_val), batch_size)):
            if limit is not None and k >= limit:
                break
            x, y = normalize(x_val[b : b + batch_size], loop.mean, loop.std), y_val[b : b + batch_size]
            logits = net(x)
            ce = F.cross_entropy(logits, y, reduction="sum")
            correct = (logits.argmax(1) == y).sum()
            if teacher is None:
                sums += torch.stack(
                    [ce, ce.new_zeros(()), correct, ce.new_zeros(()), ce.new_zeros(()), ce.new_ones(()) * len(y)]
                )
                continue
            t_logits = teacher(x)
            kd = kd_divergence(logits, t_logits, terms[2]) * len(y)
            agree = (logits.argmax(1) == t_logits.argmax(1)).sum()
            kl = F.kl_div(F.log_softmax(logits, 1), F.log_softmax(t_logits, 1), reduction="sum", log_target=True)
            sums += torch.stack([ce, kd, correct, agree, kl, ce.new_ones(()) * len(y)])
    values = (sums[:5] / sums[5]).tolist()  # the one sync of the pass
    return dict(zip(("ce", "kd", "acc", "agreement", "kl"), values, strict=True))


# -- the Lightning rows -----------------------------------------------------------------------------------
class PlainStep(L.LightningModule):
    """The plain loop's step and nothing else, as a LightningModule: what Lightning itself costs per step.

    The teacher is held outside the module's children, so the Trainer neither trains it nor switches its mode.
    """

    def __init__(self, loop: PlainLoop) -> None:
        super().__init__()
        self.net, self.loop = loop.net, loop

    def training_step(self, batch, batch_idx):
        loop, t_logits = self.loop, None
        if loop.cached is not None:
            t_logits = loop.cached.lookup(batch.index, batch.shift, batch.flip)
        elif loop.teacher is not None:
            with torch.no_grad():
                t_logits = loop.teacher(batch.x)
        return plain_loss(self.net(batch.x), batch.y, t_logits, loop.terms)

    def configure_optimizers(self):
        if self.loop.scheduler is None:
            return self.loop.optimizer
        return {
            "optimizer": self.loop.optimizer,
            "lr_scheduler": {"scheduler": self.loop.scheduler, "interval": "step"},
        }


def bare_row(
    bench: Bench, family: str, batch_size: int, precision: str = "32-true", compiled: bool = False, fused: bool = False,
    minimal: bool = False,
) -> Timing:  # fmt: skip
    """kdlab's LightningModule (or, `minimal`, the plain loop's step: PlainStep) through a Trainer with everything
    optional switched off."""
    started = time.perf_counter()
    cfg = fused_config(bench, family, batch_size) if fused else bench.config(family, batch_size)
    dm = instantiate(cfg.data, _convert_="all")
    spec = dm.static_spec
    if minimal:  # the plain loop's net, teacher, optimiser and schedule over the same steps; kdlab's batches
        teacher_ckpt = bench.teacher_ckpt if family.startswith("distill") else None
        cached = bench.outputs["cache"] if family == "distill-cached" else None
        loop = plain_loop(cfg, bench.data, bench.device, bench.args.epochs, teacher_ckpt, cached, bench.steps_per_epoch)
        module = PlainStep(loop)
    else:
        module = instantiate(cfg.module, num_classes=spec.num_classes, input_shape=list(spec.input_shape),
                             **({"compile": True} if compiled else {}))  # fmt: skip
        if family == "distill-cached":
            module.use_teacher_outputs(bench.outputs["cache"])
    clock = Clock(bench.args.warmup, started)
    trainer = L.Trainer(
        accelerator=bench.args.accelerator,
        devices=1,
        precision=precision,
        max_epochs=bench.args.epochs,
        limit_train_batches=bench.steps_per_epoch,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[clock],
        default_root_dir=str(bench.root),
    )
    trainer.fit(module, datamodule=dm)
    return clock.timing()


def fused_config(bench: Bench, family: str, batch_size: int) -> DictConfig:
    """The row's config with `+optimizer.fused=true`, as a user opts in: one fused kernel per optimiser step."""
    return bench.variant(family, batch_size, ("+optimizer.fused=true",))


def kdlab_row(bench: Bench, family: str, batch_size: int) -> Timing:
    """kdlab.run.train itself, on the experiment's config: callbacks, Rich bar, TensorBoard, checkpoints, validation."""
    extra = [
        f"+callbacks.bench_clock._target_={Clock.__module__}.Clock",
        f"+callbacks.bench_clock.warmup={bench.args.warmup}",
        f"name=bench_{family}",
    ]
    if family.startswith("distill"):
        extra.append(f"runtime.teacher_cache={'on' if family == 'distill-cached' else 'off'}")
    # A fresh folder for every repeat: a run never continues another's folder, and a finished one is left alone.
    cfg = compose(bench, family, batch_size, tuple(extra), folder=f"{family}-{batch_size}-{next(bench.runs)}")
    HydraConfig().set_config(cfg)
    with as_if_in_a_terminal():
        started = time.perf_counter()
        record, objects = train(cfg, announce=False)
    cache = record.identity.get("teacher_outputs") or {}
    if family == "distill-cached" and not cache.get("used"):  # the row would time a live teacher
        raise SystemExit(f"benchmark: {family}/kdlab ran the teacher live: {cache.get('reason')}")
    (clock,) = [c for c in objects["trainer"].callbacks if isinstance(c, Clock)]
    clock.started = started
    return clock.timing()


@contextlib.contextmanager
def as_if_in_a_terminal() -> Iterator[None]:
    """stdout that says it is a terminal and discards what it gets: the Rich bar is built and drawn as for a
    user at a terminal (kdlab.run.fit.build_callbacks shows it only then), without filling this report."""

    class Sink(io.TextIOWrapper):
        def isatty(self) -> bool:
            return True

    saved = sys.stdout
    sys.stdout = Sink(open(os.devnull, "wb"), write_through=True)  # noqa: SIM115 - closed below
    try:
        yield
    finally:
        sink, sys.stdout = sys.stdout, saved
        sink.close()


# -- the teacher-output cache -------------------------------------------------------------------------------
def build_cached_outputs(bench: Bench, batch_size: int) -> None:
    """The teacher's logits for every (training image, view), as the plain and bare cached rows read them.

    Built as kdlab builds a cache entry (its batch size, float32), timed, never written to disk.
    """
    cfg, dm = bench.config("distill", batch_size), bench.data
    teacher = load_weights(bench.net(cfg.teacher.model), bench.teacher_ckpt).to(bench.device).eval()
    _sync(bench.device)
    start = time.perf_counter()
    bench.outputs["cache"] = compute_teacher_outputs(teacher, dm.data_train.x, cfg.data.augment_shift,
                                                     cfg.data.augment_flip, dm.static_spec.normalization,
                                                     bench.device)  # fmt: skip
    _sync(bench.device)
    bench.outputs["build_s"] = time.perf_counter() - start


# -- rows, runs, report ----------------------------------------------------------------------------------
@dataclass
class Row:
    name: str  # "<family>/<kind>"
    batch_size: int
    run: Callable[[], Timing]
    timings: list[Timing] = field(default_factory=list)

    @property
    def family(self) -> str:
        return self.name.split("/")[0]

    def median(self, key: str = "rate") -> float:
        return statistics.median(getattr(t, key) for t in self.timings)


def make_rows(bench: Bench) -> list[Row]:
    args, rows = bench.args, []
    for batch_size in args.batch_sizes:
        for family in FAMILIES:
            for kind in KINDS:
                if family == "distill-cached" and kind == "plain+val":
                    continue  # the cache serves training only; plain+val is the live family's
                rows.append(Row(f"{family}/{kind}", batch_size, runner(bench, family, kind, batch_size)))
    for batch_size in args.precision_batch_sizes:
        if batch_size not in args.batch_sizes:
            rows.append(Row("distill/bare", batch_size, runner(bench, "distill", "bare", batch_size)))
        for kind in EXTRA_KINDS:
            rows.append(Row(f"distill/{kind}", batch_size, runner(bench, "distill", kind, batch_size)))
    return [row for row in rows if any(fnmatch.fnmatch(row.name, pattern) for pattern in args.rows)]


def runner(bench: Bench, family: str, kind: str, batch_size: int) -> Callable[[], Timing]:
    if kind == "plain":
        return lambda: plain_row(bench, family, batch_size, validate=False)
    if kind == "plain+val":
        return lambda: plain_row(bench, family, batch_size, validate=True)
    if kind == "lightning":
        return lambda: bare_row(bench, family, batch_size, minimal=True)
    if kind == "bare":
        return lambda: bare_row(bench, family, batch_size)
    if kind == "bare bf16-mixed":
        return lambda: bare_row(bench, family, batch_size, precision="bf16-mixed")
    if kind == "bare compile":
        return lambda: bare_row(bench, family, batch_size, compiled=True)
    if kind == "bare fused":
        return lambda: bare_row(bench, family, batch_size, fused=True)
    if kind == "kdlab":
        return lambda: kdlab_row(bench, family, batch_size)
    raise ValueError(kind)


def machine(bench: Bench) -> dict[str, Any]:
    model = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    info = {
        "cpu": model,
        "cpus": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "torch_threads": torch.get_num_threads(),
        "threads": bench.threads.as_record(),
        "torch": torch.__version__,
        "lightning": L.__version__,
        "python": platform.python_version(),
        "device": str(bench.device),
    }
    if bench.device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name()
    return info


def _pair(rows: list[Row], numerator: str, denominator: str, batch_size: int) -> tuple[Row, Row] | None:
    """The two timed rows of a ratio, or None when either was not run."""
    found = {(r.name, r.batch_size): r for r in rows if r.timings}
    if (numerator, batch_size) not in found or (denominator, batch_size) not in found:
        return None
    return found[numerator, batch_size], found[denominator, batch_size]


def ratio(rows: list[Row], numerator: str, denominator: str, batch_size: int, key: str = "rate") -> float | None:
    pair = _pair(rows, numerator, denominator, batch_size)
    return None if pair is None else pair[0].median(key) / pair[1].median(key)


def paired_ratio(rows: list[Row], numerator: str, denominator: str, batch_size: int) -> float | None:
    """The median of the per-repeat ratios: each repeat's two rows ran minutes apart at most, so a change of
    machine load between repeats, which moves both medians, cancels here."""
    pair = _pair(rows, numerator, denominator, batch_size)
    if pair is None:
        return None
    return statistics.median(a.rate / b.rate for a, b in zip(pair[0].timings, pair[1].timings, strict=False))


def ratios(rows: list[Row]) -> list[dict[str, Any]]:
    """kdlab against its plain reference, per family and batch size, in wall time and in CPU time; targets marked."""
    pairs = []  # (what, numerator, denominator, batch size, target, target is a floor)
    for batch_size in sorted({r.batch_size for r in rows}):
        for family in FAMILIES:
            for num, den in (
                ("lightning", "plain"),
                ("bare", "lightning"),
                ("bare", "plain"),
                ("kdlab", "plain+val"),
                ("kdlab", "plain"),
            ):
                den_family = "distill" if den == "plain+val" and family == "distill-cached" else family
                pairs.append((None, f"{family}/{num}", f"{den_family}/{den}", batch_size, None, True))
        for kind in EXTRA_KINDS:
            pairs.append((None, f"distill/{kind}", "distill/bare", batch_size, None, True))
        # With the cache, a distillation epoch against the same student trained alone: epoch time over epoch time.
        for kind in ("kdlab", "bare", "plain"):
            target = 1.10 if kind == "kdlab" and batch_size == 128 else None
            what = f"epoch time distill-cached/{kind} / scratch/{kind}"
            pairs.append((what, f"scratch/{kind}", f"distill-cached/{kind}", batch_size, target, False))
    for what, (num, den, batch_size, target) in TARGETS.items():
        pairs.append((what, num, den, batch_size, target, True))
    found = []
    for what, num, den, batch_size, target, floor in pairs:
        value = ratio(rows, num, den, batch_size)
        if value is None:
            continue
        item = {"what": what or f"{num} vs {den}", "batch_size": batch_size, "ratio": value,
                "cpu_ratio": ratio(rows, num, den, batch_size, "cpu_rate"),
                "paired_ratio": paired_ratio(rows, num, den, batch_size)}  # fmt: skip
        if target is not None:
            item.update(target=target, floor=floor, met=value >= target if floor else value <= target)
        found.append(item)
    return found


def report(rows: list[Row], bench: Bench, load_before: tuple[float, ...], wall: float) -> dict[str, Any]:
    info = machine(bench)
    load_after = os.getloadavg()
    args = bench.args
    print(
        f"\nkdlab benchmark: {info['cpu']} ({info['cpus_usable']} of {info['cpus']} CPUs usable, "
        f"{info['cpu_capability']}), torch {info['torch']} with {info['torch_threads']} threads, "
        f"lightning {info['lightning']}, device {info['device']}"
    )
    print(
        f"{args.epochs} epochs of {args.steps_per_epoch or 'all'} steps per row, the first {args.warmup} steps not "
        f"timed; medians of {args.repeats} interleaved repeats; load average {load_before[0]:.2f} before, "
        f"{load_after[0]:.2f} after; {wall:.0f} s in all"
    )
    header = (
        f"{'row':<24} {'batch':>5} {'img/s':>8} {'min':>8} {'max':>8} {'img/cpu-s':>9} {'setup s':>7} {'warm-up s':>9}"
    )
    print("\n" + header)
    for row in rows:
        if not row.timings:
            continue
        rates = [t.rate for t in row.timings]
        print(
            f"{row.name:<24} {row.batch_size:>5} {row.median():>8.0f} {min(rates):>8.0f} {max(rates):>8.0f} "
            f"{row.median('cpu_rate'):>9.0f} {row.median('setup_s'):>7.2f} {row.median('warmup_s'):>9.2f}"
        )
    found = ratios(rows)
    print(f"\n{'ratio (medians)':<56} {'batch':>5} {'wall':>6} {'cpu':>6} {'paired':>6}  target (on wall time)")
    for item in found:
        verdict = ""
        if "target" in item:
            verdict = f"{'>=' if item['floor'] else '<='} {item['target']:.2f} {'ok' if item['met'] else 'MISSED'}"
        print(
            f"{item['what']:<56} {item['batch_size']:>5} {item['ratio']:>6.3f} {item['cpu_ratio']:>6.3f} "
            f"{item['paired_ratio']:>6.3f}  {verdict}"
        )
    cache = {}
    if "build_s" in bench.outputs:
        cache = {"build_s": bench.outputs["build_s"], "views": int(bench.outputs["cache"].views)}
        live = [r for r in rows if r.name == "distill/kdlab" and r.batch_size == 128 and r.timings]
        if live:
            epoch_s = len(bench.data.data_train) / live[0].median()
            cache["live_epoch_s"] = epoch_s
            cache["build_in_live_epochs"] = cache["build_s"] / epoch_s
        print(
            f"\nteacher-output cache: {cache['views']} views per image built in {cache['build_s']:.1f} s"
            + (
                f" = {cache['build_in_live_epochs']:.2f} live-teacher epochs (distill/kdlab, batch 128; target <= 3)"
                if "build_in_live_epochs" in cache
                else ""
            )  # fmt: skip
        )
    return {
        "machine": info,
        "load_average": {"before": list(load_before), "after": list(load_after)},
        "settings": {k: v for k, v in vars(args).items() if k != "json"},
        "wall_s": wall,
        "rows": [
            {
                "row": row.name,
                "batch_size": row.batch_size,
                "img_per_s": row.median(),
                "img_per_cpu_s": row.median("cpu_rate"),
                "setup_s": row.median("setup_s"),
                "warmup_s": row.median("warmup_s"),
                "runs": [asdict(t) | {"img_per_s": t.rate, "img_per_cpu_s": t.cpu_rate} for t in row.timings],
            }
            for row in rows
            if row.timings
        ],
        "ratios": found,
        "teacher_cache": cache,
    }


# -- time to accuracy ------------------------------------------------------------------------------------
# Each recipe's validation-accuracy target in percent (--target EXPERIMENT=PCT). MNIST's validation split is
# harder than its test set (the 99.12%-test teacher peaks near 98.96% on it): targets both presets reach, the
# teachers 98.7 (fast seeds peak at 98.76-99.20%), the students 98.4 (the fast distilled ones end near 98.5;
# the fast scratch one, at about 98.0-98.2, is shown not reaching it). Digits (180 validation digits, one is
# 0.56%): where the standard recipes ended on seed 0 (kdlab and plain alike): the teacher 99.4-100%, so 98.8 (at
# most 2 wrong); the scratch student 97.22% (5 wrong), so 97.2, the distilled student held to the same bar.
TTA_TARGETS = {"train_teacher_mlp": 98.7, "student_scratch_mlp": 98.4, "distill_mlp": 98.4,
               "train_teacher_digits": 98.8, "student_scratch_digits": 97.2, "distill_digits": 97.2}  # fmt: skip
PRESETS = {"standard": "{}", "fast": "{}_fast"}  # preset -> the experiment's name, from the recipe's
# `--presets levers`: the fast preset's levers one at a time, kdlab rows only, so the table shows what each one
# saves ("x standard"): the standard recipe with the fast batch size and peak learning rate (its epochs kept),
# the fast preset with its teacher live instead of read from the output cache, and the fast preset with AdamW's
# per-tensor loop instead of its fused kernel. Label -> (experiment, overrides).
LEVERS = {
    "distill_mlp": {
        "batch": ("{}", ("data.batch_size=256", "optimizer.lr=1e-2")),
        "fast-live": ("{}_fast", ("runtime.teacher_cache=off",)),
        "unfused": ("{}_fast", ("optimizer.fused=false",)),
    },
}
TTA_IMPLS = ("kdlab", "plain")
TTA_QUICK_EPOCHS = 2  # --quick: every run (and every teacher it provisions) stops after this many epochs
ACC_SLACK = 1e-6  # a float32 accuracy of k/n can land just below the decimal target it equals; 1/n is far larger


def time_to_target(curve: list[tuple[float, float]], target_pct: float) -> float | None:
    """Seconds at the first validation whose accuracy reaches `target_pct` percent; None if none does.

    `curve` holds (seconds since the run's start, validation accuracy as a fraction) in the order measured.
    """
    for seconds, acc in curve:
        if acc >= target_pct / 100 - ACC_SLACK:
            return seconds
    return None


def median_or_none(values: list[float | None]) -> float | None:
    """The median where None ("never reached") counts as longer than any time: None when most runs missed."""
    value = statistics.median(math.inf if v is None else v for v in values)
    return None if math.isinf(value) else value


@dataclass
class AccuracyRun:
    """One run of one time-to-accuracy row."""

    to_target_s: float | None  # None: validation never reached the target
    total_s: float
    test_acc: float
    curve: list[tuple[float, float]]  # (seconds since the run's start, validation accuracy), one per validation


@dataclass
class AccuracyRow:
    recipe: str  # the standard experiment, e.g. distill_mlp
    preset: str  # standard | fast | a lever's label
    impl: str  # kdlab | plain
    target: float  # validation accuracy, percent
    cfg: DictConfig
    experiment: str  # the experiment it runs: the recipe, its fast preset
    extra: tuple[str, ...] = ()  # a lever's overrides on that experiment
    runs: list[AccuracyRun] = field(default_factory=list)

    @property
    def distills(self) -> bool:
        return self.cfg.get("teacher") is not None

    def median(self, key: str) -> float | None:
        return median_or_none([getattr(run, key) for run in self.runs])


class ValidationCurve(L.Callback):
    """The wall-clock time and val/acc at the end of every validation of a fit (not the sanity check).

    Stamped in `on_validation_end`, after Lightning has computed and logged the epoch's val/acc: the moment
    the run knows the accuracy, exact to the call, not the second of a log line. (Lightning runs the
    checkpoint callbacks' hook after this one: writing the epoch's checkpoint is not in the stamp.)
    """

    def __init__(self) -> None:
        self.points: list[tuple[float, float]] = []  # (time.perf_counter(), val/acc)

    def on_validation_end(self, trainer, pl_module) -> None:
        if trainer.sanity_checking:
            return
        _sync(pl_module.device)
        self.points.append((time.perf_counter(), float(trainer.callback_metrics["val/acc"])))


def accuracy_rows(bench: Bench) -> list[AccuracyRow]:
    """Every (recipe, preset, impl) asked for, its config composed once; a missing preset is refused here."""
    args, rows = bench.args, []
    for recipe in args.recipes:
        for preset in args.presets:
            if preset == "levers":  # kdlab rows only: a lever is kdlab's setting, the plain loop has its rows
                for label, (name, extra) in LEVERS.get(recipe, {}).items():
                    experiment = _preset_experiment(recipe, preset, name.format(recipe), args)
                    cfg = accuracy_config(bench, experiment, extra)
                    rows.append(AccuracyRow(recipe, label, "kdlab", args.targets[recipe], cfg, experiment, extra))
                continue
            experiment = _preset_experiment(recipe, preset, PRESETS[preset].format(recipe), args)
            cfg = accuracy_config(bench, experiment)
            rows += [AccuracyRow(recipe, preset, impl, args.targets[recipe], cfg, experiment) for impl in TTA_IMPLS]
    return rows


def _preset_experiment(recipe: str, preset: str, experiment: str, args: argparse.Namespace) -> str:
    if not (CONFIG_DIR / "experiment" / f"{experiment}.yaml").is_file():
        raise SystemExit(
            f"benchmark: the {preset} preset of {recipe} is conf/experiment/{experiment}.yaml, which does "
            f"not exist. Add it, or leave the preset out with --presets (given: {','.join(args.presets)})."
        )
    return experiment


def accuracy_config(bench: Bench, experiment: str, extra: tuple[str, ...] = (), folder: str = "") -> DictConfig:
    """The experiment as users run it (testing its best checkpoint), teachers from --teacher-dir's cache."""
    args = bench.args
    overrides = [f"experiment={experiment}", f"paths.teacher_dir={args.teacher_dir}"]
    recipe = compose_config([f"experiment={experiment}"])
    if "data_dir" in recipe.data:  # MNIST-like: a folder of files
        overrides.append(f"data.data_dir={args.data_dir}")
    overrides += args.override
    if args.quick:  # short, but long enough for the recipe to validate at least once
        overrides.append(f"trainer.max_epochs={max(TTA_QUICK_EPOCHS, recipe.trainer.check_val_every_n_epoch or 1)}")
    overrides += extra
    cfg = compose_run(bench, overrides, folder or experiment)
    if args.quick and cfg.get("teacher") is not None:  # a smoke run provisions a smoke teacher (its own cache entry)
        with open_dict(cfg):
            cfg.teacher.overrides = [*cfg.teacher.overrides, f"trainer.max_epochs={TTA_QUICK_EPOCHS}"]
    return cfg


def prepare_teacher(bench: Bench, row: AccuracyRow) -> None:
    """The untimed first pass of a distillation: its teacher trained into the cache (if it is not there yet),
    and its teacher-output entry built, by one kdlab epoch; then the same table in memory for the plain loop.

    The timed kdlab runs find both cached; the plain loop reads the table only where kdlab read its entry.
    """
    key = row.experiment
    if key in bench.teachers:
        return
    mode = OmegaConf.select(row.cfg, "runtime.teacher_cache", default="auto")
    # One epoch without a schedule (one-cycle needs more steps); neither enters the teacher's or its table's key.
    extra = (
        "trainer.max_epochs=1",
        "scheduler=none",
        "test=false",
        f"runtime.teacher_cache={'off' if mode == 'off' else 'on'}",
    )
    cfg = accuracy_config(bench, key, extra, folder=f"{key}-teacher-pass")
    HydraConfig().set_config(cfg)
    with as_if_in_a_terminal():
        record, _ = train(cfg, announce=False)
    if not record.finished or record.teacher is None:
        raise SystemExit(f"benchmark: the untimed first pass of {key} ended {record.status}: {record.message}")
    used = bool((record.identity.get("teacher_outputs") or {}).get("used"))
    table = None
    if used:
        dm = dataset(bench, row.cfg)
        spec = dm.static_spec
        teacher = load_weights(build_net(row.cfg.teacher.model, spec.input_shape, spec.num_classes),
                               record.teacher.checkpoint).to(bench.device).eval()  # fmt: skip
        table = compute_teacher_outputs(teacher, dm.data_train.x, row.cfg.data.augment_shift,
                                        row.cfg.data.augment_flip, spec.normalization, bench.device)  # fmt: skip
    bench.teachers[key] = {"ckpt": record.teacher.checkpoint, "cached": used, "table": table}


def dataset(bench: Bench, cfg: DictConfig):
    """The run's datamodule with every split read, once per data config: the teachers' tables index its images."""
    key = json.dumps(OmegaConf.to_container(cfg.data, resolve=True), sort_keys=True)
    if key not in bench.datasets:
        dm = instantiate(cfg.data, _convert_="all")
        dm.prepare_data()
        dm.setup("fit")
        bench.datasets[key] = dm
    return bench.datasets[key]


def kdlab_accuracy_run(bench: Bench, row: AccuracyRow) -> AccuracyRun:
    """kdlab.run.train as train.py runs it, from its entry (folder claim, config checks, data reading, teacher
    provisioning from the cache) through fit, the test of the best checkpoint and the run's record."""
    extra = (f"+callbacks.bench_curve._target_={ValidationCurve.__module__}.ValidationCurve",)
    folder = f"{row.experiment}-kdlab-{next(bench.runs)}"  # a fresh folder each repeat: nothing resumes
    cfg = accuracy_config(bench, row.experiment, (*row.extra, *extra), folder)
    HydraConfig().set_config(cfg)
    with as_if_in_a_terminal():
        started = time.perf_counter()
        record, objects = train(cfg, announce=False)
        ended = time.perf_counter()
    if not record.finished:
        raise SystemExit(f"benchmark: {row.experiment}/kdlab ended {record.status}: {record.message}")
    if record.metric("test/acc") is None:
        raise SystemExit(
            f"benchmark: {row.experiment}/kdlab recorded no test/acc; the benchmark reports each run's test "
            "accuracy: leave test=true (drop a test=false from the preset or from --override)."
        )
    if row.distills and row.preset in PRESETS:  # a lever row has no plain twin (and may run its teacher live)
        used = bool((record.identity.get("teacher_outputs") or {}).get("used"))
        if used != bench.teachers[row.experiment]["cached"]:  # the plain loop would run another teacher path
            raise SystemExit(
                f"benchmark: {row.experiment}/kdlab {'read' if used else 'did not read'} the teacher's cached "
                "outputs, unlike its untimed first pass; the plain loop would not match it."
            )
    (curve,) = [c for c in objects["trainer"].callbacks if isinstance(c, ValidationCurve)]
    points = [(stamp - started, acc) for stamp, acc in curve.points]
    return AccuracyRun(time_to_target(points, row.target), ended - started, record.metric("test/acc"), points)


def plain_accuracy_run(bench: Bench, row: AccuracyRow) -> AccuracyRun:
    """The plain loop of the recipe, validated on the same split after the same epochs as the recipe's Trainer
    (every `trainer.check_val_every_n_epoch`); the weights of its best validation tested, as kdlab tests its best
    checkpoint (the last weights where it never validated). Timed from reading the data (kdlab's own reader) on."""
    cfg, device = row.cfg, bench.device
    teacher = bench.teachers.get(row.experiment) or {}
    _sync(device)
    started = time.perf_counter()
    dm = instantiate(cfg.data, _convert_="all")
    dm.prepare_data()
    dm.setup("fit")
    if cfg.seed is not None:
        torch.manual_seed(cfg.seed)
    epochs, every = int(cfg.trainer.max_epochs), int(cfg.trainer.get("check_val_every_n_epoch") or 1)
    loop = plain_loop(cfg, dm, device, epochs, teacher.get("ckpt"), teacher.get("table"))
    x_val, y_val = dm.data_val.x.to(device), dm.data_val.y.to(device)
    points, best, best_state = [], -1.0, None
    for epoch in range(epochs):
        plain_epoch(loop)
        if (epoch + 1) % every:
            continue
        acc = plain_validation(loop, x_val, y_val)["acc"]
        points.append((time.perf_counter() - started, acc))
        if acc > best:  # strictly better, as ModelCheckpoint(mode="max") keeps the first best epoch
            best, best_state = acc, {k: v.detach().clone() for k, v in loop.net.state_dict().items()}
    if best_state is not None:
        loop.net.load_state_dict(best_state)
    test_acc = plain_validation(loop, dm.data_test.x.to(device), dm.data_test.y.to(device))["acc"]
    total = time.perf_counter() - started
    return AccuracyRun(time_to_target(points, row.target), total, test_acc, points)


def accuracy_report(rows: list[AccuracyRow], bench: Bench, load_before: tuple[float, ...], wall: float) -> dict:
    """The table on stdout and the results: per row the medians, and kdlab against the plain loop and each
    preset against the standard one (ratios of median seconds to target)."""
    args, info = bench.args, machine(bench)
    found = {(r.recipe, r.preset, r.impl): r for r in rows}

    def ratio(a: AccuracyRow | None, b: AccuracyRow | None, key: str = "to_target_s") -> float | None:
        if a is None or b is None or a.median(key) is None or not b.median(key):
            return None
        return a.median(key) / b.median(key)

    print(f"\nkdlab time to accuracy: {info['cpu']} ({info['cpus_usable']} CPUs usable), torch {info['torch']} with "
          f"{info['torch_threads']} threads, device {info['device']}; medians of {args.repeats} interleaved repeats; "
          f"load average {load_before[0]:.2f} before, {os.getloadavg()[0]:.2f} after; {wall:.0f} s in all")  # fmt: skip
    print(f"{'recipe':<24} {'preset':<9} {'impl':<6} {'target':>6} {'s to target':>11} {'reached':>7} "
          f"{'total s':>8} {'test acc':>8} {'x plain':>7} {'x standard':>10}")  # fmt: skip
    out = []
    for row in rows:
        to_target, total = row.median("to_target_s"), row.median("total_s")
        vs_plain = ratio(row, found.get((row.recipe, row.preset, "plain"))) if row.impl == "kdlab" else None
        vs_standard = ratio(row, found.get((row.recipe, "standard", row.impl))) if row.preset != "standard" else None
        reached = sum(run.to_target_s is not None for run in row.runs)
        print(f"{row.recipe:<24} {row.preset:<9} {row.impl:<6} {row.target:>6.2f} "
              f"{'never' if to_target is None else f'{to_target:.1f}':>11} {f'{reached}/{len(row.runs)}':>7} "
              f"{total:>8.1f} {100 * row.median('test_acc'):>7.2f}% "
              f"{'' if vs_plain is None else f'{vs_plain:.2f}':>7} "
              f"{'' if vs_standard is None else f'{vs_standard:.2f}':>10}")  # fmt: skip
        out.append({"recipe": row.recipe, "preset": row.preset, "experiment": row.experiment,
                    "overrides": list(row.extra), "impl": row.impl,
                    "target_val_acc_pct": row.target, "to_target_s": to_target, "total_s": total,
                    "test_acc": row.median("test_acc"), "reached": reached,
                    "to_target_vs_plain": vs_plain, "to_target_vs_standard": vs_standard,
                    "total_vs_standard": ratio(row, found.get((row.recipe, "standard", row.impl)), "total_s")
                    if row.preset != "standard" else None,
                    "runs": [asdict(run) for run in row.runs]})  # fmt: skip
    return {"mode": "time_to_accuracy", "machine": info,
            "load_average": {"before": list(load_before), "after": list(os.getloadavg())},
            "settings": {k: v for k, v in vars(args).items() if k not in ("json", "plot")}, "wall_s": wall,
            "targets": {recipe: args.targets[recipe] for recipe in args.recipes}, "rows": out}  # fmt: skip


def plot_curves(rows: list[AccuracyRow], path: str) -> None:
    """Validation accuracy against seconds, one panel per recipe, one line per (preset, impl): each row's run
    with the median total time; the target dashed."""
    try:
        from matplotlib.figure import Figure  # no pyplot: no backend or global state chosen for the process
    except ImportError:
        raise SystemExit("benchmark: --plot needs matplotlib: pip install 'kdlab[plots]'.") from None
    recipes = list(dict.fromkeys(row.recipe for row in rows))
    fig = Figure(figsize=(5 * len(recipes), 4), layout="constrained")
    for ax, recipe in zip(fig.subplots(1, len(recipes), squeeze=False)[0], recipes, strict=True):
        for row in (r for r in rows if r.recipe == recipe and r.runs):
            run = sorted(row.runs, key=lambda r: r.total_s)[(len(row.runs) - 1) // 2]
            ax.plot([s for s, _ in run.curve], [100 * a for _, a in run.curve], marker=".",
                    linestyle="-" if row.impl == "kdlab" else "--", label=f"{row.preset} {row.impl}")  # fmt: skip
            target = row.target
        ax.axhline(target, color="grey", linewidth=0.8, linestyle=":", label=f"target {target:g}%")
        ax.set(title=recipe, xlabel="seconds since the run's start", ylabel="validation accuracy (%)",
               ylim=(max(0.0, target - 5), 100.5))  # fmt: skip
        ax.legend(fontsize="small")
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    print(f"written: {path}")


def time_to_accuracy(args: argparse.Namespace, plan: ThreadPlan, load_before, began: float) -> dict[str, Any]:
    """Every (recipe, preset, impl) row once per repeat, interleaved; distillations' teachers cached first."""
    with tempfile.TemporaryDirectory(prefix="kdlab-bench-") as tmp:
        bench = Bench(args, Path(tmp), torch.device(args.device), "", plan)
        rows = accuracy_rows(bench)
        for row in rows:
            if row.distills:
                prepare_teacher(bench, row)
        print(f"{len(rows)} rows x {args.repeats} repeats", flush=True)
        for repeat in range(args.repeats):
            for row in rows:
                gc.collect()
                run = (kdlab_accuracy_run if row.impl == "kdlab" else plain_accuracy_run)(bench, row)
                row.runs.append(run)
                reached = "never" if run.to_target_s is None else f"{run.to_target_s:.1f} s"
                print(f"  repeat {repeat + 1}: {row.experiment}/{row.impl}: {row.target:g}% at {reached}, "
                      f"{run.total_s:.1f} s in all, test acc {100 * run.test_acc:.2f}%", flush=True)  # fmt: skip
        results = accuracy_report(rows, bench, load_before, time.perf_counter() - began)
    if args.plot:
        plot_curves(rows, args.plot)
    return results


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch-sizes", default="128,512", help="comma-separated training batch sizes")
    parser.add_argument(
        "--precision-batch-sizes", default="128,1024", help="batch sizes of the bf16/compile/fused rows"
    )
    parser.add_argument("--rows", default="*", help="comma-separated glob patterns of row names, e.g. 'distill/*'")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--steps-per-epoch", type=int, default=None, help="shorter epochs (validation shrinks along)")
    parser.add_argument("--warmup", type=int, default=20, help="training steps not timed at the start of a row")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--threads", default="auto", help="torch threads for every row, as runtime.threads")
    parser.add_argument("--data-dir", default="data/mnist", help="the folder of the MNIST files (data.data_dir)")
    parser.add_argument("--teacher-ckpt", default=None, help="teacher weights (default: a random teacher MLP)")
    parser.add_argument("--override", action="append", default=[], help="a config override for every row")
    parser.add_argument("--json", default=None, help="also write the results to this JSON file")
    parser.add_argument("--quick", action="store_true", help="a smoke run: tiny epochs, one repeat")
    tta = parser.add_argument_group("time to accuracy (--time-to-accuracy)")
    tta.add_argument(
        "--time-to-accuracy",
        action="store_true",
        help="each recipe's seconds until validation accuracy first reaches its target, kdlab and plain",
    )
    tta.add_argument("--recipes", default=",".join(TTA_TARGETS), help="comma-separated standard experiments")
    tta.add_argument(
        "--presets",
        default=",".join([*PRESETS, "levers"]),
        help="standard: the experiment; fast: <experiment>_fast; levers: the fast preset's levers one at a time",
    )
    tta.add_argument(
        "--target",
        action="append",
        default=[],
        metavar="EXPERIMENT=PCT",
        help=f"a recipe's validation-accuracy target in percent (defaults: {TTA_TARGETS})",
    )
    tta.add_argument(
        "--teacher-dir",
        default=None,
        help="the teacher cache the distillations provision from (default: kdlab's paths.teacher_dir)",
    )
    tta.add_argument("--plot", default=None, help="write the accuracy-versus-seconds curves to this PNG")
    args = parser.parse_args(argv)
    if args.time_to_accuracy:
        return accuracy_args(parser, args)
    if args.quick:  # every kind of row once, on tiny epochs: checks the script, measures nothing
        args.epochs, args.steps_per_epoch, args.warmup, args.repeats = 2, 4, 2, 1
        for name, quick in (("batch_sizes", "128"), ("precision_batch_sizes", ""), ("rows", QUICK_ROWS)):
            if getattr(args, name) == parser.get_default(name):
                setattr(args, name, quick)
    args.batch_sizes = [int(b) for b in args.batch_sizes.split(",") if b]
    args.precision_batch_sizes = [int(b) for b in args.precision_batch_sizes.split(",") if b]
    args.rows = [p.strip() for p in args.rows.split(",") if p.strip()]
    args.accelerator = "gpu" if args.device == "cuda" else "cpu"
    return args


def accuracy_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> argparse.Namespace:
    """--time-to-accuracy's settings checked and completed; a bad one stops here in one paragraph."""
    args.recipes = [r.strip() for r in args.recipes.split(",") if r.strip()]
    args.presets = [p.strip() for p in args.presets.split(",") if p.strip()]
    targets = dict(TTA_TARGETS)
    for item in args.target:
        recipe, _, value = item.partition("=")
        try:
            targets[recipe.strip()] = float(value)
        except ValueError:
            parser.error(f"--target {item!r}: give EXPERIMENT=PERCENT, e.g. --target distill_mlp=98.8")
    unknown = [p for p in args.presets if p not in (*PRESETS, "levers")]
    missing = [r for r in args.recipes if r not in targets]
    if unknown or missing or not args.recipes or not args.presets:
        parser.error(
            f"--presets are {', '.join(PRESETS)}, levers (unknown given: {', '.join(unknown) or 'none'}); every "
            f"recipe needs a target (--target EXPERIMENT=PCT; none for: {', '.join(missing) or '-'}); at least one "
            "of each."
        )
    if any(not 0 < targets[r] <= 100 for r in args.recipes):
        parser.error(f"--target: a validation accuracy in percent, above 0 and at most 100 (got {targets}).")
    args.targets = targets
    if args.quick:  # every row once on tiny runs: checks the script, measures nothing
        args.repeats = 1
    if args.teacher_dir is None:  # the cache train.py itself provisions from
        args.teacher_dir = compose_config([]).paths.teacher_dir
    args.teacher_dir = str(Path(args.teacher_dir).expanduser().resolve())
    args.steps_per_epoch, args.accelerator = None, "gpu" if args.device == "cuda" else "cpu"
    return args


def load_shared(bench: Bench) -> torch.nn.Module:
    """Read the data every row shares and write the teacher's file (random weights unless --teacher-ckpt).

    Returns the teacher net (its weights aside). Random weights: a step costs the same as with a trained teacher.
    """
    args = bench.args
    cfg = compose_config(["experiment=distill_mlp", f"paths.root_dir={bench.root}", f"data.data_dir={args.data_dir}",
                          *args.override])  # fmt: skip
    bench.data = instantiate(cfg.data, _convert_="all")
    bench.data.prepare_data()
    bench.data.setup("fit")
    teacher = bench.net(cfg.teacher.model)
    if not bench.teacher_ckpt:
        bench.teacher_ckpt = str(bench.root / "teacher.pt")
        torch.save(teacher.state_dict(), bench.teacher_ckpt)
    return teacher


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    load_before = os.getloadavg()
    began = time.perf_counter()
    quiet_libraries()
    plan = plan_threads(args.threads)  # the kdlab rows get it as runtime.threads, so every row computes alike
    apply_threads(plan)
    print(f"{plan.threads} torch thread(s), chosen by {plan.chosen_by} ({plan.cpus} CPUs given)", flush=True)
    torch.set_flush_denormal(True)  # as kdlab.run.train does, for every row alike
    if args.time_to_accuracy:
        results = time_to_accuracy(args, plan, load_before, began)
        write_json(args, results)
        return results
    with tempfile.TemporaryDirectory(prefix="kdlab-bench-") as tmp:
        root = Path(tmp)
        bench = Bench(args, root, torch.device(args.device), args.teacher_ckpt or "", plan)
        rows = make_rows(bench)  # before any data is read: a pattern that matches nothing stops here
        if not rows:
            raise SystemExit(
                f"benchmark: no row matches --rows {','.join(args.rows)} at --batch-sizes {args.batch_sizes} and "
                f"--precision-batch-sizes {args.precision_batch_sizes}; the rows are <family>/<kind>, e.g. "
                f"distill/bare (families {', '.join(FAMILIES)}; kinds {', '.join(KINDS + EXTRA_KINDS)})."
            )
        teacher = load_shared(bench)
        if any(row.family == "distill-cached" for row in rows):
            build_cached_outputs(bench, rows[0].batch_size)
        teacher_params = count_params(teacher)
        print(f"{len(rows)} rows x {args.repeats} repeats; teacher MLP {teacher_params:,} parameters", flush=True)
        for repeat in range(args.repeats):
            for row in rows:
                gc.collect()  # the garbage of the row before is not this row's cost
                row.timings.append(row.run())
                print(
                    f"  repeat {repeat + 1}: {row.name} @ {row.batch_size}: {row.timings[-1].rate:.0f} img/s",
                    flush=True,
                )
        results = report(rows, bench, load_before, time.perf_counter() - began)
    write_json(args, results)
    return results


def write_json(args: argparse.Namespace, results: dict[str, Any]) -> None:
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
        print(f"\nwritten: {args.json}")


if __name__ == "__main__":
    try:
        main()
    except REFUSALS as err:  # the data or teacher given cannot work: one paragraph, as train.py says it
        raise SystemExit(f"benchmark: {' '.join(str(err).split())}") from None
