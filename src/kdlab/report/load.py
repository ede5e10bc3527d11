"""Reading a sweep folder: every job folder, its run record and its overrides, and how the job ended.

A job folder is one Hydra started (it has `.hydra/`) or one holding a `metrics.json`. Records are read
only through `RunRecord`; a record that cannot be read is reported with its error, never skipped, and
never stops the report of the other jobs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import HydraException

from kdlab.record import RECORD_FILE, RecordError, RunRecord, find_records

HYDRA_OVERRIDES = Path(".hydra") / "overrides.yaml"  # written by Hydra into every job folder it starts


def is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


@dataclass
class Job:
    """One job folder: how it ended, its record (None if absent or unreadable) and its overrides."""

    name: str  # the folder relative to the sweep folder, e.g. "3"
    # finished (ok or smoke), diverged, failed, interrupted, or unfinished (running, no record, unreadable)
    state: str
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

    def metric(self, key: str) -> float | None:
        """A finite number or None: a diverged job's nulls (and anything odd) never reach the arithmetic."""
        value = None if self.record is None else self.record.metrics.get(key)
        return float(value) if is_number(value) and math.isfinite(value) else None

    def param(self, net: str) -> int | None:
        """Parameter count of "student" or "teacher"."""
        value = None if self.record is None else self.record.params.get(net)
        return value if isinstance(value, int) and not isinstance(value, bool) else None


def parse_overrides(lines: list[str]) -> tuple[dict[str, str], dict[str, str], dict[str, Any]]:
    """Key -> line as typed, key -> value as typed, key -> parsed value, for a list of overrides."""
    typed_lines, typed, values = {}, {}, {}
    parser = OverridesParser.create()
    for line in map(str, lines):
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


def _hydra_overrides(folder: Path) -> list[str]:
    """The overrides Hydra saved for the job (a file Hydra writes, not a run record); [] if none."""
    try:
        lines = yaml.safe_load((folder / HYDRA_OVERRIDES).read_text())
    except (OSError, yaml.YAMLError):
        return []
    return [str(line) for line in lines] if isinstance(lines, list) else []


def _number_order(rel: Path) -> tuple:
    return tuple((0, int(p), "") if p.isdigit() else (1, 0, p) for p in rel.parts)


def _job(sweep_dir: Path, folder: Path, found: RunRecord | RecordError | None) -> Job:
    record = found if isinstance(found, RunRecord) else None
    if record is not None:
        state = "finished" if record.finished else "unfinished" if record.status == "running" else record.status
        problem = " ".join(record.message.split()) if record.message else None  # one line
        if record.status == "running" and not problem:
            problem = "the record says running: the job is still running, or was killed before it could end its record"
    elif found is not None:
        state, problem = "unfinished", f"unreadable {RECORD_FILE}: {' '.join(str(found).split())}"
    else:
        state = "unfinished"
        problem = f"no {RECORD_FILE}: still running, or killed before it could write one (see the folder's *.log)"
    lines = (record.overrides if record is not None else None) or _hydra_overrides(folder)
    return Job(folder.relative_to(sweep_dir).as_posix(), state, record, problem, *parse_overrides(lines))


def load_jobs(sweep_dir: str | Path) -> list[Job]:
    """Every job folder under `sweep_dir`, finished or not, in job-number order (2 before 10).

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
    for folder in started - {sweep_dir}:  # Hydra's own files of the sweep folder are not a job
        records.setdefault(folder, None)
    folders = sorted(records, key=lambda folder: _number_order(folder.relative_to(sweep_dir)))
    return [_job(sweep_dir, folder, records[folder]) for folder in folders]
