"""The one record of a run: what it was, how it ended, what it measured. `metrics.json` is its file.

Every reader and writer (run, summary, teacher cache, sweep report, run listing, export) goes
through `RunRecord`, so "is this a distillation run", "did it finish" and "may it count in a
baseline" are answered here and nowhere else. The file is strict JSON: a NaN or an infinity is
written as `null` (with the status saying why), never as a bare `NaN` that JSON parsers reject.

`metrics` mixes epochs: `val/*` are the last validated epoch's, `val/acc_best` the best epoch's and
`test/*` the tested checkpoint's (the best epoch on validation); `metric_epochs` says which for each.
A field added since a format version has a default, so older records of that version still read.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Literal

RECORD_FILE = "metrics.json"
RECORD_VERSION = 3

Status = Literal["ok", "smoke", "diverged", "interrupted", "failed", "running"]
Kind = Literal["supervised", "distillation"]
Mode = Literal["train", "evaluate"]

STATUSES: tuple[str, ...] = ("ok", "smoke", "diverged", "interrupted", "failed", "running")
FINISHED = ("ok", "smoke")  # ran to the end (a smoke run only briefly)


@dataclass
class TeacherRef:
    """Which frozen teacher a distillation run read: enough to find it again and to refuse another."""

    checkpoint: str  # the weights file the run loaded
    sha256: str  # of that file: two teachers with the same path are still told apart
    key: str | None = None  # the cache key, when the teacher came from kdlab's cache
    recipe: str | None = None  # the experiment that trained it (teacher.recipe), when cached
    seed: int | None = None
    model: dict[str, Any] | None = None  # its net config (input shape and classes filled in)
    data: dict[str, Any] | None = None  # the DataSpec it was trained on; None: unknown (a file given by path)


@dataclass
class RunRecord:
    """Everything a finished (or stopped) run leaves for people and tools to read."""

    name: str
    kind: Kind
    mode: Mode = "train"
    status: Status = "running"
    seed: int | None = None
    metrics: dict[str, float | None] = field(default_factory=dict)  # "test/acc", "val/acc_best", ...
    # The epoch (counted from 1, as the progress bar counts) each metric comes from: val/* the last validated
    # epoch, val/acc_best the best one, test/* the tested checkpoint's (the best epoch's); a metric whose epoch is
    # unknown (a record written before kdlab kept them, a tested state_dict) has no entry.
    metric_epochs: dict[str, int] = field(default_factory=dict)
    params: dict[str, int] = field(default_factory=dict)  # "student" (the trained net), "teacher"
    identity: dict[str, Any] = field(default_factory=dict)  # "run", "student", "data": see kdlab.identity
    data: dict[str, Any] = field(default_factory=dict)  # the DataSpec of the data it ran on (kdlab.data.spec)
    resumed: list[str] = field(default_factory=list)  # when each resume of this run started (ISO 8601)
    teacher: TeacherRef | None = None  # the one teacher; None when the teacher is an ensemble
    members: list[TeacherRef] = field(default_factory=list)  # an ensemble's teachers, in teacher.members order
    # an ensemble's teacher.combine as it ran ({mode, temperature, weights}) and `scored_at`, the T at which its
    # members were combined for test/teacher_acc, agreement and KL (not the targets' T): see `scored_as`
    combine: dict[str, Any] | None = None
    overrides: list[str] = field(default_factory=list)  # this job's overrides, as typed
    swept: list[str] = field(default_factory=list)  # keys a sweep varied (empty for a single run)
    fixed: list[str] = field(default_factory=list)  # the sweep's overrides every job shared
    smoke: list[str] = field(default_factory=list)  # why this is a smoke run: "trainer.fast_dev_run", ...
    baseline: dict[str, Any] | None = None  # the same student trained from scratch: mean, std, runs, seeds
    analysis: dict[str, Any] = field(default_factory=dict)  # test-time error analysis: ECE, per-class acc
    output_dir: str = ""
    files: dict[str, str] = field(default_factory=dict)  # "weights", "model", "best_checkpoint", ...
    epochs: int = 0
    global_step: int = 0
    wall_time_s: float = 0.0
    # Seconds in each stage, in the order run: "data", "teacher" (found or trained), "teacher outputs" (the cache
    # read or built), "fit", "test"; the rest of wall_time_s is set-up and writing. A resumed run adds to them.
    stages: dict[str, float] = field(default_factory=dict)
    started_at: str = ""  # ISO 8601, local time with offset
    finished_at: str = ""
    message: str | None = None  # why a run diverged, failed or was interrupted
    code: dict[str, Any] = field(default_factory=dict)  # kdlab, torch and lightning versions, git commit
    version: int = RECORD_VERSION

    # -- what kind of run is this ---------------------------------------------------------------------
    @property
    def is_distillation(self) -> bool:
        return self.kind == "distillation"

    @property
    def is_ensemble(self) -> bool:
        """Distilled from several teachers at once (teacher=ensemble): see `members`."""
        return bool(self.members)

    @property
    def finished(self) -> bool:
        return self.status in FINISHED

    def counts_as_baseline(self) -> bool:
        """A from-scratch run that may stand for its student recipe: trained fully, tested, healthy."""
        return (
            self.kind == "supervised"
            and self.mode == "train"
            and self.status == "ok"
            and not self.smoke
            and self.metrics.get("test/acc") is not None
        )

    def metric(self, key: str) -> float | None:
        value = self.metrics.get(key)
        return None if value is None else float(value)

    # -- JSON -----------------------------------------------------------------------------------------
    def to_json(self) -> str:
        return json.dumps(nulls_for_non_finite(asdict(self)), indent=2, sort_keys=True, allow_nan=False) + "\n"

    @classmethod
    def from_json(cls, text: str, source: str = "<string>") -> RunRecord:
        try:
            data = json.loads(text, parse_constant=_reject_constant)
        except (json.JSONDecodeError, ValueError) as err:
            raise RecordError(f"{source} is not a valid run record (strict JSON): {err}") from err
        if not isinstance(data, dict):
            raise RecordError(f"{source} holds a JSON {type(data).__name__}, not a run record object.")
        if data.get("version") != RECORD_VERSION:
            raise RecordError(
                f"{source} is a run record of format {data.get('version', 1)!r}; this kdlab reads format "
                f"{RECORD_VERSION}. Re-run the job (or evaluate it again with scripts/evaluate.py) to rewrite it."
            )
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in data.items() if k in known}
        try:
            if values.get("teacher") is not None:
                values["teacher"] = TeacherRef(**values["teacher"])
            values["members"] = [TeacherRef(**member) for member in values.get("members") or []]
        except TypeError as err:
            raise RecordError(f"{source} has a teacher entry that is not a TeacherRef: {err}") from err
        try:
            record = cls(**values)
        except TypeError as err:
            raise RecordError(f"{source} lacks fields of a run record: {err}") from err
        if record.status not in STATUSES:
            raise RecordError(f"{source} has status {record.status!r}; expected one of {', '.join(STATUSES)}.")
        return record

    def write(self, folder: str | os.PathLike) -> Path:
        """Atomically: a reader sees the old record or the new one, never half of one."""
        path = Path(folder) / RECORD_FILE
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{RECORD_FILE}.{os.getpid()}.tmp")
        tmp.write_text(self.to_json())
        os.replace(tmp, path)
        return path

    @classmethod
    def read(cls, folder_or_file: str | os.PathLike) -> RunRecord:
        path = Path(folder_or_file)
        if path.is_dir():
            path = path / RECORD_FILE
        if not path.is_file():
            raise RecordError(
                f"No run record at {path}: a run writes {RECORD_FILE} into its folder when it ends "
                "(ok, smoke, diverged, interrupted or failed). Check the folder is a kdlab run folder."
            )
        return cls.from_json(path.read_text(), source=str(path))


class RecordError(ValueError):
    """A metrics.json that is not a run record this kdlab can read."""


def _reject_constant(name: str) -> None:
    raise ValueError(f"non-standard JSON constant {name}")


def scored_as(combine: dict[str, Any] | None) -> str | None:
    """How an ensemble's accuracy combined its members, for labels: "mean_probs at T=1", "mean_logits" (no T).

    None when `combine` does not say (a record written before kdlab recorded it): no label then claims a T.
    """
    if not isinstance(combine, dict) or "scored_at" not in combine:
        return None
    mode = combine.get("mode", "mean_probs")
    return str(mode) if mode == "mean_logits" else f"{mode} at T={combine['scored_at']:g}"


def nulls_for_non_finite(value: Any) -> Any:
    """Non-finite floats become None (JSON null), nested ones too: strict JSON in every file kdlab writes."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: nulls_for_non_finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [nulls_for_non_finite(v) for v in value]
    return value


def find_records(root: str | os.PathLike) -> list[tuple[Path, RunRecord | RecordError]]:
    """Every `metrics.json` under `root`, read; unreadable ones come back as their error, not skipped."""
    found = []
    for path in sorted(Path(root).rglob(RECORD_FILE)):
        try:
            found.append((path.parent, RunRecord.read(path)))
        except RecordError as err:
            found.append((path.parent, err))
    return found
