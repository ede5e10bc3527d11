"""scripts/benchmark.py runs end to end and writes its rows and ratios as JSON (a smoke run on generated data)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

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


def _benchmark_module():
    sys.path.insert(0, str(REPO / "scripts"))
    try:
        import benchmark
    finally:
        sys.path.remove(str(REPO / "scripts"))
    return benchmark


def test_the_paired_ratio_is_the_median_of_each_repeats_ratio():
    benchmark = _benchmark_module()

    def row(name, rates):
        return benchmark.Row(name, 128, run=None, timings=[benchmark.Timing(r, 1.0, 1.0, 0.0, 0.0) for r in rates])

    # Repeat 1 ran on a loaded machine, both rows alike; in repeat 2 a load spike hit the plain row alone.
    rows = [row("distill/plain", [100, 100, 200]), row("distill/bare", [90, 180, 180])]
    assert benchmark.paired_ratio(rows, "distill/bare", "distill/plain", 128) == 0.9  # ratios 0.9, 1.8, 0.9
    assert benchmark.ratio(rows, "distill/bare", "distill/plain", 128) == 1.8  # medians 180 / 100 mix the loads


def test_the_fused_row_builds_a_fused_optimizer_and_the_bare_row_torchs_default(tmp_path):
    import torch
    from hydra.utils import instantiate

    benchmark = _benchmark_module()
    args = benchmark.parse_args(["--data-dir", str(tmp_path), "--precision-batch-sizes", "128"])
    bench = benchmark.Bench(args, tmp_path, torch.device("cpu"), teacher_ckpt=str(tmp_path / "teacher.pt"))
    params = [torch.nn.Parameter(torch.zeros(3))]
    fused = instantiate(benchmark.fused_config(bench, "scratch", 128).optimizer)(params=params)
    default = instantiate(bench.config("scratch", 128).optimizer)(params=params)
    assert fused.defaults["fused"] is True and not default.defaults["fused"]
    assert type(fused) is type(default)  # the same optimiser and settings, fused or not
    assert {k: v for k, v in fused.defaults.items() if k != "fused"} == {
        k: v for k, v in default.defaults.items() if k != "fused"
    }
    assert "distill/bare fused" in {row.name for row in benchmark.make_rows(bench)}


def test_precision_rows_alone_run_and_a_pattern_that_matches_nothing_is_refused(mnist_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("KDLAB_RUN_REGISTRY", str(tmp_path / "runs"))
    benchmark = _benchmark_module()
    overrides = [arg for override in TINY_DATA for arg in ("--override", override)]
    args = ["--quick", "--data-dir", str(mnist_dir), "--threads", "1", *overrides]
    # only the precision rows' batch size: the rows' own batch sizes are empty (this crashed before)
    results = benchmark.main(
        [*args, "--batch-sizes", "", "--precision-batch-sizes", "128", "--rows", "distill/bare,distill/bare fused"]
    )
    rows = {(r["row"], r["batch_size"]) for r in results["rows"]}
    assert {("distill/bare", 128), ("distill/bare fused", 128)} <= rows
    assert any(r["what"] == "distill/bare fused vs distill/bare" for r in results["ratios"])
    with pytest.raises(SystemExit, match="no row matches --rows distill/nothing"):
        benchmark.main([*args, "--rows", "distill/nothing"])
