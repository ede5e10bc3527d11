"""A finished run folder read back: its data contract, its net, its teacher(s) and its test set.

`scripts/evaluate.py` (kdlab.analysis.evaluate) and `scripts/export.py` (kdlab.deploy) both start
here, so a folder means one thing to both. Everything comes from its `metrics.json` (a RunRecord)
and the files that names, never from the training code:
- `record.data`: the DataSpec the run read (input shape, classes, normalisation, fingerprint);
- `files.weights` + `files.model`: the trained net and its config (input shape and classes filled in);
- `files.config`: the resolved run config, whose `data` node rebuilds the run's own datamodule (the
  test set of any dataset) and whose `teacher.combine` says how an ensemble's members combine;
- `record.teacher`, or each of `record.members`: the weights file (checked against the sha256 the
  run read), the net config and the DataSpec that teacher was trained on. Each teacher reads pixels
  normalised by its own spec (the run's, when the record does not know it), as it did in training.
A cached teacher (outputs/teachers/<key>) is such a folder too: a supervised run of its net.
Each net's `model` is the net behind its own normalisation (raw uint8 pixels in): what evaluate tests
and export ships.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from torch import Tensor, nn

from kdlab.checkpoints import CheckpointError, load_weights, sha256_file
from kdlab.config import plain
from kdlab.data.spec import DataSpec
from kdlab.models import net_config
from kdlab.record import RecordError, RunRecord, TeacherRef

MODEL_TARGET_PREFIX = "kdlab.models."  # only kdlab's own nets are built from a folder's YAML
UNUSABLE_STATUSES = ("running", "failed", "diverged")  # no weights worth testing or shipping
REQUIRED_FILES = ("weights", "model", "config")  # student.pt, student_model.yaml, config.yaml


class RunFolderError(ValueError):
    """A folder that cannot be read back: no record, missing or changed files, a net that is not kdlab's."""


class RawPixelClassifier(nn.Module):
    """A trained net behind its normalisation: raw uint8 pixels [N, C, H, W] in, float32 logits out.

    Shipping the `(x / 255 - mean) / std` step (per channel) inside the model means a deployer cannot
    forget it or use other constants. The arithmetic is `kdlab.data.normalize`'s, op for op, so the
    eager model here equals `net(normalize(x, spec.mean, spec.std))` exactly.
    """

    def __init__(self, net: nn.Module, spec: DataSpec) -> None:
        super().__init__()
        self.net = net
        self.input_shape = tuple(spec.input_shape)  # (C, H, W): what export's example and probe batches take
        self.register_buffer("mean", torch.tensor(spec.mean, dtype=torch.float32).view(-1, 1, 1))
        self.register_buffer("std", torch.tensor(spec.std, dtype=torch.float32).view(-1, 1, 1))

    def forward(self, x: Tensor) -> Tensor:
        return self.net((x.to(torch.float32) / 255.0 - self.mean) / self.std)


@dataclass
class FolderNet:
    """One trained net of the folder, frozen, with the data contract it was trained under."""

    role: str  # "student", "model" (a supervised run's net), "teacher", or an ensemble's "member0", "member1", ...
    net: nn.Module  # eval mode, no gradients
    config: dict[str, Any]  # its net config, input shape and classes filled in
    weights: Path  # the file its weights came from
    spec: DataSpec  # the data it was trained on: it reads pixels normalised by spec.mean and spec.std

    @cached_property
    def model(self) -> RawPixelClassifier:
        """The net behind its own normalisation (eval mode): what is tested and shipped."""
        return RawPixelClassifier(self.net, self.spec).eval()


@dataclass
class RunFolder:
    folder: Path
    record: RunRecord
    config: DictConfig  # the resolved run config (config.yaml)
    spec: DataSpec  # the data the run read (record.data)
    nets: list[FolderNet]  # the run's own net first, then its teacher or each ensemble member in order
    combine: dict[str, Any] | None = None  # an ensemble's {mode, temperature, weights}; None: one teacher
    notes: list[str] = field(default_factory=list)  # teachers left out (require_teachers=False), and why

    @property
    def student(self) -> FolderNet:
        return self.nets[0]

    @property
    def teachers(self) -> list[FolderNet]:
        return self.nets[1:]

    def teacher_logits(self, logits: list[Tensor]) -> Tensor:
        """The teacher's logits from its nets' (in `teachers` order): a complete ensemble's predictions, its
        members combined at T=1 as training's test pass scored them (kdlab.modules.ensemble)."""
        from kdlab.modules.ensemble import ensemble_predictions

        return logits[0] if self.combine is None else ensemble_predictions(logits, **self.combine)

    def datamodule(self, data_dir: str | os.PathLike | None = None):
        """The run's own datamodule (config.data; `data_dir` says where its files are now), set up for test."""
        from hydra.utils import get_class, instantiate

        from kdlab.data import ImageDataModule

        data = OmegaConf.to_container(self.config.data, resolve=True) if "data" in self.config else {}
        target = str(data.get("_target_", ""))
        try:
            ok = issubclass(get_class(target), ImageDataModule)
        except Exception:  # not importable, not a class
            ok = False
        if not ok:  # `instantiate` calls whatever _target_ names, and the folder may come from someone else
            raise RunFolderError(
                f"{self.folder}/config.yaml: data._target_={target!r} is not a kdlab.data.ImageDataModule. Check "
                "that the folder is a kdlab run folder and that its config.yaml was not edited."
            )
        if data_dir is not None:
            if "data_dir" not in data:
                raise RunFolderError(f"This run's data ({self.spec.name}) reads no files: drop --data-dir.")
            data["data_dir"] = str(data_dir)
        where = data.get("data_dir", self.spec.name)
        try:
            datamodule = instantiate(data, _recursive_=False, _convert_="all")
            datamodule.prepare_data()
            datamodule.setup("test")
        except (OSError, ValueError, RuntimeError) as err:  # missing, damaged or foreign files, no download
            raise RunFolderError(
                f"The {self.spec.name} test set could not be read from {where}: {err}\nPass --data-dir with the "
                "folder that holds the files this run read."
            ) from err
        found, recorded = datamodule.spec.fingerprint, self.spec.fingerprint
        if recorded and (differ := sorted(k for k in {*found, *recorded} if found.get(k) != recorded.get(k))):
            raise RunFolderError(
                f"The files in {where} are not the data this run read: {', '.join(differ)} differ from the digests "
                "in its metrics.json (data.fingerprint), so its numbers would describe another test set. Pass "
                "--data-dir with the folder that holds the files this run read."
            )
        return datamodule


def read_run_folder(folder: str | os.PathLike, require_teachers: bool = True) -> RunFolder:
    """The folder's nets (its own, then its teacher or ensemble members), its data spec and config.

    require_teachers=False leaves a teacher whose file is gone or changed out, with a note, instead of refusing.
    """
    folder = Path(folder)
    try:
        record = RunRecord.read(folder)
    except RecordError as err:
        raise RunFolderError(str(err)) from err
    if record.status in UNUSABLE_STATUSES:
        raise RunFolderError(
            f"{folder} is a run with status {record.status!r}{f' ({record.message})' if record.message else ''}: "
            "its weights are not a finished model. Use a run that ended ok (or a smoke run, for trying)."
        )
    if missing := [role for role in REQUIRED_FILES if role not in record.files]:
        raise RunFolderError(
            f"{folder}/metrics.json names no {', '.join(missing)} file (files: {sorted(record.files) or 'none'}): "
            "the run ended before it saved its trained net, or a kdlab that did not save it made it. Re-run it."
        )
    paths = {role: _in_folder(folder, record.files[role]) for role in REQUIRED_FILES}
    for path in paths.values():
        if not path.is_file():
            raise RunFolderError(
                f"{path} is missing: a run is rebuilt from the weights, model and config files its metrics.json "
                f"names ({', '.join(record.files[r] for r in REQUIRED_FILES)}). Copy the file back or re-run the job."
            )
    if not record.data:
        raise RunFolderError(f"{folder}/metrics.json records no data spec (data): re-run the job with this kdlab.")
    config, spec = _yaml(paths["config"]), DataSpec.from_dict(record.data)
    role = "student" if record.is_distillation else "model"
    nets = [_build(role, "model", plain(_yaml(paths["model"])), spec, paths["weights"], str(paths["model"]))]
    run = RunFolder(folder, record, config, spec, nets)
    refs = (
        [("teacher", record.teacher)] if record.teacher else [(f"member{i}", m) for i, m in enumerate(record.members)]
    )
    if record.is_distillation and not refs:
        raise RunFolderError(f"{folder}/metrics.json is a distillation run that names no teacher; cannot rebuild it.")
    for i, (role, ref) in enumerate(refs):
        key = "teacher" if role == "teacher" else f"teacher.members.{i}"
        try:
            nets.append(_teacher(run, role, key, ref))
        except RunFolderError as err:
            if require_teachers:
                raise
            run.notes.append(f"{role} left out: {err}")
    if record.members and len(nets) == 1 + len(record.members):
        from kdlab.modules.ensemble import check_combination

        combine = OmegaConf.select(config, "teacher.combine", default=None)
        try:
            run.combine = check_combination(plain(combine) or {}, len(record.members))
        except ValueError as err:
            raise RunFolderError(f"{paths['config']}: {err}") from err
    return run


def _teacher(run: RunFolder, role: str, key: str, ref: TeacherRef) -> FolderNet:
    """One teacher net: its file as the run read it, its own net config and data contract."""
    path = _in_folder(run.folder, ref.checkpoint)
    if not path.is_file():
        raise RunFolderError(
            f"the {key} weights this run distilled from, {path}, are gone (teacher caches can be cleared). "
            "Restore the file, or re-run the experiment to train the teacher again."
        )
    digest = sha256_file(path)
    if ref.sha256 and not digest.startswith(ref.sha256.lower()):  # the record may keep the full hex or a prefix
        raise RunFolderError(
            f"{path} has changed since the run read it (sha256 {digest[:12]}... now, {ref.sha256[:12]}... in its "
            f"record): it is not the {key} this student learnt from. Restore the original file."
        )
    model = ref.model or plain(OmegaConf.select(run.config, f"{key}.model", default=None))
    if not model:
        raise RunFolderError(f"{run.folder}: neither metrics.json nor config.yaml gives the {key} net's config.")
    spec = DataSpec.from_dict(ref.data) if ref.data else run.spec  # unknown: it read the run's inputs as they were
    return _build(role, key, model, spec, path, f"{run.folder}: {key}.model")


def build_kdlab_net(config: Mapping[str, Any], source: str) -> nn.Module:
    """A kdlab net from its `_target_` config (input shape and classes filled in); any other target is refused.

    A run folder may come from someone else, and `instantiate` calls whatever `_target_` names: only
    classes under `kdlab.models` are built, and nested `_target_`s are not followed (`_recursive_=False`;
    kdlab's nets take plain values).
    """
    from hydra.utils import instantiate

    target = str(config.get("_target_", ""))
    if not target.startswith(MODEL_TARGET_PREFIX):
        raise RunFolderError(
            f"{source} names _target_ {target!r}; kdlab rebuilds its own nets only ({MODEL_TARGET_PREFIX}*). "
            "Check that the folder is a kdlab run folder and that its model YAML was not edited."
        )
    try:
        return instantiate(dict(config), _recursive_=False, _convert_="all")
    except Exception as err:  # hydra wraps the net's own ValueError/TypeError
        raise RunFolderError(f"{source}: cannot build {target} from it: {err}") from err


def _build(role: str, key: str, config: Mapping[str, Any], spec: DataSpec, weights: Path, source: str) -> FolderNet:
    """The net of `config` sized for `spec`, `weights` loaded (`key`: its config key, for messages)."""
    try:
        config = net_config(config, spec.input_shape, spec.num_classes, key=source)
    except ValueError as err:  # the YAML sizes the net for other data than the record's
        raise RunFolderError(str(err)) from err
    net = build_kdlab_net(config, source)
    try:
        load_weights(net, weights, role=key)
    except CheckpointError as err:
        raise RunFolderError(str(err)) from err
    return FolderNet(role, net.eval().requires_grad_(False), config, weights, spec)


def _in_folder(folder: Path, name: str) -> Path:
    path = Path(name).expanduser()
    return path if path.is_absolute() else folder / path


def _yaml(path: Path) -> Any:
    cfg = OmegaConf.load(path)
    if not isinstance(cfg, DictConfig):
        raise RunFolderError(f"{path} holds a YAML list, not a mapping: the run folder is damaged; re-run the job.")
    return cfg
