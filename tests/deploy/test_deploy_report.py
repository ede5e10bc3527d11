"""deploy.md from a hand-made result: the sections a reader needs, the warnings when they apply."""

from __future__ import annotations

import json

import pytest

from kdlab.deploy.report import DeployResult, render_markdown, write_report

pytestmark = pytest.mark.unit
NET = {"params": 1000, "flops_per_image": 2000, "files": {"weights": {"path": "w.pt", "bytes": 4000}},
       "normalization": {"mean": [0.1307], "std": [0.3081]}}  # fmt: skip
ROW = {"runtime": "onnxruntime", "threads": 1, "latency_p95_us": 30.0, "batch": 256}


def result(load: float | None = 0.5, status: str = "ok") -> DeployResult:
    net, row = NET, ROW
    return DeployResult(
        run={"folder": "runs/x", "name": "distill_mlp", "kind": "distillation", "status": "ok"},
        test={"images": 10000, "source": "data", "data": "mnist", "input_shape": [1, 28, 28]},
        nets=[{**net, "role": "teacher", "accuracy": 0.98}, {**net, "role": "student", "accuracy": 0.975}],
        parity=[],
        formats=["onnx"],
        speed={
            "settings": {"rounds": 5, "batch": 256, "cores": 2},
            "load_average": load,
            "rows": [
                {**row, "role": "teacher", "latency_median_us": 90.0, "throughput_ips": 20000.0},
                {**row, "role": "student", "latency_median_us": 30.0, "throughput_ips": 50000.0},
            ],
        },
        status=status,
    )


def test_speed_up_and_accuracy_gap_are_spelled_out():
    md = render_markdown(result())
    assert "| student | onnxruntime | 1 | 30.0 | 30.0 | 50,000 | 3.00x / 2.50x |" in md  # 90/30, 50k/20k
    assert "test accuracy 97.50% vs 98.00% (-0.50 points)" in md
    assert "busy" not in md and "TorchScript deprecated" not in md  # no TorchScript asked for, no note on it


def test_an_ensemble_costs_its_members_together():
    """Each image goes through every member: latencies add up, so do the seconds per image of the throughputs."""
    r = result()
    rgb = {"mean": [0.49, 0.48, 0.45], "std": [0.25, 0.24, 0.26]}
    r.test["input_shape"] = [3, 32, 32]
    r.nets = [{**NET, "role": "member0", "accuracy": 0.9, "normalization": rgb},
              {**NET, "role": "member1", "accuracy": 0.8, "normalization": rgb},
              {**NET, "role": "student", "accuracy": 0.85, "normalization": rgb}]  # fmt: skip
    r.ensemble = {
        "members": ["member0", "member1"],
        "combine": {"mode": "mean_probs", "scored_at": 1.0},
        "accuracy": 0.95,
    }
    r.speed["rows"] = [
        {**ROW, "role": "member0", "latency_median_us": 60.0, "throughput_ips": 20000.0},
        {**ROW, "role": "member1", "latency_median_us": 30.0, "throughput_ips": 40000.0},
        {**ROW, "role": "student", "latency_median_us": 30.0, "throughput_ips": 50000.0},
    ]
    md = render_markdown(r)
    # (60 + 30) / 30 = 3; 50k x (1/20k + 1/40k) = 2.5 + 1.25
    assert "| student | onnxruntime | 1 | 30.0 | 30.0 | 50,000 | 3.00x / 3.75x |" in md
    assert "Student vs the ensemble of 2 (mean_probs at T=1): 0.50x the parameters, 0.50x the FLOPs" in md
    assert "test accuracy 85.00% vs 95.00% (-10.00 points)" in md  # the members combined, not either one
    assert "raw uint8 pixels [N, 3, 32, 32]" in md and "| member0 | 1,000 | 0.002 | 90.00% | 0.49,0.48,0.45 / " in md


def test_a_busy_machine_is_called_out():
    assert "The machine was busy (load average 3.5 on 2 cores)" in render_markdown(result(load=3.5))


def test_a_refused_export_says_so(tmp_path):
    r = result(status="parity failed")
    r.speed = None
    json_path, md_path = write_report(r, tmp_path)
    assert "**Export refused: parity failed.**" in md_path.read_text()
    assert json.loads(json_path.read_text())["status"] == "parity failed"
