"""Reading a sweep folder: every job folder, its run record and its overrides, and how the job ended.

A job folder is one Hydra started (it has `.hydra/`) or one holding a `metrics.json`. Records are read
only through `RunRecord`; a record that cannot be read is reported with its error, never skipped, and
never stops the report of the other jobs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import HydraException

from kdlab.record import RECORD_FILE, RecordError, RunRecord, find_records

HYDRA_OVERRIDES = Path(".hydra") / "overrides.yaml"  # written by Hydra into every job folder it starts

State = Literal["finished", "diverged", "failed", "interrupted", "unfinished"]
PROBLEM_STATES: tuple[str, ...] = ("diverged", "failed", "interrupted", "unfinished")  # kept out of the table
_STATE_OF_STATUS: dict[str, State] = {
    "ok": "finished",
    "smoke": "finished",
    "diverged": "diverged",
    "failed": "failed",
    "interrupted": "interrupted",
    "running": "unfinished",  # still running, or killed before it could write how it ended
}


@dataclass
class Job:
    """One job folder: how it ended, its record (None if absent or unreadable) and its overrides."""

    name: str  # the folder relative to the sweep folder, e.g. "3"
    state: State
    record: RunRecord | None
    problem: str | None = None  # why it is not in the table: the record's message, or why it is unreadable
    lines: dict[str, str] = field(default_factory=dict)  # key -> the override as typed, "trainer.max_epochs=2"
    overrides: dict[str, str] = field(default_factory=dict)  # key -> value as typed, "2"
    values: dict[str, Any] = field(default_factory=dict)  # key -> the value Hydra parses from it, 2

    @property
    def finished(self) -> bool:
        return self.state == "finished"

    @property
    def smoke(self) -> bool:
        return self.record is not None and self.record.status == "smoke"

    @property
    def status(self) -> str:
        """The record's status, or what stands in for it when there is no readable record."""
        if self.record is not None:
            return self.record.status
        return "no record"

    def metric(self, key: str) -> float | None:
        """A finite number or None: a diverged job's nulls (and anything odd) never reach the arithmetic."""
        if self.record is None:
            return None
        value = self.record.metrics.get(key)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            return None
        return float(value)

    def param(self, net: str) -> int | None:
        """Parameter count of "student" or "teacher"."""
        value = None if self.record is None else self.record.params.get(net)
        return value if isinstance(value, int) and not isinstance(value, bool) else None

    @property
    def student_key(self) -> str | None:
        return None if self.record is None else self.record.identity.get("student")

    @property
    def wall_time(self) -> float | None:
        value = None if self.record is None else self.record.wall_time_s
        return float(value) if isinstance(value, (int, float)) and math.isfinite(value) and value > 0 else None


def folder_order(rel: Path) -> tuple:
    """Job folders in numeric order: 2 before 10."""
    return tuple((0, int(p), "") if p.isdigit() else (1, 0, p) for p in rel.parts)


def parse_overrides(lines: list[str]) -> tuple[dict[str, str], dict[str, str], dict[str, Any]]:
    """Key -> line as typed, key -> value as typed, key -> parsed value, for a list of overrides."""
    typed_lines, typed, values = {}, {}, {}
    parser = OverridesParser.create()
    for line in lines:
        line = str(line)
        try:
            (override,) = parser.parse_overrides([line])
        except HydraException:  # not something Hydra would have accepted: keep it as plain text
            key, _, value = line.partition("=")
            typed_lines[key], typed[key], values[key] = line, value, value
            continue
        key = override.get_key_element()  # keeps ~ and + prefixes: deleting a key is its own setting
        typed_lines[key] = override.input_line or line
        typed[key] = override.get_value_element_as_str()
        values[key] = override.value()
    return typed_lines, typed, values


def _hydra_overrides(folder: Path) -> list[str] | None:
    """The overrides Hydra saved for the job (a file Hydra writes, not a run record)."""
    path = folder / HYDRA_OVERRIDES
    if not path.is_file():
        return None
    try:
        lines = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError):
        return None
    return [str(line) for line in lines] if isinstance(lines, list) else None


def _one_line(text: str | None) -> str | None:
    return " ".join(str(text).split()) if text else None


def _job(sweep_dir: Path, folder: Path, found: RunRecord | RecordError | None) -> Job:
    name = folder.relative_to(sweep_dir).as_posix()
    if isinstance(found, RunRecord):
        state = _STATE_OF_STATUS[found.status]
        problem = _one_line(found.message)
        if found.status == "running" and not problem:
            problem = "the record says running: the job is still running, or was killed before it could end its record"
        record = found
    elif isinstance(found, RecordError):
        state, record, problem = "unfinished", None, f"unreadable {RECORD_FILE}: {_one_line(str(found))}"
    else:
        state, record = "unfinished", None
        problem = f"no {RECORD_FILE}: still running, or killed before it could write one (see the folder's *.log)"
    lines = (record.overrides if record is not None and record.overrides else None) or _hydra_overrides(folder) or []
    typed_lines, typed, values = parse_overrides(lines)
    return Job(name, state, record, problem, typed_lines, typed, values)


def load_jobs(sweep_dir: str | Path) -> list[Job]:
    """Every job folder under `sweep_dir`, finished or not, in job-number order.

    Raises FileNotFoundError when the folder is missing or holds no run record at all.
    """
    sweep_dir = Path(sweep_dir)
    if not sweep_dir.is_dir():
        raise FileNotFoundError(f"Sweep folder {sweep_dir} does not exist or is not a folder.")
    records: dict[Path, RunRecord | RecordError | None] = dict(find_records(sweep_dir))
    started = {p.parent.parent for p in sweep_dir.rglob(HYDRA_OVERRIDES.name) if p.parent.name == ".hydra"}
    if not records:
        n = len(started)
        hint = f" Hydra started {n} job folder{'s' if n != 1 else ''} there; none has one yet." if n else ""
        raise FileNotFoundError(
            f"No {RECORD_FILE} under {sweep_dir} (searched {sweep_dir}/**/{RECORD_FILE}).{hint} A job writes it "
            "when it ends, so the sweep may still be running or its jobs failed: look at the job folders' "
            "*.log files (and .submitit/*/*.err for the submitit launchers), or check the path is a sweep "
            "folder such as outputs/<name>/multirun/<time>."
        )
    for folder in started:
        if folder != sweep_dir:  # Hydra's own files of the sweep folder are not a job
            records.setdefault(folder, None)
    folders = sorted(records, key=lambda f: folder_order(f.relative_to(sweep_dir)))
    return [_job(sweep_dir, folder, records[folder]) for folder in folders]
