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

import os
from pathlib import Path
from typing import Any

import yaml
from omegaconf import OmegaConf

from kdlab.config import plain
from kdlab.deploy.card_figures import (
    CARD_FILE,
    call_text,
    card_figures,
    front_matter,
    net_row,
    plain_text,
    short_name,
    warnings_for,
)
from kdlab.deploy.report import DeployResult, _pct, _size, _table, busy_note, is_teacher, speed_table
from kdlab.deploy.runtimes import ONNX_INPUT
from kdlab.record import RunRecord
from kdlab.runfolder import RunFolder


def render_card(run: RunFolder, result: DeployResult, figures: dict[str, Any]) -> str:
    record, spec, config = run.record, run.spec, run.config
    role = run.student.role
    student = net_row(result, role)
    teachers, ensemble = figures["teachers"], figures["ensemble"]
    head = yaml.safe_dump(front_matter(run, result, figures), sort_keys=False, allow_unicode=True, width=100)
    if ensemble:
        origin = f"distilled from an ensemble of {len(teachers)} teachers ({(ensemble['combine'] or {}).get('mode')})"
    elif teachers:
        origin = f"distilled from one teacher ({short_name(teachers[0]['net'])})"
    else:
        origin = "trained from scratch on the labels (no teacher)"
    lines = [
        "---",
        head.rstrip(),
        "---",
        "",
        f"# {record.name}",
        "",
        f"An image classifier for {spec.name} ({short_name(figures['net'])}, {student['params']:,} parameters), "
        f"{origin}. "
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
        [t["role"], f"{short_name(t['net'])} {plain_text(t['model'])}",
         "-" if t["params"] is None else f"{t['params']:,}",
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
    student = net_row(result, figures["role"])["normalization"]
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

    def text(key: str, render=plain_text) -> str:
        found = value(key)
        return "not in config.yaml" if found is absent else render(found)

    title = "## Distillation recipe" if record.is_distillation else "## Training recipe"
    lines = [title, ""]
    if record.overrides:
        lines += [f"Trained with `python train.py {' '.join(record.overrides)}` (the run's overrides, as typed).", ""]
    if record.is_distillation:
        losses = value("distill.losses")
        rows = (
            [[f"loss `{name}`", call_text(term)] for name, term in losses.items() if term is not None]
            if isinstance(losses, dict)
            else [["loss terms", "not in config.yaml"]]
        )
        rows.append(["distill.temperature", text("distill.temperature")])
    else:
        module_keys = ("_target_", "_recursive_", "net", "optimizer", "scheduler")
        rows = [["objective", text("module", lambda module: call_text(module, module_keys))]]
    rows += [
        ["optimizer", text("optimizer", call_text)],
        ["scheduler", text("scheduler", call_text)],
        [
            "epochs",
            f"{record.epochs} run (trainer.max_epochs {text('trainer.max_epochs')}), {record.global_step:,} steps",
        ],  # fmt: skip
        ["batch size", text("data.batch_size")],
        ["precision", text("trainer.precision")],
        ["seed", plain_text(record.seed)],
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
    student = net_row(result, role)
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
