"""What a finished run tells a person: the terminal table, the from-scratch baseline, TensorBoard's hparams."""

from __future__ import annotations

import math
import statistics
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from rich.console import Console
from rich.table import Table
from rich.text import Text

from kdlab.config import plain
from kdlab.record import RunRecord, find_records


def scratch_baseline(log_dir: str | Path, student_key: str) -> dict[str, Any] | None:
    """Test accuracy of the same student trained from scratch: mean and sample std, one run per seed.

    Only healthy, full, trained runs count (no smoke runs, no evaluations, nothing diverged), and a
    seed run twice counts once (its latest run), so repeating a seed cannot shrink the std.
    """
    latest: dict[Any, RunRecord] = {}
    for _, record in find_records(log_dir):
        if not (isinstance(record, RunRecord) and record.counts_as_baseline()):
            continue
        newer = record.seed not in latest or record.finished_at > latest[record.seed].finished_at
        if record.identity.get("student") == student_key and newer:
            latest[record.seed] = record
    if not latest:
        return None
    accs = [record.metrics["test/acc"] for record in latest.values()]
    return {
        "mean": statistics.fmean(accs),
        "std": statistics.stdev(accs) if len(accs) > 1 else 0.0,
        "runs": len(accs),
        "seeds": sorted(latest, key=lambda s: (s is None, s)),
    }


def _pct(value: float | None) -> str:
    return "-" if value is None or not math.isfinite(value) else f"{100 * value:.2f}%"


def summary_rows(record: RunRecord) -> list[tuple[str, str]]:
    m = record.metric
    rows = [("status", record.status.upper() if record.status != "ok" else "ok")]
    if record.smoke:
        rows.append(("SMOKE RUN", f"{', '.join(record.smoke)}: these numbers are not a result"))
    if record.message:
        rows.append(("message", record.message))
    rows += [
        ("student test acc" if record.is_distillation else "test acc", _pct(m("test/acc"))),
        ("best val acc", _pct(m("val/acc_best"))),
    ]
    if record.is_distillation:
        if record.is_ensemble:  # each member and their combination, from the same test pass
            for i, ref in enumerate(record.members):
                rows.append((f"member {i} test acc ({_teacher_name(ref)})", _pct(m(f"test/member{i}_acc"))))
            rows.append((f"ensemble of {len(record.members)} test acc", _pct(m("test/teacher_acc"))))
        else:
            rows.append(("teacher test acc", _pct(m("test/teacher_acc"))))
        base = record.baseline
        if base:
            rows.append(
                (f"student from scratch ({base['runs']} seeds)", f"{_pct(base['mean'])} ± {100 * base['std']:.2f}")
            )
        else:
            rows.append(("student from scratch", "none found: run the scratch experiment with seed=0,1,2"))
        kl = m("test/kl")
        who = "ensemble" if record.is_ensemble else "teacher"
        rows += [
            (f"{who}-student agreement", _pct(m("test/agreement"))),
            (f"mean KL({who}||student)", "-" if kl is None else f"{kl:.4g}"),
            ("params teacher / student", f"{record.params.get('teacher', 0):,} / {record.params.get('student', 0):,}"),
            ("compression", f"{record.params.get('teacher', 0) / max(record.params.get('student', 1), 1):.2f}x"),
        ]
        if record.teacher is not None:
            rows.append(("teacher", record.teacher.checkpoint))
        rows += [(f"member {i}", ref.checkpoint) for i, ref in enumerate(record.members)]
    else:
        rows.append(("params", f"{sum(record.params.values()):,}"))
    if omitted := record.analysis.get("omitted"):
        before, after = omitted["test"], omitted["test_bias_fixed"]
        digits = ", ".join(map(str, omitted["classes"]))
        rows += [
            (
                f"test errors (on omitted {digits})",
                f"{before['errors']} ({before['errors_omitted']} of {before['n_omitted']})",
            ),
            (
                f"after bias +{omitted['bias_offset']:g} (tuned on val)",
                f"{after['errors']} ({after['errors_omitted']} of {after['n_omitted']})",
            ),
        ]
    rows += [("wall time", f"{record.wall_time_s:.1f} s"), ("run folder", record.output_dir)]
    return rows


def _teacher_name(ref) -> str:
    """A member as a person knows it: its recipe and seed, or 'given file' for a ckpt_path."""
    return f"{ref.recipe}, seed {ref.seed}" if ref.recipe else "given file"


def print_summary(record: RunRecord, console: Console | None = None) -> None:
    title = f"kdlab: {record.name} (seed {record.seed})" + (" [SMOKE]" if record.smoke else "")
    table = Table(title=title, show_header=False)
    table.add_column("", overflow="fold")
    table.add_column("value", justify="right", overflow="fold")  # paths wrap, never "…"
    for row in summary_rows(record):
        table.add_row(*(Text(str(cell)) for cell in row))  # plain text: a message's "[...]" is not Rich markup
    (console or Console()).print(table)


def _flat(prefix: str, node: Any, out: dict[str, Any]) -> None:
    if isinstance(node, dict):
        for key, value in node.items():
            if key not in ("_target_", "_partial_", "_recursive_"):
                _flat(f"{prefix}.{key}", value, out)
    elif isinstance(node, (int, float, str, bool)):
        out[prefix] = node
    elif node is not None:
        out[prefix] = str(node)


def _class_name(node: Any) -> str | None:
    target = node.get("_target_") if isinstance(node, dict) else None
    return target.rsplit(".", 1)[-1] if target else None


def tensorboard_hparams(cfg: DictConfig, record: RunRecord) -> dict[str, Any]:
    """The keys a researcher varies, for the HPARAMS tab: not mirror URLs, not internal fields."""
    c = {k: plain(cfg.get(k)) for k in ("model", "optimizer", "scheduler", "distill", "teacher")}
    hp: dict[str, Any] = {"seed": "null" if cfg.seed is None else cfg.seed}
    hp["model"] = _class_name(c["model"]) or "?"
    _flat("model", {k: v for k, v in c["model"].items() if k not in ("num_classes", "in_features")}, hp)
    for key in ("batch_size", "augment_shift", "exclude_classes"):
        if key in cfg.data:
            _flat(f"data.{key}", plain(cfg.data[key]), hp)
    hp["optimizer"] = _class_name(c["optimizer"]) or "?"
    _flat("optimizer", {k: v for k, v in c["optimizer"].items() if k in ("lr", "weight_decay", "momentum")}, hp)
    hp["scheduler"] = _class_name(c["scheduler"]) or "none"
    for key in ("max_epochs", "precision", "devices", "accumulate_grad_batches", "gradient_clip_val"):
        _flat(f"trainer.{key}", OmegaConf.select(cfg, f"trainer.{key}"), hp)
    hp["params.student"] = record.params.get("student", 0)
    if record.is_distillation and c["distill"]:
        hp["distill.temperature"] = c["distill"].get("temperature")
        for name, term in (c["distill"].get("losses") or {}).items():
            if term:
                _flat(f"distill.losses.{name}", {k: v for k, v in term.items() if k != "temperature"}, hp)
        if "members" in c["teacher"]:  # an ensemble: how many, of what, combined how
            members = c["teacher"]["members"]
            hp["teacher.model"] = "+".join(_class_name(m.get("model")) or "?" for m in members)
            hp["teacher.members"] = len(members)
            hp["teacher.combine"] = (c["teacher"].get("combine") or {}).get("mode", "mean_probs")
            hp["teacher.seeds"] = ",".join(str(m.get("seed")) for m in members)
        else:
            hp["teacher.model"] = _class_name(c["teacher"]["model"]) or "?"
            cached = record.teacher is not None and record.teacher.key is not None
            hp["teacher.recipe"] = c["teacher"].get("recipe") if cached else "(teacher.ckpt_path)"
            hp["teacher.seed"] = c["teacher"].get("seed") if cached else None
        if record.teacher is not None:
            hp["teacher.sha256"] = record.teacher.sha256[:12]
        hp["params.teacher"] = record.params.get("teacher", 0)
    return {k: v for k, v in hp.items() if v is not None}
