"""Find and compare what you have: every run under outputs/, and the cached teachers.

Reads records only (kdlab.record), so nobody greps `outputs/**/metrics.json` by hand.
"""

from __future__ import annotations

import os
from datetime import datetime
from pathlib import Path

from kdlab.record import RecordError, find_records
from kdlab.report.formatting import aligned, percent

LAST_USED_FILE = "last_used"  # touched by the teacher cache on every reuse
# what every run passes, not what it was
PLUMBING = ("paths.", "hydra.", "data.data_dir", "data.mirrors", "data.pypi_package", "trainer.enable_progress_bar")


def _size(path: Path) -> str:
    return f"{sum(p.stat().st_size for p in path.rglob('*') if p.is_file()) / 1e6:.1f} MB"


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


Table = tuple[list[str], list[list[str]]]  # header, rows: what render() prints


def run_rows(root: str | os.PathLike, teachers_dir: str | os.PathLike | None = None) -> Table:
    root = Path(root)
    skip = Path(teachers_dir or root / "teachers").resolve()
    header = ["name", "status", "student acc %", "teacher acc %", "key overrides", "folder"]
    rows = []
    for folder, record in find_records(root):
        if folder.resolve().is_relative_to(skip):
            continue
        rel = os.path.relpath(folder, root)
        if isinstance(record, RecordError):
            rows.append(["?", "unreadable", "-", "-", str(record).split(":")[0], rel])
            continue
        status = "killed" if record.status == "running" and not running(folder) else record.status
        status += " (smoke)" if record.smoke and record.status != "smoke" else ""
        status += " [eval]" if record.mode == "evaluate" else ""
        shown = " ".join(o for o in record.overrides if not o.lstrip("+~").startswith(PLUMBING)) or "-"
        accs = [percent(record.metric(m)) for m in ("test/acc", "test/teacher_acc")]
        rows.append([record.name, status, *accs, shown, rel])
    return header, rows


def teacher_rows(teachers_dir: str | os.PathLike) -> Table:
    header = ["recipe", "seed", "test acc %", "val acc %", "status", "size", "last used", "folder"]
    rows = []
    for folder, record in find_records(teachers_dir):
        if folder.name.startswith("."):  # staging or moved-aside entries
            continue
        if isinstance(record, RecordError):
            rows.append(["?", "-", "-", "-", "unreadable", _size(folder), "-", folder.name])
            continue
        marker = folder / LAST_USED_FILE
        mtime = (marker if marker.exists() else folder / "metrics.json").stat().st_mtime
        used = datetime.fromtimestamp(mtime).strftime("%Y-%m-%d %H:%M")
        recipe = next((o.split("=", 1)[1] for o in record.overrides if o.startswith("experiment=")), record.name)
        accs = [percent(record.metric(m)) for m in ("test/acc", "val/acc_best")]
        rows.append([recipe, str(record.seed), *accs, record.status, _size(folder), used, folder.name])
    return header, rows


def render(header: list[str], rows: list[list[str]]) -> str:
    return "\n".join("  ".join(line).rstrip() for line in aligned(header, rows))
