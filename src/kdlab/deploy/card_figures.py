"""The model card's figures: every number the card shows, gathered from the run record, its config.yaml and
this export's measurements, plus the front matter that carries them for tools (see kdlab.deploy.card)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import yaml
from omegaconf import OmegaConf

from kdlab.checkpoints import sha256_file
from kdlab.config import plain
from kdlab.deploy.report import DeployResult, _pct
from kdlab.record import RunRecord
from kdlab.runfolder import RunFolder

CARD_FILE = "README.md"
Z95 = 1.959963984540054  # the standard normal's 97.5% quantile: a two-sided 95% interval
NET_SHAPE_KEYS = ("_target_", "input_shape", "num_classes")  # filled from the data, not the net's own settings


def wilson_interval(correct: int, n: int, z: float = Z95) -> tuple[float, float]:
    """The Wilson score interval of a binomial proportion p = correct / n (Wilson 1927):

        centre = (p + z^2 / 2n) / (1 + z^2 / n),   half = z / (1 + z^2 / n) * sqrt(p (1 - p) / n + z^2 / 4n^2)

    Unlike p +- z sqrt(p (1 - p) / n) it stays inside [0, 1] and does not shrink to a point at p = 1: a
    perfect score on a small test set is still uncertain. It covers the sampling of the test images only.
    """
    if n < 1:
        raise ValueError(f"a Wilson interval needs at least one trial, got n={n}")
    p, z2 = correct / n, z * z
    centre = (p + z2 / (2 * n)) / (1 + z2 / n)
    half = z / (1 + z2 / n) * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n))
    # at p = 0 (p = 1) the bound is 0 (1) exactly; rounding would leave it a hair inside
    return 0.0 if correct == 0 else centre - half, 1.0 if correct == n else centre + half


def card_figures(run: RunFolder, result: DeployResult, correct: int, files: dict[str, Path]) -> dict[str, Any]:
    """Every figure the card shows, as plain values (the front matter's `kdlab` block)."""
    record, n = run.record, result.test["images"]
    student = net_row(result, run.student.role)
    low, high = wilson_interval(correct, n)
    analysis = record.analysis or {}
    agreement, agreement_from = analysis.get("agreement"), "analysis.agreement"
    if agreement is None and record.is_distillation:
        agreement, agreement_from = record.metric("test/agreement"), "metrics test/agreement"
    ece = {
        role: analysis[role]["ece"] for role in ("student", "teacher") if analysis.get(role, {}).get("ece") is not None
    }
    speed = result.speed or {}
    return {
        "run": record.name,
        "kind": record.kind,
        "status": record.status,
        "seed": record.seed,
        "net": student["net"],
        "params": {
            "student": student["params"],
            **({"teacher": _teacher_params(run, result)} if record.is_distillation else {}),
        },
        "test": {
            "images": n,
            "correct": correct,
            "accuracy": correct / n,
            "interval": {"method": "wilson", "level": 0.95, "low": low, "high": high},
            "recorded_accuracy": record.metric("test/acc"),  # the run's own test pass, checked against ours
        },
        "agreement": None if agreement is None else float(agreement),
        "agreement_source": agreement_from if agreement is not None else None,
        "ece": {**ece, "bins": analysis.get("n_bins"), "images": analysis.get("n_test")} if ece else None,
        "teachers": _teachers(run, result),
        "ensemble": _ensemble(run, result),
        "latency": [
            {k: r[k] for k in ("runtime", "threads", "latency_median_us", "latency_p95_us", "throughput_ips", "batch")}
            for r in speed.get("rows", [])
            if r["role"] == run.student.role
        ]
        or None,
        "role": run.student.role,
        "files": {
            name: {"file": path.name, "bytes": path.stat().st_size, "sha256": sha256_file(path)}
            for name, path in files.items()
        },
    }


def net_row(result: DeployResult, role: str) -> dict[str, Any] | None:
    return next((n for n in result.nets if n["role"] == role), None)


def _teacher_params(run: RunFolder, result: DeployResult) -> int | None:
    """The teacher's (an ensemble's: its members' together) parameters: counted now, else as recorded."""
    rows = [net_row(result, ref_role) for ref_role, _ in _refs(run.record)]
    if rows and all(rows):
        return sum(r["params"] for r in rows)
    return run.record.params.get("teacher")


def _refs(record: RunRecord) -> list[tuple[str, Any]]:
    if record.teacher:
        return [("teacher", record.teacher)]
    return [(f"member{i}", m) for i, m in enumerate(record.members)]


def _teachers(run: RunFolder, result: DeployResult) -> list[dict[str, Any]]:
    """The teacher or each ensemble member: what it is, where it came from and its test accuracy.

    Accuracy is the export's count on the same test images when the teacher's weights are still there,
    else the record's (`test/teacher_acc`, `test/member<i>_acc`), with its source named.
    """
    teachers = []
    for i, (role, ref) in enumerate(_refs(run.record)):
        row = net_row(result, role)
        key = "test/teacher_acc" if role == "teacher" else f"test/member{i}_acc"
        accuracy, source = (row["accuracy"], "export") if row else (run.record.metric(key), f"metrics {key}")
        teachers.append({
            "role": role,
            "net": (ref.model or {}).get("_target_") or (row or {}).get("net"),
            "model": _settings(ref.model or (row or {}).get("model") or {}, NET_SHAPE_KEYS),
            "params": row["params"] if row else None,
            "recipe": ref.recipe,
            "seed": ref.seed,
            "cache_key": ref.key,
            "sha256": ref.sha256,
            "file": Path(ref.checkpoint).name,
            "normalization": {"mean": ref.data["mean"], "std": ref.data["std"]} if ref.data else None,
            "accuracy": accuracy,
            "accuracy_source": source if accuracy is not None else None,
        })  # fmt: skip
    return teachers


def _ensemble(run: RunFolder, result: DeployResult) -> dict[str, Any] | None:
    if not run.record.members:
        return None
    if result.ensemble:
        return {"combine": result.ensemble["combine"], "accuracy": result.ensemble["accuracy"], "source": "export"}
    combine = plain(OmegaConf.select(run.config, "teacher.combine", default=None))
    accuracy = run.record.metric("test/teacher_acc")
    return {"combine": combine, "accuracy": accuracy, "source": "metrics test/teacher_acc" if accuracy else None}


def _settings(config: dict[str, Any] | None, skip: tuple[str, ...] = ("_target_", "_partial_")) -> dict[str, Any]:
    return {k: v for k, v in (config or {}).items() if k not in skip}


def short_name(target: str | None) -> str:
    return (target or "?").rsplit(".", 1)[-1]


def call_text(config: dict[str, Any] | None, skip: tuple[str, ...] = ("_target_", "_partial_")) -> str:
    """`AdamW(lr=0.003, weight_decay=0.0001)`: a config as the call it makes; null (e.g. scheduler=none): none."""
    if not config:
        return "none"
    args = ", ".join(f"{k}={plain_text(v)}" for k, v in _settings(config, skip).items())
    return f"{short_name(config.get('_target_'))}({args})"


def plain_text(value: Any) -> str:
    return yaml.safe_dump(value, default_flow_style=True, width=10_000).strip().removesuffix("\n...")


def front_matter(run: RunFolder, result: DeployResult, figures: dict[str, Any]) -> dict[str, Any]:
    """Hugging Face's model card metadata (model-index: the test accuracy), then kdlab's figures."""
    spec, test = run.spec, figures["test"]
    tags = ["kdlab", "image-classification", *(["knowledge-distillation"] if run.record.is_distillation else []),
            "pytorch", "safetensors", *result.formats]  # fmt: skip
    return {
        "library_name": "kdlab",
        "pipeline_tag": "image-classification",
        "tags": tags,
        "datasets": [spec.name],
        "metrics": ["accuracy"],
        "model-index": [
            {
                "name": run.record.name,
                "results": [
                    {
                        "task": {"type": "image-classification", "name": "Image Classification"},
                        "dataset": {"name": spec.name, "type": spec.name, "split": "test"},
                        "metrics": [{"type": "accuracy", "value": test["accuracy"], "name": "Test accuracy"}],
                    }
                ],
            }
        ],
        "kdlab": figures,
    }


def warnings_for(run: RunFolder, result: DeployResult, figures: dict[str, Any]) -> list[str]:
    """What a reader must know before trusting the figures: an unfinished run, numbers that disagree."""
    record, test, n = run.record, figures["test"], figures["test"]["images"]
    found = []
    if record.status != "ok":
        why = f": {record.message}" if record.message else f" ({', '.join(record.smoke)})" if record.smoke else ""
        found.append(f"This run's status is {record.status!r}{why}: it did not train to the end, and its figures "
                     "describe that state, not the recipe's result.")  # fmt: skip
    recorded = test["recorded_accuracy"]
    if recorded is not None and abs(recorded - test["accuracy"]) > 0.5 / n + 1e-6:  # more than one image apart
        found.append(
            f"The run's own test pass recorded test/acc {_pct(recorded)}, but the shipped weights score "
            f"{_pct(test['accuracy'])} on the {n} test images now: the weights file may not be the tested checkpoint, "
            "or the test pass saw part of the test set. The card reports the export's count."
        )
    n_test = (record.analysis or {}).get("n_test")
    if n_test is not None and n_test != n:
        found.append(
            f"Agreement and calibration come from the record's analysis of {n_test} test images; the test set has "
            f"{n} now. Re-run `python scripts/evaluate.py` on the run folder and export again."
        )
    return found + list(result.notes)
