"""Speed of kdlab's training steps, as ratios measured side by side in one process.

    python scripts/benchmark.py                      # CPU, batch 128, 300 steps x 3 repeats
    python scripts/benchmark.py --device cuda --precision bf16-mixed --batch-size 1024

Prints the median steady-state steps/s of each variant (the first steps and Lightning's setup are
not timed) and its ratio to a plain PyTorch loop training the teacher MLP (AdamW + one-cycle, 2-px
shifts, in-memory batches); a plain loop over the student MLP is the reference for the student rows.
Absolute numbers depend on the machine and its load: compare ratios, measured in one run.
"""

import argparse
import statistics
import time
from collections.abc import Callable

import lightning as L
import torch
import torch.nn.functional as F
from hydra.utils import instantiate
from torch.utils.data import DataLoader, Dataset

from kdlab.config import compose_config
from kdlab.data import MNISTDataModule, normalize, random_shift
from kdlab.run import count_params


class PerSampleMNIST(Dataset):
    """The reference article's pipeline shape: one image at a time, normalised in Python."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor) -> None:
        self.x, self.y = x, y

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int):
        return (self.x[i].float() / 255 - 0.5) / 0.5, self.y[i]


WARMUP = 20  # steps excluded from every timing: allocator, caches and Lightning's setup


class StepTimer(L.Callback):
    """Steady-state steps/s of a Lightning fit, from step WARMUP on (setup time excluded)."""

    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        if batch_idx == WARMUP:
            self.start = time.perf_counter()

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        if batch_idx < WARMUP:
            return
        if module.device.type == "cuda":
            torch.cuda.synchronize()
        self.rate = (batch_idx + 1 - WARMUP) / (time.perf_counter() - self.start)


def batches(loader: DataLoader):
    while True:
        yield from loader


def plain_loop(dm: MNISTDataModule, cfg, device: str, steps: int, per_sample: bool = False) -> float:
    net = instantiate(cfg.model).to(device)
    opt = torch.optim.AdamW(net.parameters(), lr=cfg.optimizer.lr, weight_decay=cfg.optimizer.weight_decay)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.optimizer.lr, total_steps=steps + 1)
    if per_sample:
        data = PerSampleMNIST(dm.data_train.x, dm.data_train.y)
        loader = DataLoader(data, batch_size=dm.hparams.batch_size, shuffle=True, drop_last=True)
    else:
        loader = dm.train_dataloader()
    it = batches(loader)
    for step in range(steps):
        if step == WARMUP:
            if device == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
        x, y = next(it)
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        if not per_sample:
            x = normalize(random_shift(x, dm.hparams.augment_shift))
        loss = F.cross_entropy(net(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
    if device == "cuda":
        torch.cuda.synchronize()
    return (steps - WARMUP) / (time.perf_counter() - start)


def lightning_loop(dm: MNISTDataModule, cfg, accelerator: str, precision: str, steps: int) -> float:
    module = instantiate(cfg.module)
    trainer = L.Trainer(
        accelerator=accelerator,
        devices=1,
        precision=precision,
        max_steps=steps,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    start = time.perf_counter()
    trainer.fit(module, datamodule=dm)
    return steps / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--precision", default="32-true")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--data-dir", default="data")
    parser.add_argument("--teacher-ckpt", default=None, help="teacher weights for the distillation variant")
    args = parser.parse_args()
    torch.set_flush_denormal(True)

    common = [
        f"paths.data_dir={args.data_dir}",
        "paths.root_dir=.",
        "paths.output_dir=/tmp/kdlab-bench",
        f"data.batch_size={args.batch_size}",
    ]
    teacher_cfg = compose_config(["experiment=train_teacher_mlp", *common])
    scratch_cfg = compose_config(["experiment=student_scratch_mlp", *common])
    distill_cfg = compose_config(["experiment=distill_mlp", *common])
    dm = instantiate(teacher_cfg.data, _convert_="all")
    dm.prepare_data()
    dm.setup("fit")
    if args.teacher_ckpt is None:  # random teacher weights: the step costs the same
        args.teacher_ckpt = "/tmp/kdlab-bench-teacher.pt"
        torch.save(instantiate(distill_cfg.teacher.model).state_dict(), args.teacher_ckpt)
    distill_cfg.teacher.ckpt_path = args.teacher_ckpt

    accelerator = "gpu" if args.device == "cuda" else "cpu"
    variants: dict[str, Callable[[], float]] = {
        "plain PyTorch loop (teacher MLP)": lambda: plain_loop(dm, teacher_cfg, args.device, args.steps),
        "kdlab TeacherModule (teacher MLP)": lambda: lightning_loop(
            dm, teacher_cfg, accelerator, args.precision, args.steps
        ),
        "plain PyTorch loop (student MLP)": lambda: plain_loop(dm, scratch_cfg, args.device, args.steps),
        "kdlab TeacherModule (student MLP, scratch)": lambda: lightning_loop(
            dm, scratch_cfg, accelerator, args.precision, args.steps
        ),
        "kdlab DistillationModule (student + teacher fwd)": lambda: lightning_loop(
            dm, distill_cfg, accelerator, args.precision, args.steps
        ),
        "per-sample pipeline, plain loop (article)": lambda: plain_loop(
            dm, teacher_cfg, args.device, args.steps, per_sample=True
        ),
    }
    results: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(args.repeats):  # interleaved, so load changes hit every variant alike
        for name, run in variants.items():
            results[name].append(run())

    device = torch.cuda.get_device_name() if args.device == "cuda" else f"CPU x{torch.get_num_threads()} threads"
    print(
        f"\nkdlab benchmark on {device}: batch {args.batch_size}, {args.steps} steps x {args.repeats} repeats, "
        f"precision {args.precision}; teacher {count_params(instantiate(teacher_cfg.model)):,} params"
    )
    base = statistics.median(results["plain PyTorch loop (teacher MLP)"])
    print(f"{'variant':<50} {'median steps/s':>15} {'ratio to plain':>15}")
    for name, values in results.items():
        median = statistics.median(values)
        print(f"{name:<50} {median:>15.1f} {median / base:>15.2f}")


if __name__ == "__main__":
    main()
