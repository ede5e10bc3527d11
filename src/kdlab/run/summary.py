"""What a finished run tells a person: the terminal table, and TensorBoard's hparams."""

from __future__ import annotations

import io
import logging
from typing import Any

from omegaconf import DictConfig, OmegaConf
from rich.console import Console
from rich.table import Table
from rich.text import Text

from kdlab.config import plain
from kdlab.console import RUN_LOG
from kdlab.record import RunRecord, scored_as
from kdlab.report.formatting import percent


def summary_rows(record: RunRecord) -> list[tuple[str, str]]:
    def pct(metric: str) -> str:
        return percent(record.metric(metric), "%")

    rows = [("status", record.status.upper() if record.status != "ok" else "ok")]
    if record.smoke:
        rows.append(("SMOKE RUN", f"{', '.join(record.smoke)}: these numbers are not a result"))
    if record.message:
        rows.append(("message", record.message))
    rows += [("student test acc" if record.is_distillation else "test acc", pct("test/acc"))]
    rows += [("best val acc", pct("val/acc_best"))]
    best, tested = (record.metric_epochs.get(key) for key in ("val/acc_best", "test/acc"))
    if best is not None:
        rows.append(("best epoch", f"{best} of {record.epochs}"))
    if tested is not None and tested != best:  # a checkpoint chosen otherwise, or given to test
        rows.append(("tested epoch", str(tested)))
    if record.is_distillation:
        who = "ensemble" if record.is_ensemble else "teacher"
        for i, ref in enumerate(record.members):  # each member and their combination, from the same test pass
            name = f"{ref.recipe}, seed {ref.seed}" if ref.recipe else "given file"  # a ckpt_path
            rows.append((f"member {i} test acc ({name})", pct(f"test/member{i}_acc")))
        n, scored = len(record.members), scored_as(record.combine)  # "mean_probs at T=1": not the targets' T
        ensemble = f"ensemble of {n} test acc" + (f" ({scored})" if scored else "")
        rows.append((ensemble if record.is_ensemble else "teacher test acc", pct("test/teacher_acc")))
        if base := record.baseline:
            mean_std = f"{percent(base['mean'], '%')} ± {percent(base['std'])}"
            rows.append((f"student from scratch ({base['runs']} seeds)", mean_std))
            rows += _same_seed(record, base)
        else:
            rows.append(("student from scratch", "none found: run the scratch experiment with seed=0,1,2"))
        kl = record.metric("test/kl")
        teacher, student = record.params.get("teacher", 0), record.params.get("student", 0)
        rows += [
            (f"{who}-student agreement", pct("test/agreement")),
            (f"mean KL({who}||student)", "-" if kl is None else f"{kl:.4g}"),
            ("params teacher / student", f"{teacher:,} / {student:,}"),
            ("compression", f"{teacher / max(student, 1):.2f}x"),
        ]
        rows += [("teacher", record.teacher.checkpoint)] if record.teacher is not None else []
        rows += [(f"member {i}", ref.checkpoint) for i, ref in enumerate(record.members)]
    else:
        rows.append(("params", f"{sum(record.params.values()):,}"))
    if omitted := record.analysis.get("omitted"):

        def errors(split: str) -> str:
            counts = omitted[split]
            return f"{counts['errors']} ({counts['errors_omitted']} of {counts['n_omitted']})"

        rows.append((f"test errors (on omitted {', '.join(map(str, omitted['classes']))})", errors("test")))
        rows.append((f"after bias +{omitted['bias_offset']:g} (tuned on val)", errors("test_bias_fixed")))
    rows.append(("wall time", f"{record.wall_time_s:.1f} s"))
    if record.stages:
        rows.append(("time by stage", stage_times(record)))
    return [*rows, ("run folder", record.output_dir)]


def stage_times(record: RunRecord) -> str:
    """`data 1.2 s · teacher 30.4 s · fit 11.0 s · test 0.9 s · other 1.1 s`: where the wall time went ("other":
    the config's checks, building the system and Trainer, writing the record and files)."""
    parts = [f"{name} {seconds:.1f} s" for name, seconds in record.stages.items()]
    other = record.wall_time_s - sum(record.stages.values())
    return " · ".join([*parts, f"other {max(other, 0.0):.1f} s"])


def _same_seed(record: RunRecord, base: dict[str, Any]) -> list[tuple[str, str]]:
    """This run minus the scratch run of its own seed: one pair of a paired comparison (the sweep report
    gives the interval over seeds). Smoke runs are never compared with the full runs a baseline holds."""
    scratch, acc = (base.get("by_seed") or {}).get(str(record.seed)), record.metric("test/acc")
    if record.smoke or scratch is None or acc is None:
        return []
    gain = f"{100 * (acc - scratch):+.2f} points (scratch {percent(scratch, '%')})"
    return [(f"vs scratch, seed {record.seed}", gain)]


def print_summary(record: RunRecord, console: Console | None = None) -> None:
    title = f"kdlab: {record.name} (seed {record.seed})" + (" [SMOKE]" if record.smoke else "")
    table = Table(title=title, show_header=False)
    table.add_column("", overflow="fold")
    table.add_column("value", justify="right", overflow="fold")  # paths wrap, never "…"
    for row in summary_rows(record):
        table.add_row(*(Text(str(cell)) for cell in row))  # plain text: a message's "[...]" is not Rich markup
    (console or Console()).print(table)
    plain_text = Console(file=io.StringIO(), width=120, color_system=None, record=True)
    plain_text.print(table)
    logging.getLogger(RUN_LOG).info("Summary:\n%s", plain_text.export_text().rstrip())  # run.log has it too


def _flat(prefix: str, node: Any, out: dict[str, Any]) -> None:
    if isinstance(node, dict):
        for key, value in node.items():
            if key not in ("_target_", "_partial_", "_recursive_"):
                _flat(f"{prefix}.{key}", value, out)
    elif node is not None:
        out[prefix] = node if isinstance(node, (int, float, str, bool)) else str(node)


def _class_name(node: Any) -> str | None:
    target = node.get("_target_") if isinstance(node, dict) else None
    return target.rsplit(".", 1)[-1] if target else None


def tensorboard_hparams(cfg: DictConfig, record: RunRecord) -> dict[str, Any]:
    """The keys a researcher varies, for the HPARAMS tab: not mirror URLs, not internal fields.

    Values as they ran: each loss term's own `temperature` (`distill.losses.kd.temperature`), which is
    distill.temperature unless that term was given its own, and no `distill.temperature` beside it, which
    would contradict a term overridden to another T (and stands for nothing in a run whose terms read none).
    An ensemble adds how its members combine, with the T of the combined targets.
    """
    c = {k: plain(cfg.get(k)) for k in ("model", "optimizer", "scheduler", "distill", "teacher")}
    hp: dict[str, Any] = {"seed": "null" if cfg.seed is None else cfg.seed, "model": _class_name(c["model"]) or "?"}
    _flat("model", {k: v for k, v in c["model"].items() if k not in ("num_classes", "in_features")}, hp)
    for key in ("batch_size", "augment_shift", "augment_affine", "exclude_classes"):  # augment_affine: its ranges
        if key in cfg.data:
            _flat(f"data.{key}", plain(cfg.data[key]), hp)
    hp["optimizer"] = _class_name(c["optimizer"]) or "?"
    _flat("optimizer", {k: v for k, v in c["optimizer"].items() if k in ("lr", "weight_decay", "momentum")}, hp)
    hp["scheduler"] = _class_name(c["scheduler"]) or "none"
    for key in ("max_epochs", "precision", "devices", "accumulate_grad_batches", "gradient_clip_val"):
        _flat(f"trainer.{key}", OmegaConf.select(cfg, f"trainer.{key}"), hp)
    hp["params.student"] = record.params.get("student", 0)
    if record.is_distillation and c["distill"]:
        for name, term in (c["distill"].get("losses") or {}).items():
            if term:  # resolved: a term's temperature is the one it trained at
                _flat(f"distill.losses.{name}", term, hp)
        if "members" in c["teacher"]:  # an ensemble: how many, of what, combined how
            members = c["teacher"]["members"]
            hp["teacher.model"] = "+".join(_class_name(m.get("model")) or "?" for m in members)
            hp["teacher.members"] = len(members)
            combine = c["teacher"].get("combine") or {}
            hp["teacher.combine"] = combine.get("mode", "mean_probs")
            if hp["teacher.combine"] != "mean_logits":  # the targets' T (its accuracy is scored at T=1)
                hp["teacher.combine.temperature"] = combine.get("temperature", 1.0)
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
