"""Latency and throughput of every (net, runtime, threads) side by side, measured in one process.

Timing on a shared CPU is noisy in bursts: another job starts, the clock steps down. So the cells
are not timed one after another but in rounds, each round visiting every cell once in a fresh random
order; a burst then lands on all rows alike instead of on whichever row ran at that moment. Each
visit warms the cell up first (thread pools wake, TorchScript's profiling executor settles), then
times single calls; the report gives medians (and p95 for batch-1 latency) over all rounds.
"""

from __future__ import annotations

import math
import os
import random
import time
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn


@dataclass(frozen=True)
class SpeedSettings:
    rounds: int = 5  # each cell is visited once per round
    warmup: int = 3  # untimed calls at every visit
    latency_budget_s: float = 0.04  # timed batch-1 calls per visit fill about this long...
    latency_calls: tuple[int, int] = (20, 2000)  # ...within these bounds
    throughput_budget_s: float = 0.15
    throughput_calls: tuple[int, int] = (3, 50)
    batch: int = 256  # images per call for throughput


# Default: 2 nets x 3 runtimes x 2 thread settings = 12 runners x 2 batch sizes = 24 cells;
# a round is ~12 x 0.04 s + 12 x 0.15 s = 2.3 s, 5 rounds ~12 s for the MNIST MLPs.
DEFAULT = SpeedSettings()
QUICK = SpeedSettings(rounds=2, warmup=1, latency_budget_s=0.002, latency_calls=(5, 50), throughput_budget_s=0.005,
                      throughput_calls=(1, 3))  # fmt: skip
FIRST_VISIT_WARMUP = 3  # extra untimed calls the first time a cell runs


def available_threads() -> int:
    """Cores this process may run on (the affinity mask, not the machine's count, under taskset/cgroups)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def count_flops(model: nn.Module) -> int:
    """FLOPs for one image of a RawPixelClassifier's `input_shape` (a multiply-add counts 2), as torch's
    FlopCounterMode counts matmuls and convs.

    Elementwise work (normalisation, activations) is not counted; for these nets it is <1% of the total.
    """
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter, torch.inference_mode():
        model(torch.zeros(1, *model.input_shape, dtype=torch.uint8))
    return int(counter.get_total_flops())


@dataclass
class SpeedRow:
    role: str
    runtime: str
    threads: int
    latency_median_us: float  # batch 1
    latency_p95_us: float
    throughput_ips: float  # images per second at batch `batch`
    batch: int
    latency_samples: int
    throughput_samples: int


def measure(runners: list[tuple[str, object]], images: Tensor, settings: SpeedSettings = DEFAULT) -> list[SpeedRow]:
    """Time each `(role, runner)` at batch 1 and at `settings.batch`, interleaved over rounds.

    `images` (uint8, any count) supply the batches: real test images, cycled to fill the batch.
    """
    big = images[torch.arange(settings.batch) % len(images)]
    cells = [(i, size) for i in range(len(runners)) for size in (1, settings.batch)]
    fed = {(i, size): runners[i][1].feed(big[:size]) for i, size in cells}
    calls: dict[tuple[int, int], int] = {}  # timed calls per visit, sized at the first visit
    samples: dict[tuple[int, int], list[int]] = {cell: [] for cell in cells}
    order = random.Random(0)
    saved_threads = torch.get_num_threads()
    try:
        for _ in range(settings.rounds):
            order.shuffle(cells)
            for cell in cells:
                runner, x, first = runners[cell[0]][1], fed[cell], cell not in calls
                runner.prepare()
                for _ in range(FIRST_VISIT_WARMUP if first else 0):  # settle: TorchScript profiles its first calls
                    runner(x)
                start = time.perf_counter()
                for _ in range(settings.warmup):
                    runner(x)
                if first:  # sized once, from the first visit's warm-up
                    per_call = (time.perf_counter() - start) / max(settings.warmup, 1)
                    budget, (low, high) = (
                        (settings.latency_budget_s, settings.latency_calls)
                        if cell[1] == 1
                        else (settings.throughput_budget_s, settings.throughput_calls)
                    )
                    calls[cell] = max(low, min(high, math.ceil(budget / max(per_call, 1e-9))))
                for _ in range(calls[cell]):
                    t0 = time.perf_counter_ns()
                    runner(x)
                    samples[cell].append(time.perf_counter_ns() - t0)
    finally:
        torch.set_num_threads(saved_threads)

    rows = []
    for i, (role, runner) in enumerate(runners):
        one = np.array(samples[(i, 1)], dtype=np.float64) / 1e3  # ns -> us
        many = np.array(samples[(i, settings.batch)], dtype=np.float64) / 1e9  # ns -> s
        rows.append(SpeedRow(role, runner.runtime, runner.threads, float(np.median(one)), float(np.percentile(one, 95)),
                             float(settings.batch / np.median(many)), settings.batch, len(one), len(many)))  # fmt: skip
    return rows
