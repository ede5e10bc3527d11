"""Ship a run: export its net(s), prove each file right on the whole test set, time them, report.

Order matters: a file is written under a temporary name, loaded back and checked (it loads, its
manifest names this net, it matches PyTorch on every test image), and only then renamed to its final
name, so a file under a final name has passed parity. Timing runs only on files that passed.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from dataclasses import asdict
from pathlib import Path

import torch
from omegaconf import OmegaConf

from kdlab.deploy.bundle import Bundle, load_bundle
from kdlab.deploy.card import CARD_FILE, write_card
from kdlab.deploy.export import FORMATS, ExportError, export_path, open_export, verify_export, write_export
from kdlab.deploy.parity import Parity, ParityError, accuracy, batched_logits, compare
from kdlab.deploy.report import DeployResult, busy_note, speed_table, write_report
from kdlab.deploy.runtimes import MissingDependencyError, TorchRunner, require_formats
from kdlab.deploy.speed import DEFAULT, QUICK, SpeedSettings, available_threads, count_flops, measure
from kdlab.deploy.weights import safetensors_path, verify_safetensors, write_safetensors
from kdlab.runfolder import FolderNet

EXPORT_DIR = "export"  # under --out (default: the run folder)


def parse_threads(text: str) -> tuple[int, ...]:
    """`"1,all"` -> (1, cores available); duplicates dropped, order kept."""
    values: list[int] = []
    for item in text.split(","):
        item = item.strip()
        n = available_threads() if item == "all" else int(item) if item.isdigit() else 0
        if n < 1:
            raise ValueError(f"--threads takes positive integers or 'all', comma-separated (e.g. 1,all); got {item!r}.")
        if n not in values:
            values.append(n)
    return tuple(values)


def _check(bundle: Bundle, formats: tuple[str, ...], export_dir: Path, check_only: bool) -> tuple[list, dict]:
    """Write (unless check_only), verify and parity-check every (net, format) on the whole test set.

    A fresh export waits for its checks under a temporary name (the pid keeps two exports apart) and gets
    its final name only when every file passed: nothing of a failed or interrupted export is kept.
    Returns the Parity of each (net, format) and each net's PyTorch logits on the test set, by role.
    """
    threads, images, labels = available_threads(), bundle.test.x, bundle.test.y
    results: list[Parity] = []
    references: dict[str, torch.Tensor] = {}
    written: dict[Path, Path] = {}  # final name -> file checked (temporary when freshly written)
    passed = False
    try:
        for net in bundle.nets:
            reference = references[net.role] = batched_logits(TorchRunner(net.model, "eager", threads), images)
            for fmt in formats:
                final = export_path(export_dir, net.role, fmt)
                partial = final.with_name(f".{final.name}.{os.getpid()}.partial")
                path = written[final] = final if check_only else write_export(net, fmt, partial)
                runner = verify_export(path, fmt, net, threads, probe=False)  # every test image follows
                results.append(compare(net.role, fmt, reference, batched_logits(runner, images), labels))
        passed = all(p.passed for p in results)
    finally:
        if not check_only:
            for final, path in written.items():
                if passed:
                    os.replace(path, final)
                else:
                    path.unlink(missing_ok=True)
    return results, references


def _ship_weights(net: FolderNet, export_dir: Path, check_only: bool) -> dict[str, Path]:
    """The net's safetensors weights and its config YAML beside them, the weights checked tensor for tensor.

    check_only: verify the safetensors file already there (an export older than it has none: nothing to check).
    """
    weights, config = safetensors_path(export_dir, net.role), export_dir / f"{net.role}.yaml"
    if check_only:
        if not weights.is_file():
            return {}
        verify_safetensors(weights, net)
        return {"safetensors": weights, **({"config": config} if config.is_file() else {})}
    partial = weights.with_name(f".{weights.name}.{os.getpid()}.partial")
    try:
        write_safetensors(net, partial)
        verify_safetensors(partial, net)  # read back: exactly the net's tensors, config and normalisation
        os.replace(partial, weights)
    finally:
        partial.unlink(missing_ok=True)
    partial = config.with_name(f".{config.name}.{os.getpid()}.partial")
    OmegaConf.save(OmegaConf.create(net.config), partial)
    os.replace(partial, config)
    return {"safetensors": weights, "config": config}


def export_run(
    folder: str | os.PathLike,
    out: str | os.PathLike | None = None,
    formats: tuple[str, ...] = FORMATS,
    bench: bool = True,
    settings: SpeedSettings = DEFAULT,
    threads: tuple[int, ...] | None = None,
    check_only: bool = False,
    data_dir: str | os.PathLike | None = None,
) -> DeployResult:
    """Export the run's net(s) to `out/export/`, check parity, time them, write deploy.json + deploy.md.

    Once every file passed, the run's own net is also written as safetensors (with its config YAML) and
    the model card `out/export/README.md` (kdlab.deploy.card) describes it.

    check_only: export nothing and write no report; verify the files already in `out/export/` against the
    run (and time them, with bench), for a file that was copied, archived or is about to be shipped.
    Raises RunFolderError (bad folder), MissingDependencyError, ExportError (a file that does not load or
    is another net's) and ParityError (numbers inside; the report is written with status "parity failed").
    """
    formats = tuple(dict.fromkeys(formats))
    if unknown := [f for f in formats if f not in FORMATS]:
        raise ValueError(f"Unknown export format(s) {unknown}; choose from {', '.join(FORMATS)}.")
    require_formats(formats)
    bundle = load_bundle(folder, data_dir)
    run, labels = bundle.run, bundle.test.y
    out = Path(out) if out is not None else run.folder
    export_dir = out / EXPORT_DIR
    saved_threads = torch.get_num_threads()  # parity and timing set torch's global thread count
    try:
        parity, references = _check(bundle, formats, export_dir, check_only)
        failed = [p for p in parity if not p.passed]
        shipped = {} if failed else _ship_weights(run.student, export_dir, check_only)
        ensemble = None  # a complete ensemble: its members' logits combined at T=1, as training scored it
        if run.combine is not None:
            roles = [net.role for net in run.teachers]
            combined = run.teacher_logits([references[role] for role in roles])
            from kdlab.modules.ensemble import SCORED_AT

            combine = {**run.combine, "scored_at": SCORED_AT}
            ensemble = {"members": roles, "combine": combine, "accuracy": accuracy(combined, labels)}
        result = DeployResult(
            run={"folder": str(run.folder), "name": run.record.name, "kind": run.record.kind,
                 "status": run.record.status},
            test={"images": len(bundle.test), "source": bundle.source, "data": run.spec.name,
                  "input_shape": list(run.spec.input_shape)},
            nets=[_describe(net, accuracy(references[net.role], labels), formats, export_dir, shipped=not failed,
                            extra=shipped if net is run.student else {}) for net in bundle.nets],
            parity=[p.to_dict() for p in parity],
            formats=list(formats),
            ensemble=ensemble,
            notes=list(bundle.notes),
            status="parity failed" if failed else "ok",
        )  # fmt: skip
        if bench and not failed:
            result.speed = _time(bundle, formats, export_dir, threads or (1, available_threads()), settings)
        correct = int((references[run.student.role].argmax(1) == labels).sum())  # the card's exact count
    finally:
        torch.set_num_threads(saved_threads)
    if not check_only:
        if not failed:
            result.card = str(write_card(export_dir, run, result, correct, shipped))
        write_report(result, out)
    if failed:
        kept = "The files were left as they are (--check)." if check_only else (
            f"The numbers are in {out / 'deploy.md'}; no file was kept under its final name.")  # fmt: skip
        raise ParityError(
            f"Export refused: parity failed for {', '.join(f'{p.role} {p.format}' for p in failed)}.\n  "
            + "\n  ".join(p.describe() for p in failed)
            + f"\n{kept}"
        )
    return result


def _describe(
    net: FolderNet, score: float, formats: tuple[str, ...], export_dir: Path, shipped: bool, extra: dict[str, Path]
) -> dict:
    """One net's row of the report: size, cost, accuracy and its files (`extra`: safetensors, config)."""
    files = {"weights": {"path": str(net.weights), "bytes": net.weights.stat().st_size}}
    files.update({name: {"path": str(path), "bytes": path.stat().st_size} for name, path in extra.items()})
    for fmt in formats:
        final = export_path(export_dir, net.role, fmt)
        if shipped and final.is_file():
            files[fmt] = {"path": str(final), "bytes": final.stat().st_size}
    return {
        "role": net.role,
        "net": net.config.get("_target_"),
        "model": net.config,
        "params": sum(p.numel() for p in net.model.net.parameters()),
        "normalization": net.spec.normalization,
        "flops_per_image": count_flops(net.model),
        "accuracy": score,
        "files": files,
    }


def _time(
    bundle: Bundle, formats: tuple[str, ...], export_dir: Path, threads: tuple[int, ...], settings: SpeedSettings
) -> dict:
    """Every net x (eager + each format) x thread count, measured together; see kdlab.deploy.speed."""
    runners = []
    for net in bundle.nets:
        for n in threads:
            runners.append((net.role, TorchRunner(net.model, "eager", n)))
            for fmt in formats:
                runners.append((net.role, open_export(export_path(export_dir, net.role, fmt), fmt, n)))
    start = time.perf_counter()
    rows = measure(runners, bundle.test.x, settings)
    return {
        "settings": {**asdict(settings), "threads": list(threads), "cores": available_threads()},
        "wall_s": round(time.perf_counter() - start, 2),
        "load_average": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,  # 1-min, at the end
        "torch": torch.__version__,
        "rows": [asdict(r) for r in rows],
    }


def main(argv: list[str] | None = None) -> int:
    """0: exported, verified (and timed). 1: an export failed its checks. 2: bad input or missing packages."""
    parser = argparse.ArgumentParser(
        prog="scripts/export.py",
        description="Export a run's trained net(s) to TorchScript and ONNX (raw uint8 pixels in, logits out), "
        "check parity on the whole test set, and time teacher (or each ensemble member) and student side by side.",
    )
    parser.add_argument("run_dir", help="a run folder (distillation or supervised) or a cached-teacher folder")
    parser.add_argument("--out", default=None, help="where deploy.md, deploy.json and export/ go (default: run_dir)")
    parser.add_argument("--formats", default=",".join(FORMATS), help="comma-separated: torchscript,onnx (default both)")
    parser.add_argument("--bench", action=argparse.BooleanOptionalAction, default=True, help="time the nets")
    parser.add_argument("--quick", action="store_true", help="a few timed calls only (tests, smoke checks)")
    parser.add_argument("--threads", default="1,all", help="thread counts to time, e.g. 1,all or 1,2,4 (default 1,all)")
    parser.add_argument("--check", action="store_true", help="write nothing: verify (and time) the files in export/")
    parser.add_argument("--data-dir", default=None, help="where the dataset's files are now, if not the run's data_dir")
    args = parser.parse_args(argv)
    try:
        formats = tuple(f.strip() for f in args.formats.split(",") if f.strip())
        if not formats:
            raise ValueError("--formats is empty; give torchscript, onnx or both (comma-separated).")
        result = export_run(args.run_dir, args.out, formats, args.bench, QUICK if args.quick else DEFAULT,
                            parse_threads(args.threads), args.check, args.data_dir)  # fmt: skip
    except (MissingDependencyError, ValueError, ExportError, ParityError) as err:  # a RunFolderError is a ValueError
        print(f"error: {err}", file=sys.stderr)
        return 1 if isinstance(err, (ExportError, ParityError)) else 2
    for p in result.parity:
        print(f"parity {Parity(**{k: v for k, v in p.items() if k != 'passed'}).describe()}")
    for note in result.notes:
        print(f"note: {note}")
    if result.speed:
        print("\n".join(speed_table(result)))
        if note := busy_note(result):
            print(f"warning: {note}")
    out = Path(args.out) if args.out else Path(args.run_dir)
    if args.check:
        print(f"checked the files in {out / EXPORT_DIR}/: they are this run's nets")
    else:
        print(
            f"wrote {out / 'deploy.md'}, {out / 'deploy.json'} and {out / EXPORT_DIR}/ (with the model card "
            f"{CARD_FILE} and the weights as safetensors)"
        )
    return 0
