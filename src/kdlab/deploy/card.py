"""The model card, export/README.md: YAML front matter then Markdown, the layout model hubs read.

Every figure comes from the run record (metrics.json), the run's config.yaml or this export's own
measurements; none is typed in here. Accuracy is counted by the export itself: the shipped net on every
image of the run's test set (its files checked against the record's fingerprint), so the correct count k
of n images is exact and gives the interval; the run's own test pass (`test/acc`) is checked against it.
Agreement and calibration come from the record's `analysis` (training's test pass, or
scripts/evaluate.py), latency from this export's timing. What the record lacks is said, never guessed.

The front matter carries the Hugging Face fields (library_name, tags, datasets, metrics, model-index with
the test accuracy) and, under `kdlab`, every figure of the card as plain values for tools.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import yaml
from omegaconf import OmegaConf

from kdlab.checkpoints import sha256_file
from kdlab.config import plain
from kdlab.deploy.report import DeployResult, _pct, _size, _table, busy_note, is_teacher, speed_table
from kdlab.deploy.runtimes import ONNX_INPUT
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
    student = _net_row(result, run.student.role)
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


def _net_row(result: DeployResult, role: str) -> dict[str, Any] | None:
    return next((n for n in result.nets if n["role"] == role), None)


def _teacher_params(run: RunFolder, result: DeployResult) -> int | None:
    """The teacher's (an ensemble's: its members' together) parameters: counted now, else as recorded."""
    rows = [_net_row(result, ref_role) for ref_role, _ in _refs(run.record)]
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
        row = _net_row(result, role)
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


def _short(target: str | None) -> str:
    return (target or "?").rsplit(".", 1)[-1]


def _call(config: dict[str, Any] | None, skip: tuple[str, ...] = ("_target_", "_partial_")) -> str:
    """`AdamW(lr=0.003, weight_decay=0.0001)`: a config as the call it makes; null (e.g. scheduler=none): none."""
    if not config:
        return "none"
    args = ", ".join(f"{k}={_plain(v)}" for k, v in _settings(config, skip).items())
    return f"{_short(config.get('_target_'))}({args})"


def _plain(value: Any) -> str:
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


def render_card(run: RunFolder, result: DeployResult, figures: dict[str, Any]) -> str:
    record, spec, config = run.record, run.spec, run.config
    role = run.student.role
    student = _net_row(result, role)
    teachers, ensemble = figures["teachers"], figures["ensemble"]
    head = yaml.safe_dump(front_matter(run, result, figures), sort_keys=False, allow_unicode=True, width=100)
    if ensemble:
        origin = f"distilled from an ensemble of {len(teachers)} teachers ({(ensemble['combine'] or {}).get('mode')})"
    elif teachers:
        origin = f"distilled from one teacher ({_short(teachers[0]['net'])})"
    else:
        origin = "trained from scratch on the labels (no teacher)"
    lines = [
        "---",
        head.rstrip(),
        "---",
        "",
        f"# {record.name}",
        "",
        f"An image classifier for {spec.name} ({_short(figures['net'])}, {student['params']:,} parameters), {origin}. "
        f"Run `{record.name}`, seed {record.seed}, status {record.status}; exported by kdlab's `scripts/export.py`.",
    ]
    if found := warnings_for(run, result, figures):
        lines += ["", *(f"> **Warning:** {w}" for w in found)]

    mean, std = list(spec.mean), list(spec.std)
    lines += [
        "",
        "## Task",
        "",
        f"Image classification into {spec.num_classes} classes: {', '.join(spec.classes)}. Input: "
        f"{'x'.join(map(str, spec.input_shape[1:]))} images with {spec.input_shape[0]} channel(s). The ONNX and "
        "TorchScript files take raw uint8 pixels [N, " + ", ".join(map(str, spec.input_shape)) + "] (0..255) and "
        "apply the normalisation inside; the safetensors weights are the bare net, which takes float32 images "
        f"normalised per channel as `(x / 255 - mean) / std` with mean {mean} and std {std}. Output: logits, "
        f"[N, {spec.num_classes}].",
    ]
    lines += ["", *_data_section(run, result)]
    lines += ["", *_teacher_section(figures, result)]
    lines += ["", *_recipe_section(record, config)]
    lines += ["", *_results_section(figures, student, result)]
    lines += ["", *_speed_section(result)]
    lines += ["", *_files_section(figures, result, role)]
    lines += ["", *_loading_section(figures, spec, role, result)]
    lines += ["", *_provenance_section(record)]
    return "\n".join(lines) + "\n"


def _provenance_section(record: RunRecord) -> list[str]:
    code = record.code or {}
    versions = ", ".join(f"{name} {code[name]}" for name in ("kdlab", "torch", "lightning") if code.get(name))
    commit = code.get("git")
    keys = ", ".join(f"{k} `{v}`" for k, v in record.identity.items() if isinstance(v, str))
    return [
        "## Provenance",
        "",
        f"Trained with {versions or 'versions not recorded'}"
        + (f", git commit {commit}{' with uncommitted changes' if code.get('dirty') else ''}" if commit else "")
        + f"; from {record.started_at or '?'} to {record.finished_at or '?'}. Identity keys (kdlab.identity): "
        + (keys or "none recorded")
        + ".",
    ]


def _data_section(run: RunFolder, result: DeployResult) -> list[str]:
    spec, record, test = run.spec, run.record, result.test
    rows = [
        ["dataset", spec.name],
        ["test set", f"{test['images']} images, read from `{Path(str(test['source'])).name}`"],
        ["input shape", str(list(spec.input_shape))],
        ["normalisation", f"mean {list(spec.mean)}, std {list(spec.std)}"],
    ]
    excluded = OmegaConf.select(run.config, "data.exclude_classes", default=None)
    if excluded:
        rows.append(["classes left out of training", str(list(excluded))])
    lines = ["## Data", "", *_table(["", ""], "ll", rows)]
    fingerprint, identity = dict(spec.fingerprint), record.identity.get("data")
    lines += ["", "Fingerprint (`metrics.json` data.fingerprint: a digest of each part of the data the run read):", ""]
    lines += _table(["part", "sha256"], "ll", [[k, f"`{v}`"] for k, v in fingerprint.items()]) if fingerprint else [
        "none recorded."]  # fmt: skip
    if identity is None:
        lines += ["", "The run's identity (`identity.data`) is not recorded."]
    else:
        same = identity == fingerprint
        lines += ["", "The run's identity (`identity.data`) names the same digests." if same else
                  "The run's identity (`identity.data`) names other digests:"]  # fmt: skip
        if not same:
            lines += ["", *_table(["part", "sha256"], "ll", [[k, f"`{v}`"] for k, v in dict(identity).items()])]
    return lines


def _teacher_section(figures: dict[str, Any], result: DeployResult) -> list[str]:
    teachers, ensemble = figures["teachers"], figures["ensemble"]
    if not teachers:
        return ["## Teacher", "", "None: a supervised run, trained from scratch on the labels with no teacher."]
    title = f"## Teachers: an ensemble of {len(teachers)}" if ensemble else "## Teacher"
    body = [
        [t["role"], f"{_short(t['net'])} {_plain(t['model'])}", "-" if t["params"] is None else f"{t['params']:,}",
         t["recipe"] or "-", "-" if t["seed"] is None else str(t["seed"]), f"`{t['sha256']}`",
         _pct(t["accuracy"]) + ("" if t["accuracy_source"] in (None, "export") else f" ({t['accuracy_source']})")]
        for t in teachers
    ]  # fmt: skip
    lines = [title, "", *_table(["role", "net", "params", "recipe", "seed", "sha256", "test acc"], "llrllll", body)]
    if ensemble:
        combine = ensemble["combine"] or {}
        lines += ["", f"Combined by {combine.get('mode', '?')} at T={combine.get('temperature', '?')}"
                      f"{', weights ' + str(combine['weights']) if combine.get('weights') else ''}: the ensemble "
                      f"scores {_pct(ensemble['accuracy'])} on the test set."]  # fmt: skip
    student = _net_row(result, figures["role"])["normalization"]
    for t in (t for t in teachers if t["normalization"] and t["normalization"] != student):
        lines += ["", f"`{t['role']}` was trained on its own normalisation (mean {t['normalization']['mean']}, std "
                      f"{t['normalization']['std']}) and was fed its inputs that way during distillation."]  # fmt: skip
    return lines


def _recipe_section(record: RunRecord, config) -> list[str]:
    """Loss terms (with the temperature each term ran at), optimiser, schedule, epochs: from config.yaml."""
    absent = object()

    def value(key: str) -> Any:
        found = OmegaConf.select(config, key, default=absent)
        return absent if found is absent else plain(found)

    def text(key: str, render=_plain) -> str:
        found = value(key)
        return "not in config.yaml" if found is absent else render(found)

    title = "## Distillation recipe" if record.is_distillation else "## Training recipe"
    lines = [title, ""]
    if record.overrides:
        lines += [f"Trained with `python train.py {' '.join(record.overrides)}` (the run's overrides, as typed).", ""]
    if record.is_distillation:
        losses = value("distill.losses")
        rows = (
            [[f"loss `{name}`", _call(term)] for name, term in losses.items() if term is not None]
            if isinstance(losses, dict)
            else [["loss terms", "not in config.yaml"]]
        )
        rows.append(["distill.temperature", text("distill.temperature")])
    else:
        module_keys = ("_target_", "_recursive_", "net", "optimizer", "scheduler")
        rows = [["objective", text("module", lambda module: _call(module, module_keys))]]
    rows += [
        ["optimizer", text("optimizer", _call)],
        ["scheduler", text("scheduler", _call)],
        [
            "epochs",
            f"{record.epochs} run (trainer.max_epochs {text('trainer.max_epochs')}), {record.global_step:,} steps",
        ],  # fmt: skip
        ["batch size", text("data.batch_size")],
        ["precision", text("trainer.precision")],
        ["seed", _plain(record.seed)],
        ["wall time", f"{record.wall_time_s:.1f} s"],
    ]
    return lines + _table(["", ""], "ll", rows) + ["", "From the run's config.yaml and metrics.json."]


def _results_section(figures: dict[str, Any], student: dict[str, Any], result: DeployResult) -> list[str]:
    test, ece, teachers, ensemble = figures["test"], figures["ece"] or {}, figures["teachers"], figures["ensemble"]
    interval = test["interval"]
    teacher_acc = ensemble["accuracy"] if ensemble else teachers[0]["accuracy"] if teachers else None
    params = figures["params"]
    rows = [
        ["test accuracy", f"{_pct(test['accuracy'])} ({test['correct']:,} of {test['images']:,})", _pct(teacher_acc)],
        ["95% interval (Wilson)", f"[{_pct(interval['low'])}, {_pct(interval['high'])}]", ""],
    ]
    if teachers:
        agreement = figures["agreement"]
        rows.append(["agreement with the teacher (same top-1)",
                     "not recorded" if agreement is None else _pct(agreement), ""])  # fmt: skip
    bins = f" ({ece['bins']} bins)" if ece.get("bins") else ""
    rows.append([f"calibration: ECE{bins}", _ece(ece.get("student")), _ece(ece.get("teacher")) if teachers else ""])
    rows.append(["parameters", f"{params['student']:,}",
                 "" if params.get("teacher") is None else f"{params['teacher']:,}"])  # fmt: skip
    rows.append(["MFLOPs per image", f"{student['flops_per_image'] / 1e6:.3f}", ""])
    lines = ["## Results on the test set", ""]
    lines += _table(["", "student" if teachers else "model", "teacher" if teachers else ""], "lrr", rows)
    lines += [
        "",
        f"Accuracy is counted by this export: the shipped weights on all {test['images']:,} test images (the run's "
        "own test pass recorded "
        + ("nothing" if test["recorded_accuracy"] is None else _pct(test["recorded_accuracy"]))
        + "). The interval is the 95% Wilson score interval for a binomial proportion over those images: it "
        "covers which test images were drawn, not the spread between training runs (seeds), which one run "
        "cannot show; compare seeds with `scripts/report.py`.",
    ]
    if not ece:
        lines += ["", "Calibration and agreement are not in the run record: run `python scripts/evaluate.py "
                      "<run folder>` and export again."]  # fmt: skip
    else:
        lines += ["", f"Agreement and calibration: the record's test analysis ({figures['agreement_source'] or '-'}, "
                      f"{ece.get('images', '?')} images). ECE: expected calibration error, the gap between confidence "
                      "and accuracy averaged over confidence bins (Guo et al. 2017)."]  # fmt: skip
    return lines


def _ece(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def _speed_section(result: DeployResult) -> list[str]:
    if not result.speed:
        return ["## Latency", "", "Not measured (exported with --no-bench)."]
    st = result.speed["settings"]
    lines = [
        "## Latency",
        "",
        f"Measured by this export on the CPU it ran on ({st['cores']} cores available, torch "
        f"{result.speed.get('torch', '?')}): {st['rounds']} interleaved rounds, medians over all timed calls. "
        f"Latency: one image per call; throughput: {st['batch']} images per call.",
        "",
        *speed_table(result),
    ]
    if note := busy_note(result):
        lines += ["", f"**{note}**"]
    return lines


def _files_section(figures: dict[str, Any], result: DeployResult, role: str) -> list[str]:
    student = _net_row(result, role)
    what = {
        "safetensors": "the net's weights; its config and normalisation in the file's metadata",
        "config": "the net's config (kdlab.models), to build it before loading the weights",
        "torchscript": "the net behind its normalisation: raw uint8 pixels in, logits out",
        "onnx": "the net behind its normalisation: raw uint8 pixels in, logits out",
    }
    rows = [
        [f"`{f['file']}`", what[name], _size(f["bytes"]), f"`{f['sha256']}`"] for name, f in figures["files"].items()
    ]
    for fmt in result.formats:
        if entry := student["files"].get(fmt):
            rows.append([f"`{Path(entry['path']).name}`", what[fmt], _size(entry["bytes"]), ""])
    teachers = [n for n in result.nets if is_teacher(n["role"])]
    lines = ["## Files", "", *_table(["file", "what", "size", "sha256"], "llrl", rows)]
    if teachers:
        lines += ["", "The teacher's exports (" + ", ".join(n["role"] for n in teachers) + ") lie beside them, "
                      "for comparison; deploy.md, beside export/, has the parity check of every file."]  # fmt: skip
    return lines


def _loading_section(figures: dict[str, Any], spec, role: str, result: DeployResult) -> list[str]:
    files, shape = figures["files"], ", ".join(map(str, spec.input_shape))
    lines = [
        "## How to load",
        "",
        "PyTorch, from the safetensors file alone (kdlab installed; its metadata rebuilds the net and its "
        "normalisation):",
        "",
        "```python",
        "from kdlab.deploy import load_safetensors",
        "",
        f'model = load_safetensors("{files["safetensors"]["file"]}")  # raw uint8 [N, {shape}] in, logits out',
        "```",
        "",
        "Or the bare net from its config, fed normalised images:",
        "",
        "```python",
        "import torch, hydra.utils, omegaconf",
        "from safetensors.torch import load_file",
        "",
        f'net = hydra.utils.instantiate(omegaconf.OmegaConf.load("{files["config"]["file"]}")).eval()',
        f'net.load_state_dict(load_file("{files["safetensors"]["file"]}"))',
        f"mean = torch.tensor({list(spec.mean)}).view(-1, 1, 1)",
        f"std = torch.tensor({list(spec.std)}).view(-1, 1, 1)",
        "logits = net((pixels.float() / 255 - mean) / std)  # pixels: uint8 [N, " + shape + "]",
        "```",
    ]
    if "onnx" in result.formats:
        lines += [
            "",
            "ONNX, with onnxruntime (no torch needed):",
            "",
            "```python",
            "import numpy as np, onnxruntime",
            "",
            f'session = onnxruntime.InferenceSession("{role}.onnx")',
            f'logits = session.run(None, {{"{ONNX_INPUT}": pixels}})[0]  # pixels: np.uint8 [N, {shape}]',
            "```",
        ]
    return lines


def write_card(export_dir: Path, run: RunFolder, result: DeployResult, correct: int, files: dict[str, Path]) -> Path:
    """export/README.md, written whole under a temporary name and then renamed."""
    figures = card_figures(run, result, correct, files)
    path = export_dir / CARD_FILE
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(render_card(run, result, figures))
    os.replace(tmp, path)
    return path
