"""deploy.json (for tools) and deploy.md (for people): what was shipped, that it is right, how fast it runs."""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from kdlab.record import nulls_for_non_finite, scored_as

REPORT_VERSION = 1
JSON_FILE, MD_FILE = "deploy.json", "deploy.md"
TORCHSCRIPT_NOTE = (
    "torch 2.13 marks TorchScript deprecated (torch.jit.script and torch.jit.load warn): the file still runs in "
    "C++ libtorch without Python, but prefer the ONNX file for new deployments."
)
FORMAT_TITLES = {"weights": "weights", "torchscript": "TorchScript", "onnx": "ONNX"}


@dataclass
class DeployResult:
    """Everything `export_run` found; `status` is "ok" or "parity failed"."""

    run: dict[str, Any]  # folder, name, kind, status
    test: dict[str, Any]  # images, source, data (the dataset's name), input_shape
    # each net: role, net, model, params, flops_per_image, accuracy, normalization, files: {fmt: {path, bytes}}
    nets: list[dict[str, Any]]
    parity: list[dict[str, Any]]  # Parity.to_dict() per (net, format)
    formats: list[str] = field(default_factory=list)  # asked for: "torchscript", "onnx"
    speed: dict[str, Any] | None = None  # settings, rows: a SpeedRow each; None with --no-bench
    ensemble: dict[str, Any] | None = None  # members (roles), combine, accuracy: the members combined at T=1
    notes: list[str] = field(default_factory=list)
    status: str = "ok"
    card: str | None = None  # the model card (export/README.md), written once every file passed
    version: int = REPORT_VERSION

    def to_json(self) -> str:
        return json.dumps(nulls_for_non_finite(asdict(self)), indent=2, sort_keys=True, allow_nan=False) + "\n"


def is_teacher(role: str) -> bool:
    return role == "teacher" or role.startswith("member")


def _size(n: int | None) -> str:
    return "-" if n is None else f"{n / 1e6:.2f} MB" if n >= 1e6 else f"{n / 1e3:.1f} kB"


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.2f}%"


def _values(values: list[float]) -> str:
    return ",".join(f"{v:.4g}" for v in values)


def _table(header: list[str], align: str, rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---:" if a == "r" else "---" for a in align) + "|"]
    return lines + ["| " + " | ".join(r) + " |" for r in rows]


def speed_table(result: DeployResult) -> list[str]:
    """The speed rows, with the student's speed-up over its teacher in the same runtime and threads.

    An ensemble's cost is its members' together (each image goes through every one): latencies add up,
    and so do the times per image of the throughputs.
    """
    rows = result.speed["rows"]
    teacher: dict[tuple, tuple[float, float]] = {}  # (runtime, threads) -> (latency us, seconds per image)
    for r in (r for r in rows if is_teacher(r["role"])):
        latency, per_image = teacher.get((r["runtime"], r["threads"]), (0.0, 0.0))
        teacher[(r["runtime"], r["threads"])] = (latency + r["latency_median_us"], per_image + 1 / r["throughput_ips"])
    batch = rows[0]["batch"] if rows else 256
    body = []
    for r in rows:
        t = teacher.get((r["runtime"], r["threads"])) if r["role"] == "student" else None
        ratio = f"{t[0] / r['latency_median_us']:.2f}x / {r['throughput_ips'] * t[1]:.2f}x" if t else ""
        body.append([r["role"], r["runtime"], str(r["threads"]), f"{r['latency_median_us']:.1f}",
                     f"{r['latency_p95_us']:.1f}", f"{r['throughput_ips']:,.0f}", ratio])  # fmt: skip
    header = ["net", "runtime", "threads", "b=1 median µs", "b=1 p95 µs", f"b={batch} img/s",
              f"student speed-up b=1 / b={batch}"]  # fmt: skip
    return _table(header, "lllrrrr", body)


def busy_note(result: DeployResult) -> str | None:
    """A warning when other processes competed for the cores while timing (1-minute load > cores)."""
    load, cores = result.speed.get("load_average"), result.speed["settings"]["cores"]
    if load is None or load <= cores:
        return None
    return (
        f"The machine was busy (load average {load:.1f} on {cores} cores): other processes took CPU time, which "
        "hurts multi-thread rows most (a thread waiting for a core stalls the others). Re-run on a quiet machine "
        "before quoting these numbers."
    )


def render_markdown(result: DeployResult) -> str:
    run, test = result.run, result.test
    shape = ", ".join(map(str, test["input_shape"]))
    lines = [
        f"# Deploy report: {run['name']}",
        "",
        f"{run['kind'].capitalize()} run `{run['folder']}` (status {run['status']}); test set: {test['images']} "
        f"{test['data']} images from `{test['source']}`. Every export takes raw uint8 pixels [N, {shape}] (the "
        "normalisation its net was trained with inside) and returns logits, for any batch size N.",
    ]
    if result.status != "ok":
        lines += [
            "",
            f"**Export refused: {result.status}.** See the parity table; no file was written under its final name.",
        ]

    formats = result.formats
    lines += ["", "## Nets", ""]
    body = [
        [n["role"], f"{n['params']:,}", f"{n['flops_per_image'] / 1e6:.3f}", _pct(n["accuracy"]),
         f"{_values(n['normalization']['mean'])} / {_values(n['normalization']['std'])}",
         *(_size(n["files"].get(f, {}).get("bytes")) for f in ("weights", *formats))]
        for n in result.nets
    ]  # fmt: skip
    header = ["net", "params", "MFLOPs / image", "test acc", "mean / std",
              *(f"{FORMAT_TITLES[f]} file" for f in ("weights", *formats))]  # fmt: skip
    lines += _table(header, "lrrrl" + "r" * (1 + len(formats)), body)
    student = next((n for n in result.nets if n["role"] == "student"), None)
    teachers = [n for n in result.nets if is_teacher(n["role"])]
    if result.ensemble:
        combine = result.ensemble["combine"]
        name = f"the ensemble of {len(teachers)} ({scored_as(combine) or combine['mode']})"
        accuracy = result.ensemble["accuracy"]
    else:
        name, accuracy = "teacher", next((t["accuracy"] for t in teachers if t["role"] == "teacher"), None)
    if student and accuracy is not None:
        params, flops = sum(t["params"] for t in teachers), sum(t["flops_per_image"] for t in teachers)
        lines += [
            "",
            f"Student vs {name}: {student['params'] / params:.2f}x the parameters, "
            f"{student['flops_per_image'] / max(flops, 1):.2f}x the FLOPs, test accuracy {_pct(student['accuracy'])} "
            f"vs {_pct(accuracy)} ({100 * (student['accuracy'] - accuracy):+.2f} points).",
        ]

    if result.card:
        lines += ["", f"Model card (with the weights as safetensors beside it): `{result.card}`."]

    lines += ["", "## Parity: each exported file against PyTorch, on every test image", ""]
    body = [
        [p["role"], FORMAT_TITLES[p["format"]], str(p["images"]), f"{p['max_abs_diff']:.2e}", f"{p['limit']:.2e}",
         _pct(p["agreement"]), _pct(p["accuracy_export"]), "ok" if p["passed"] else "**FAILED**"]
        for p in result.parity
    ]  # fmt: skip
    lines += _table(
        ["net", "format", "images", "max abs logit diff", "limit", "argmax agreement", "test acc", ""], "llrrrrrl", body
    )
    lines += [
        "",
        "Limit: 1e-4 x max(1, max |logit|): fp32 rounding in another summation order is ~100x smaller, a real "
        "export fault ~100x larger. Argmax agreement must be 100%.",
    ]

    if result.speed:
        st = result.speed["settings"]
        lines += [
            "",
            f"## Speed: CPU, {st['rounds']} interleaved rounds, medians over all timed calls",
            "",
            *speed_table(result),
            "",
            f"Latency: one image per call (after warm-up). Throughput: {st['batch']} images per call. Threads: "
            "torch.set_num_threads for eager/TorchScript, intra_op_num_threads for onnxruntime. Speed-up: the "
            "teacher's time (an ensemble's: its members' together) over the student's in the same runtime and threads.",
        ]
        if note := busy_note(result):
            lines += ["", f"**{note}**"]
    result_notes = [*result.notes, *([TORCHSCRIPT_NOTE] if "torchscript" in formats else [])]
    if result_notes:
        lines += ["", "## Notes", "", *(f"- {note}" for note in result_notes)]
    return "\n".join(lines) + "\n"


def write_report(result: DeployResult, out: str | os.PathLike) -> tuple[Path, Path]:
    """deploy.json and deploy.md, each written whole under a temporary name and then renamed."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    json_path, md_path = out / JSON_FILE, out / MD_FILE
    for path, text in ((json_path, result.to_json()), (md_path, render_markdown(result))):
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text(text)
        os.replace(tmp, path)
    return json_path, md_path
