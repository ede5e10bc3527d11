"""The data layer under real two-process DDP (gloo, CPU): disjoint shards, per-rank shifts, exact resume."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

JOB = Path(__file__).resolve().parent / "ddp_data_job.py"
STEPS = 8  # 1000 training images on 2 ranks = 500 each / 64 = 7 full batches + 1 of 52

pytestmark = pytest.mark.slow


def run_job(scenario: str, mnist_dir: Path, out: Path) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # two ranks on two cores
    done = subprocess.run(
        [sys.executable, str(JOB), scenario, str(mnist_dir), str(out)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-5000:]


def ranks(folder: Path) -> list:
    return [json.loads((folder / f"rank{r}.json").read_text()) for r in range(2)]


def test_ddp_ranks_split_each_epoch_draw_own_shifts_and_resume_exactly(mnist_dir, tmp_path):
    run_job("shards_and_resume", mnist_dir, tmp_path)
    full = ranks(tmp_path / "full")
    for epoch in range(2):
        shards = [[i for e, _, index, _ in rank if e == epoch for i in index] for rank in full]
        assert len(shards[0]) == len(shards[1]) == 500
        assert sorted(shards[0] + shards[1]) == list(range(1000))  # disjoint, together the whole split
    assert len(full[0]) == 2 * STEPS
    shifts = [[shift for *_, shift in rank] for rank in full]
    assert all(a != b for a, b in zip(*shifts, strict=True))  # each rank its own augmentation stream

    assert json.loads((tmp_path / "streams.json").read_text()) == [0, 1]  # both ranks' streams, gathered
    before, after = ranks(tmp_path / "before"), ranks(tmp_path / "after")
    for rank in range(2):
        assert before[rank] + after[rank] == full[rank]


def test_ranks_share_rank_zeros_seed_without_seed_everything(mnist_dir, tmp_path):
    run_job("shared_seed", mnist_dir, tmp_path)
    assert [(tmp_path / f"seed{rank}").read_text() for rank in range(2)] == ["100", "100"]
