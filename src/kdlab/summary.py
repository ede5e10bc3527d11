"""What a finished run reports: metrics.json, the terminal table, TensorBoard's hparams tab."""

import json
import math
import statistics
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from omegaconf import DictConfig
from rich.console import Console
from rich.table import Table

from kdlab.config import plain

METRICS_FILE = "metrics.json"


def write_metrics(output_dir: str | Path, metrics: Mapping[str, Any]) -> Path:
    path = Path(output_dir) / METRICS_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(metrics, indent=2, sort_keys=True) + "\n")
    tmp.replace(path)
    return path


def scratch_baseline(log_dir: str | Path, student_key: str) -> dict[str, float] | None:
    """Mean and std of test accuracy over finished from-scratch runs of the same student recipe."""
    accs = []
    for path in Path(log_dir).glob(f"**/{METRICS_FILE}"):
        try:
            m = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            continue
        if m.get("module") == "TeacherModule" and m.get("student_key") == student_key and "test/acc" in m:
            accs.append(m["test/acc"])
    if not accs:
        return None
    return {
        "scratch/acc_mean": statistics.fmean(accs),
        "scratch/acc_std": statistics.stdev(accs) if len(accs) > 1 else 0.0,
        "scratch/runs": len(accs),
    }


def _pct(value: float | None) -> str:
    return "-" if value is None or math.isnan(value) else f"{100 * value:.2f}%"


def print_summary(metrics: Mapping[str, Any], console: Console | None = None) -> None:
    table = Table(title=f"kdlab: {metrics['name']} (seed {metrics['seed']})", show_header=True)
    table.add_column("")
    table.add_column("value", justify="right")
    rows = [
        ("student test acc" if "params/teacher" in metrics else "test acc", _pct(metrics.get("test/acc"))),
        ("best val acc", _pct(metrics.get("val/acc_best"))),
    ]
    if "params/teacher" in metrics:
        rows += [("teacher test acc", _pct(metrics.get("test/teacher_acc")))]
        if "scratch/acc_mean" in metrics:
            rows += [
                (
                    f"student from scratch ({metrics['scratch/runs']} runs)",
                    f"{_pct(metrics['scratch/acc_mean'])} ± {100 * metrics['scratch/acc_std']:.2f}",
                )
            ]
        else:
            rows += [("student from scratch", "no finished run of this student recipe")]
        rows += [
            ("teacher-student agreement", _pct(metrics.get("test/agreement"))),
            ("mean KL(teacher||student)", f"{metrics.get('test/kl', float('nan')):.4f}"),
            ("params teacher / student", f"{metrics['params/teacher']:,} / {metrics['params/student']:,}"),
            ("compression", f"{metrics['compression']:.2f}x"),
        ]
    else:
        rows += [("params", f"{metrics['params/student']:,}")]
    rows += [("wall time", f"{metrics['wall_time_s']:.1f} s"), ("run folder", str(metrics["output_dir"]))]
    for row in rows:
        table.add_row(*row)
    (console or Console()).print(table)


def flat_hparams(cfg: DictConfig) -> dict[str, Any]:
    """Dotted scalar hyper-parameters for TensorBoard's hparams tab (lists become strings)."""
    groups = ("model", "data", "optimizer", "scheduler", "distill", "teacher", "seed")
    values = {k: plain(cfg[k]) for k in groups if cfg.get(k) is not None}
    flat: dict[str, Any] = {}

    def walk(prefix: str, node: Any) -> None:
        if isinstance(node, dict):
            for k, v in node.items():
                walk(f"{prefix}.{k}" if prefix else str(k), v)
        elif isinstance(node, (int, float, str, bool)) or node is None:
            flat[prefix] = "null" if node is None else node
        else:
            flat[prefix] = str(node)

    walk("", values)
    return flat
