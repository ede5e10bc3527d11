"""scripts/benchmark.py runs end to end and writes its rows and ratios as JSON (a smoke run on generated data)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

TINY_DATA = ("data.verify=false", "data.mirrors=[]", "data.pypi_package=null", "data.val_size=200",
             "data.eval_batch_size=200")  # fmt: skip


def test_benchmark_quick_mode_emits_every_row_as_json(mnist_dir, tmp_path):
    out = tmp_path / "bench.json"
    overrides = [arg for override in TINY_DATA for arg in ("--override", override)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "KDLAB_RUN_REGISTRY": str(tmp_path / "runs")}
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "scripts/benchmark.py", "--quick", "--data-dir", str(mnist_dir), "--json", str(out),
         *overrides],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert time.perf_counter() - started < 60  # ~25 s alone on 2 cores
    results = json.loads(out.read_text())
    rows = {(r["row"], r["batch_size"]) for r in results["rows"]}
    assert {(f"distill/{kind}", 128) for kind in ("plain", "bare", "plain+val", "kdlab")} <= rows
    assert {("distill-cached/plain", 128), ("distill-cached/bare", 128), ("distill-cached/kdlab", 128)} <= rows
    assert ("scratch/kdlab", 128) in rows
    for row in results["rows"]:
        run = row["runs"][0]
        assert run["images"] == (2 * 4 - 2) * 128 and run["seconds"] > 0 and run["setup_s"] > 0
    ratios = {r["what"]: r for r in results["ratios"]}
    target = ratios["kdlab as users run it / plain+val, live teacher, 128"]
    assert target["target"] == 0.85 and isinstance(target["met"], bool) and target["ratio"] > 0
    assert target["paired_ratio"] > 0
    assert results["teacher_cache"]["views"] == 25 and results["teacher_cache"]["build_s"] > 0
    assert results["machine"]["threads"]["threads"] == 1 and len(results["load_average"]["before"]) == 3
    assert "kdlab as users run it / plain+val" in done.stdout  # the printed table


def test_the_paired_ratio_is_the_median_of_each_repeats_ratio():
    sys.path.insert(0, str(REPO / "scripts"))
    try:
        import benchmark
    finally:
        sys.path.remove(str(REPO / "scripts"))

    def row(name, rates):
        return benchmark.Row(name, 128, run=None, timings=[benchmark.Timing(r, 1.0, 1.0, 0.0, 0.0) for r in rates])

    # Repeat 1 ran on a loaded machine, both rows alike; in repeat 2 a load spike hit the plain row alone.
    rows = [row("distill/plain", [100, 100, 200]), row("distill/bare", [90, 180, 180])]
    assert benchmark.paired_ratio(rows, "distill/bare", "distill/plain", 128) == 0.9  # ratios 0.9, 1.8, 0.9
    assert benchmark.ratio(rows, "distill/bare", "distill/plain", 128) == 1.8  # medians 180 / 100 mix the loads
