"""A teacher as an artefact: its weights, its net, and the data contract it was trained under.

A cache entry `outputs/teachers/<key>/` holds `teacher.safetensors` (the best epoch on validation),
`teacher_model.yaml` (its net, input shape and classes filled in) and `metrics.json`: the RunRecord
of its training, with the weights' sha256 and the DataSpec it was trained on (`record.data`:
normalisation, shape, classes, fingerprint). Whoever distils from it feeds it images normalised by
that spec, or refuses a mismatch: a teacher never silently reads another contract's inputs.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import torch
from omegaconf import OmegaConf

from kdlab.checkpoints import sha256_file
from kdlab.data.fetch import aside_path
from kdlab.data.spec import DataSpec
from kdlab.record import RECORD_FILE, RecordError, RunRecord, TeacherRef

log = logging.getLogger(__name__)

WEIGHTS_FILE = "teacher.safetensors"
MODEL_FILE = "teacher_model.yaml"


class TeacherContractError(ValueError):
    """A teacher that cannot read this run's images (another input shape or other classes)."""


def read_entry(folder: Path) -> RunRecord | None:
    """A complete, intact entry's record, or None when absent; a damaged one is moved aside, never deleted."""
    if not folder.is_dir():
        return None
    weights = folder / WEIGHTS_FILE
    try:
        record = RunRecord.read(folder / RECORD_FILE)
        expected = record.files.get("sha256")
        if not weights.is_file() or expected is None or sha256_file(weights) != expected:
            raise RecordError(f"{weights} is missing or does not match the checksum in its record")
    except RecordError as err:
        aside = aside_path(folder, hidden=True)
        log.warning("The cached teacher %s is damaged (%s). Moved it aside to %s; training it again.",
                    folder, err, aside)  # fmt: skip
        os.replace(folder, aside)
        return None
    return record


def write_entry(folder: Path, net: torch.nn.Module, model: dict, record: RunRecord) -> None:
    """Weights, net config and the record (with the weights' checksum) into `folder` (a staging folder)."""
    from safetensors.torch import save_file

    state = {k: v.detach().to("cpu", torch.float32 if v.is_floating_point() else v.dtype).contiguous()
             for k, v in net.state_dict().items()}  # fmt: skip
    save_file(state, str(folder / WEIGHTS_FILE))
    OmegaConf.save(OmegaConf.create(model), folder / MODEL_FILE)
    record.params = {"teacher": record.params.get("student", 0)}  # in the cache, the net is a teacher
    record.files = {"weights": WEIGHTS_FILE, "model": MODEL_FILE, "config": "config.yaml",
                    "sha256": sha256_file(folder / WEIGHTS_FILE)}  # fmt: skip
    record.write(folder)


def spec_beside(path: Path) -> dict | None:
    """The DataSpec recorded beside a weights file kdlab wrote (a teacher entry or a run folder), else None."""
    record_file = path.parent / RECORD_FILE
    if not record_file.is_file() and path.parent.name == "checkpoints":
        record_file = path.parent.parent / RECORD_FILE
    try:
        return RunRecord.read(record_file).data or None
    except RecordError:
        return None


def teacher_norm(ref: TeacherRef, run: DataSpec, name: str = "teacher") -> dict | None:
    """How the teacher must be fed this run's images: None (as the student) or its own {mean, std}.

    Refuses (TeacherContractError) a teacher whose input shape or classes differ from the run's data.
    """
    if ref.data is None:
        return None  # a file given by path, with no record beside it: assumed to read this data as it is
    trained = DataSpec.from_dict(ref.data)
    if problems := trained.incompatibilities(run):
        raise TeacherContractError(
            f"{name} ({ref.checkpoint}) was trained on {trained.name} and cannot read this run's {run.name} images "
            f"(teacher -> run: {'; '.join(problems)}). Distil from a teacher of this data: drop {name}.ckpt_path to "
            f"train one with {name}.recipe, or give the checkpoint of one trained on {run.name}."
        )
    return None if trained.normalization == run.normalization else trained.normalization
