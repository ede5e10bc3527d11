"""Speed of kdlab's training loop against hand-written PyTorch loops of the same math, side by side.

    make bench                                        # = python scripts/benchmark.py --json outputs/bench.json
    python scripts/benchmark.py --batch-sizes 128 --rows 'distill/*' --repeats 5
    python scripts/benchmark.py --quick --data-dir data/mnist   # a smoke run: tiny epochs, one repeat

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
from omegaconf import DictConfig, open_dict

from kdlab.checkpoints import load_weights
from kdlab.config import compose_config
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
KINDS = ("plain", "bare", "plain+val", "kdlab")
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
        f"paths.root_dir={bench.root}",
        f"data.data_dir={args.data_dir}",
        f"data.batch_size={batch_size}",
        f"runtime.threads={bench.threads.threads}",
        f"trainer.max_epochs={args.epochs}",
        "test=false",
        *args.override,
        *extra,
    ]
    if family.startswith("distill"):
        overrides.append(f"teacher.ckpt_path={bench.teacher_ckpt}")
    if args.device == "cuda":
        overrides.append("trainer=gpu")
    if bench.steps_per_epoch:
        overrides.append(f"trainer.limit_train_batches={bench.steps_per_epoch}")
        overrides.append(f"trainer.limit_val_batches={val_batches(bench, batch_size)}")
    cfg = compose_config(overrides, return_hydra_config=True)
    with open_dict(cfg):
        cfg.paths.output_dir = str(bench.root / "runs" / (folder or f"{family}-{batch_size}"))
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


def plain_row(bench: Bench, family: str, batch_size: int, validate: bool) -> Timing:
    """The hand-written loop: no framework, the same nets, data, augmentation, losses and optimiser."""
    started = time.perf_counter()
    cfg, device, args = bench.config(family, batch_size), bench.device, bench.args
    dm = bench.data
    x_train, y_train = dm.data_train.x.to(device), dm.data_train.y.to(device)
    x_val, y_val = dm.data_val.x.to(device), dm.data_val.y.to(device)
    mean, std = dm.static_spec.mean, dm.static_spec.std
    shift, flip = cfg.data.augment_shift, cfg.data.augment_flip
    affine = AffineAugment.from_config(cfg.data.get("augment_affine"), dm.input_shape[1:], "benchmark")
    net = bench.net(cfg.model).to(device)
    teacher = cached = terms = None
    if family.startswith("distill"):
        terms = kd_terms(cfg)
        if family == "distill-cached":
            cached = bench.outputs["cache"]
        teacher = load_weights(bench.net(cfg.teacher.model), bench.teacher_ckpt).to(device).eval()
        teacher.requires_grad_(False)
    n = len(y_train)
    steps = -(-n // batch_size) if not bench.steps_per_epoch else bench.steps_per_epoch
    optimizer = instantiate(cfg.optimizer)(params=net.parameters())
    scheduler = bind_scheduler(instantiate(cfg.scheduler), optimizer, steps * args.epochs) if cfg.scheduler else None
    generator = torch.Generator(device=device).manual_seed(0)
    done, images, first, start = 0, 0, None, None
    for _ in range(args.epochs):
        net.train()
        order = torch.randperm(n, device=device)
        for b in range(steps):
            if first is None:
                first = time.perf_counter()
            if done == args.warmup:
                _sync(device)
                start, cpu_start = time.perf_counter(), time.process_time()
            index = order[b * batch_size : (b + 1) * batch_size]
            x, y = x_train.index_select(0, index), y_train.index_select(0, index)
            x = random_affine(x, affine, generator)[0] if affine else x  # the datamodule's order: distort,
            x, offsets = random_shift(x, shift, generator) if shift else (x, None)  # shift, flip, normalise
            x, flips = random_flip(x, generator) if flip else (x, None)
            x = normalize(x, mean, std)
            t_logits = None
            if cached is not None:
                t_logits = cached.lookup(index, offsets, flips)
            elif teacher is not None:
                with torch.no_grad():
                    t_logits = teacher(x)
            loss = plain_loss(net(x), y, t_logits, terms)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if scheduler is not None:
                scheduler.step()
            if done >= args.warmup:
                images += len(y)
            done += 1
        if validate:
            plain_validation(net, teacher, terms, x_val, y_val, mean, std, dm.hparams.eval_batch_size, cfg, bench)
    _sync(device)
    end, cpu_end = time.perf_counter(), time.process_time()
    return Timing(images, end - start, cpu_end - cpu_start, first - started, start - first)


def plain_validation(net, teacher, terms, x_val, y_val, mean, std, batch_size, cfg, bench: Bench) -> dict[str, float]:
    """What kdlab's validation computes (loss terms, accuracy; with a teacher, agreement and KL), plainly."""
    net.eval()
    sums = torch.zeros(6, device=x_val.device)
    limit = val_batches(bench, cfg.data.batch_size) if bench.steps_per_epoch else None
    with torch.inference_mode():
        for k, b in enumerate(range(0, len(y_val), batch_size)):
            if limit is not None and k >= limit:
                break
            x, y = normalize(x_val[b : b + batch_size], mean, std), y_val[b : b + batch_size]
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
def bare_row(
    bench: Bench, family: str, batch_size: int, precision: str = "32-true", compiled: bool = False, fused: bool = False
) -> Timing:
    """kdlab's LightningModule through a Trainer with everything optional switched off."""
    started = time.perf_counter()
    cfg = fused_config(bench, family, batch_size) if fused else bench.config(family, batch_size)
    dm = instantiate(cfg.data, _convert_="all")
    spec = dm.static_spec
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
            for num, den in (("bare", "plain"), ("kdlab", "plain+val"), ("kdlab", "plain")):
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
    args = parser.parse_args(argv)
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
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
        print(f"\nwritten: {args.json}")
    return results


if __name__ == "__main__":
    try:
        main()
    except REFUSALS as err:  # the data or teacher given cannot work: one paragraph, as train.py says it
        raise SystemExit(f"benchmark: {' '.join(str(err).split())}") from None
