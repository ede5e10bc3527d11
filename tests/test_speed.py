"""scripts/benchmark.py runs end to end and writes its rows and ratios as JSON (smoke runs on generated data).

Speed itself is never asserted here: these tests check what each row runs, not how fast.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from script_loader import script_module

REPO = Path(__file__).resolve().parents[1]

TINY_DATA = ("data.verify=false", "data.mirrors=[]", "data.pypi_package=null", "data.val_size=200",
             "data.eval_batch_size=200")  # fmt: skip
OVERRIDES = [arg for override in TINY_DATA for arg in ("--override", override)]


def _benchmark_module():
    return script_module("benchmark")


@pytest.fixture
def torch_state():
    """benchmark.main sets this process's torch threads and denormal flushing: restored after the test."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)
    torch.set_flush_denormal(False)


def test_benchmark_quick_mode_emits_every_row_as_json(mnist_dir, tmp_path):
    out = tmp_path / "bench.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, "scripts/benchmark.py", "--quick", "--data-dir", str(mnist_dir), "--json", str(out),
         *OVERRIDES],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    results = json.loads(out.read_text())
    rows = {(r["row"], r["batch_size"]) for r in results["rows"]}
    assert {(f"distill/{kind}", 128) for kind in ("plain", "lightning", "bare", "plain+val", "kdlab")} <= rows
    assert {(f"distill-cached/{kind}", 128) for kind in ("plain", "lightning", "bare", "kdlab")} <= rows
    assert ("scratch/kdlab", 128) in rows
    for row in results["rows"]:
        run = row["runs"][0]
        assert run["images"] == (2 * 4 - 2) * 128 and run["seconds"] > 0 and run["setup_s"] > 0
    ratios = {r["what"]: r for r in results["ratios"]}
    target = ratios["kdlab as users run it / plain+val, live teacher, 128"]
    assert target["target"] == 0.85 and isinstance(target["met"], bool) and target["ratio"] > 0
    assert target["paired_ratio"] > 0
    assert results["teacher_cache"]["views"] == 25 and results["teacher_cache"]["build_s"] > 0
    assert results["machine"]["threads"] == {"threads": 1, "chosen_by": "OMP_NUM_THREADS",
                                             "cpus": results["machine"]["cpus_usable"]}  # fmt: skip
    assert len(results["load_average"]["before"]) == 3
    assert "kdlab as users run it / plain+val" in done.stdout  # the printed table


def test_generated_files_without_overrides_are_refused_in_one_paragraph(mnist_dir, monkeypatch, torch_state):
    import runpy

    monkeypatch.setattr(sys, "argv", ["benchmark.py", "--quick", "--data-dir", str(mnist_dir), "--threads", "1"])
    with pytest.raises(SystemExit) as refused:  # as `python scripts/benchmark.py ...` runs it
        runpy.run_path(str(REPO / "scripts" / "benchmark.py"), run_name="__main__")
    message = str(refused.value.code)
    assert message.startswith("benchmark: ") and "\n" not in message
    assert "other content" in message and str(mnist_dir) in message  # kdlab's ForeignDataError, files untouched


def test_the_paired_ratio_is_the_median_of_each_repeats_ratio():
    benchmark = _benchmark_module()

    def row(name, rates):
        return benchmark.Row(name, 128, run=None, timings=[benchmark.Timing(r, 1.0, 1.0, 0.0, 0.0) for r in rates])

    # Repeat 1 ran on a loaded machine, both rows alike; in repeat 2 a load spike hit the plain row alone.
    rows = [row("distill/plain", [100, 100, 200]), row("distill/bare", [90, 180, 180])]
    assert benchmark.paired_ratio(rows, "distill/bare", "distill/plain", 128) == 0.9  # ratios 0.9, 1.8, 0.9
    assert benchmark.ratio(rows, "distill/bare", "distill/plain", 128) == 1.8  # medians 180 / 100 mix the loads


def test_the_fused_row_builds_a_fused_optimizer_and_every_row_computes_with_the_benchmarks_threads(tmp_path):
    from hydra.utils import instantiate

    benchmark = _benchmark_module()
    args = benchmark.parse_args(["--data-dir", str(tmp_path), "--precision-batch-sizes", "128"])
    plan = benchmark.ThreadPlan(3, "runtime.threads", 8)
    bench = benchmark.Bench(args, tmp_path, torch.device("cpu"), str(tmp_path / "teacher.pt"), plan)
    params = [torch.nn.Parameter(torch.zeros(3))]
    fused = instantiate(benchmark.fused_config(bench, "scratch", 128).optimizer)(params=params)
    default = instantiate(bench.config("scratch", 128).optimizer)(params=params)
    assert fused.defaults["fused"] is True and not default.defaults["fused"]
    assert type(fused) is type(default)  # the same optimiser and settings, fused or not
    assert {k: v for k, v in fused.defaults.items() if k != "fused"} == {
        k: v for k, v in default.defaults.items() if k != "fused"
    }
    assert "distill/bare fused" in {row.name for row in benchmark.make_rows(bench)}
    # kdlab.run.train applies runtime.threads itself: the kdlab rows must get the plain rows' count
    assert bench.config("distill", 128).runtime.threads == 3


def test_the_plain_loops_loss_and_cached_logits_are_kdlabs_on_the_same_batch(mnist_dir, tmp_path):
    from hydra.utils import instantiate

    benchmark = _benchmark_module()
    args = benchmark.parse_args(["--data-dir", str(mnist_dir), *OVERRIDES])
    bench = benchmark.Bench(args, tmp_path, torch.device("cpu"), "", benchmark.plan_threads("auto"))
    benchmark.load_shared(bench)
    dm = bench.data
    batch = dm.preprocess_batch((dm.data_train.x[:64], dm.data_train.y[:64], torch.arange(64)), training=True)
    assert batch.shift is not None  # distill_mlp shifts its images: the cache must find each one's view
    modules = {}
    for family in ("scratch", "distill"):
        cfg = bench.config(family, 64)
        modules[family] = module = instantiate(cfg.module, num_classes=dm.num_classes, input_shape=list(dm.input_shape))
        with torch.no_grad():
            t_logits = module.teacher(batch.x) if family == "distill" else None
        terms = benchmark.kd_terms(cfg) if family == "distill" else None
        expected = module.training_step(batch, 0)
        torch.testing.assert_close(benchmark.plain_loss(module.net(batch.x), batch.y, t_logits, terms), expected)
    benchmark.build_cached_outputs(bench, 64)  # the plain and bare cached rows read the live teacher's logits
    with torch.no_grad():
        live = modules["distill"].teacher(batch.x)
    cached = bench.outputs["cache"].lookup(batch.index, batch.shift, batch.flip)
    torch.testing.assert_close(cached, live, rtol=1e-4, atol=1e-4)
    # The `lightning` rows' module: the plain loop's step, its teacher (live or cached) kept out of its children
    bench.teacher_ckpt = str(tmp_path / "teacher.pt")
    torch.save(modules["distill"].teacher.state_dict(), bench.teacher_ckpt)
    for family, table in (("scratch", None), ("distill", None), ("distill", bench.outputs["cache"])):
        cfg = bench.config(family, 64)
        teacher_ckpt = bench.teacher_ckpt if family == "distill" else None
        loop = benchmark.plain_loop(cfg, dm, torch.device("cpu"), 1, teacher_ckpt, table)
        loop.net.load_state_dict(modules[family].net.state_dict())
        step = benchmark.PlainStep(loop)
        assert [name for name, _ in step.named_children()] == ["net"]
        expected = modules[family].training_step(batch, 0)
        torch.testing.assert_close(step.training_step(batch, 0), expected, rtol=1e-4, atol=1e-5)


def test_precision_rows_alone_run_and_a_pattern_that_matches_nothing_is_refused(mnist_dir, torch_state):
    benchmark = _benchmark_module()
    args = ["--quick", "--data-dir", str(mnist_dir), "--threads", "1", *OVERRIDES]
    # only the precision rows' batch size: the rows' own batch sizes are empty (this crashed before)
    results = benchmark.main(
        [*args, "--batch-sizes", "", "--precision-batch-sizes", "128", "--rows", "distill/bare,distill/bare fused"]
    )
    rows = {(r["row"], r["batch_size"]) for r in results["rows"]}
    assert {("distill/bare", 128), ("distill/bare fused", 128)} <= rows
    assert any(r["what"] == "distill/bare fused vs distill/bare" for r in results["ratios"])
    with pytest.raises(SystemExit, match="no row matches --rows distill/nothing"):
        benchmark.main([*args, "--rows", "distill/nothing"])


def test_every_repeat_of_a_kdlab_row_trains_in_a_folder_of_its_own(mnist_dir, torch_state):
    benchmark = _benchmark_module()
    tiny = ["--epochs", "2", "--steps-per-epoch", "4", "--warmup", "2", "--batch-sizes", "128"]  # --quick, 2 repeats
    results = benchmark.main(["--data-dir", str(mnist_dir), "--threads", "1", "--rows", "scratch/kdlab", *tiny,
                              "--precision-batch-sizes", "", "--repeats", "2", *OVERRIDES])  # fmt: skip
    (row,) = results["rows"]
    assert [run["images"] for run in row["runs"]] == [(2 * 4 - 2) * 128] * 2
