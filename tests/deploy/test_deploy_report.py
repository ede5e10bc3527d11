"""deploy.md from a hand-made result: the sections a reader needs, the warnings when they apply."""

from __future__ import annotations

import json

from kdlab.deploy import DeployResult, render_markdown, write_report


def result(load: float | None = 0.5, status: str = "ok") -> DeployResult:
    net = {"params": 1000, "flops_per_image": 2000, "files": {"weights": {"path": "w.pt", "bytes": 4000}}}
    row = {"runtime": "onnxruntime", "threads": 1, "latency_p95_us": 30.0, "batch": 256}
    return DeployResult(
        run={"folder": "runs/x", "name": "distill_mlp", "kind": "distillation", "status": "ok"},
        test={"images": 10000, "source": "data"},
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


def test_a_busy_machine_is_called_out():
    assert "The machine was busy (load average 3.5 on 2 cores)" in render_markdown(result(load=3.5))


def test_a_refused_export_says_so(tmp_path):
    r = result(status="parity failed")
    r.speed = None
    json_path, md_path = write_report(r, tmp_path)
    assert "**Export refused: parity failed.**" in md_path.read_text()
    assert json.loads(json_path.read_text())["status"] == "parity failed"
