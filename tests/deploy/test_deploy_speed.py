"""Timing: rounds interleave every cell, threads are put back, FLOPs are counted exactly."""

from __future__ import annotations

import pytest
import torch

from kdlab.data import DataSpec
from kdlab.deploy.speed import SpeedSettings, count_flops, measure
from kdlab.models import MLP, SmallCNN
from kdlab.runfolder import RawPixelClassifier

pytestmark = pytest.mark.unit

TINY = SpeedSettings(rounds=3, warmup=1, latency_calls=(4, 4), throughput_calls=(2, 2), batch=16)


class FakeRunner:
    """Logs each visit (prepare) and call, so the order of the measurement can be checked."""

    runtime = "fake"

    def __init__(self, name: str, log: list, threads: int) -> None:
        self.name, self.log, self.threads = name, log, threads

    def prepare(self) -> None:
        torch.set_num_threads(self.threads)
        self.log.append(("visit", self.name))

    def feed(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def __call__(self, x: torch.Tensor) -> None:
        self.log[-1] = (*self.log[-1][:2], len(x))  # the visit's batch size


def test_rounds_visit_every_cell_once_before_any_cell_again():
    log: list = []
    runners = [(f"net{i}", FakeRunner(f"net{i}", log, threads=1 + i % 2)) for i in range(3)]
    threads = torch.get_num_threads()
    rows = measure(runners, torch.zeros(5, 1, 28, 28, dtype=torch.uint8), TINY)
    cells = {(f"net{i}", size) for i in range(3) for size in (1, 16)}
    visits = [(name, size) for _, name, size in log]
    assert len(visits) == TINY.rounds * len(cells)
    for r in range(TINY.rounds):
        assert sorted(visits[r * 6 : (r + 1) * 6]) == sorted(cells)
    assert visits[:6] != visits[6:12] or visits[6:12] != visits[12:]  # the order is shuffled per round
    assert torch.get_num_threads() == threads  # the runners changed it; measure put it back
    assert [(r.role, r.threads, r.latency_samples, r.throughput_samples) for r in rows] == [
        ("net0", 1, 12, 6),
        ("net1", 2, 12, 6),
        ("net2", 1, 12, 6),
    ]


def test_flops_per_image_count_multiply_adds_twice():
    grey = DataSpec("mnist", (1, 28, 28), [str(i) for i in range(10)], [0.1], [0.3])
    mlp = RawPixelClassifier(MLP((1, 28, 28), 10, hidden=(32, 16)), grey)
    assert count_flops(mlp) == 2 * (784 * 32 + 32 * 16 + 16 * 10)
    cnn = RawPixelClassifier(SmallCNN((1, 28, 28), 10, channels=(4,), hidden=8, batch_norm=False), grey)
    # conv 3x3, 1 -> 4 channels, on 28 x 28; then 4 x 14 x 14 -> 8 -> 10
    assert count_flops(cnn) == 2 * (28 * 28 * 4 * 9 + 4 * 14 * 14 * 8 + 8 * 10)
    rgb = DataSpec("cifar10", (3, 32, 32), [str(i) for i in range(10)], [0.5] * 3, [0.25] * 3)
    cnn = RawPixelClassifier(SmallCNN((3, 32, 32), 10, channels=(4,), hidden=8, batch_norm=False), rgb)
    # conv 3x3, 3 -> 4 channels, on 32 x 32; then 4 x 16 x 16 -> 8 -> 10: the image comes from the spec
    assert count_flops(cnn) == 2 * (32 * 32 * 4 * 3 * 9 + 4 * 16 * 16 * 8 + 8 * 10)
