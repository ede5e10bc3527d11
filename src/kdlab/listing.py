"""Find and compare what you have: every run under outputs/, and the cached teachers.

Reads records only (kdlab.record), so nobody greps `outputs/**/metrics.json` by hand.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from kdlab.record import RecordError, RunRecord, find_records

LAST_USED_FILE = "last_used"  # touched by the teacher cache on every reuse


@dataclass
class Row:
    cells: list[str]


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.2f}"


def _size(path: Path) -> str:
    total = sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    return f"{total / 1e6:.1f} MB"


def running(folder: Path) -> bool:
    """Whether a live process holds the run's folder (kdlab.run.folder); a "running" record without one was killed."""
    from filelock import Timeout

    from kdlab.locks import file_lock

    lock = file_lock(folder / ".kdlab-run.lock", timeout=0)
    try:
        lock.acquire()
    except (Timeout, OSError):
        return True
    lock.release()
    return False


def key_overrides(record: RunRecord) -> str:
    """The overrides that say what this run was, without the plumbing every run passes."""
    plumbing = ("paths.", "hydra.", "data.data_dir", "data.mirrors", "data.pypi_package", "trainer.enable_progress_bar")
    shown = [o for o in record.overrides if not o.lstrip("+~").startswith(plumbing)]
    return " ".join(shown) or "-"


def run_rows(root: str | os.PathLike, teachers_dir: str | os.PathLike | None = None) -> tuple[list[str], list[Row]]:
    root = Path(root)
    skip = Path(teachers_dir).resolve() if teachers_dir else (root / "teachers").resolve()
    header = ["name", "status", "student acc %", "teacher acc %", "key overrides", "folder"]
    rows = []
    for folder, record in find_records(root):
        if folder.resolve().is_relative_to(skip):
            continue
        rel = os.path.relpath(folder, root)
        if isinstance(record, RecordError):
            rows.append(Row(["?", "unreadable", "-", "-", str(record).split(":")[0], rel]))
            continue
        status = "killed" if record.status == "running" and not running(folder) else record.status
        status += " (smoke)" if record.smoke and record.status != "smoke" else ""
        status += " [eval]" if record.mode == "evaluate" else ""
        rows.append(
            Row(
                [
                    record.name,
                    status,
                    _pct(record.metric("test/acc")),
                    _pct(record.metric("test/teacher_acc")),
                    key_overrides(record),
                    rel,
                ]
            )
        )
    return header, rows


def teacher_rows(teachers_dir: str | os.PathLike) -> tuple[list[str], list[Row]]:
    header = ["recipe", "seed", "test acc %", "val acc %", "status", "size", "last used", "folder"]
    rows = []
    for folder, record in find_records(teachers_dir):
        if folder.name.startswith("."):  # staging or moved-aside entries
            continue
        if isinstance(record, RecordError):
            rows.append(Row(["?", "-", "-", "-", "unreadable", _size(folder), "-", folder.name]))
            continue
        marker = folder / LAST_USED_FILE
        used = marker.stat().st_mtime if marker.exists() else (folder / "metrics.json").stat().st_mtime
        recipe = next((o.split("=", 1)[1] for o in record.overrides if o.startswith("experiment=")), record.name)
        rows.append(
            Row(
                [
                    recipe,
                    str(record.seed),
                    _pct(record.metric("test/acc")),
                    _pct(record.metric("val/acc_best")),
                    record.status,
                    _size(folder),
                    datetime.fromtimestamp(used).strftime("%Y-%m-%d %H:%M"),
                    folder.name,
                ]
            )
        )
    return header, rows


def render(header: list[str], rows: list[Row]) -> str:
    widths = [max(len(c) for c in column) for column in zip(header, *(r.cells for r in rows), strict=True)]
    lines = [header, ["-" * w for w in widths], *(r.cells for r in rows)]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)).rstrip() for line in lines)
