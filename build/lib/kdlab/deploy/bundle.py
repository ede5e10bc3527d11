"""A run folder's deployable nets, each behind the normalisation it was trained with, plus its test set.

Everything comes from the folder's `RunRecord` and the files it names (weights, model YAML, resolved
config), never from the training code, so a folder written by any kdlab version that keeps that
contract can be shipped. A distillation run yields its student and, when its weights are still
there, the teacher it learnt from, so both can be measured side by side.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from torch import Tensor, nn

from kdlab.checkpoints import CheckpointError, load_weights
from kdlab.record import RecordError, RunRecord

INPUT_SHAPE = (1, 28, 28)  # one MNIST image: what every exported model takes, as raw uint8
MODEL_TARGET_PREFIX = "kdlab.models."  # only kdlab's own nets are built from a folder's YAML
UNUSABLE_STATUSES = ("running", "failed", "diverged")  # no weights worth shipping
TEST_FILES = ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


class BundleError(ValueError):
    """A folder that cannot be deployed: no record, missing files, a model YAML that is not a kdlab net."""


class RawPixelClassifier(nn.Module):
    """A trained net behind its normalisation: raw uint8 pixels [N, 1, 28, 28] in, float32 logits out.

    Shipping the `(x / 255 - mean) / std` step inside the model means a deployer cannot forget it or
    use other constants. The arithmetic is `kdlab.data.normalize`'s, op for op, so the eager model
    here equals `net(normalize(x, mean, std))` exactly.
    """

    def __init__(self, net: nn.Module, mean: float, std: float) -> None:
        super().__init__()
        self.net = net
        self.mean = float(mean)
        self.std = float(std)

    def forward(self, x: Tensor) -> Tensor:
        return self.net((x.to(torch.float32) / 255.0 - self.mean) / self.std)


@dataclass
class DeployNet:
    """One net to ship: `role` names it in files and tables ("student", "teacher" or "model")."""

    role: str
    model: RawPixelClassifier  # eval mode, frozen
    weights: Path  # the file its weights came from
    model_config: dict[str, Any]

    @property
    def params(self) -> int:
        return sum(p.numel() for p in self.model.net.parameters())

    @cached_property
    def digest(self) -> str:
        """sha256 over the weights and the normalisation: what an export must have been made from."""
        h = hashlib.sha256(f"mean={self.model.mean!r};std={self.model.std!r}".encode())
        for key, value in sorted(self.model.net.state_dict().items()):
            h.update(f"{key}:{value.dtype}:{tuple(value.shape)}".encode())
            h.update(value.detach().cpu().contiguous().numpy().tobytes())
        return h.hexdigest()

    def manifest(self) -> dict[str, Any]:
        """Written into every export, so a file can later be matched to the net it claims to be."""
        from kdlab import __version__

        return {
            "role": self.role,
            "net": self.model_config.get("_target_", type(self.model.net).__name__),
            "digest": self.digest,
            "mean": self.model.mean,
            "std": self.model.std,
            "input": f"uint8[N,{','.join(map(str, INPUT_SHAPE))}] raw pixels 0..255",
            "output": "float32[N,num_classes] logits",
            "kdlab": __version__,
        }


@dataclass
class TestSet:
    images: Tensor  # uint8 [N, 1, 28, 28], raw
    labels: Tensor  # int64 [N]
    source: str


@dataclass
class Bundle:
    folder: Path
    record: RunRecord
    nets: list[DeployNet]
    test: TestSet
    mean: float
    std: float
    notes: list[str] = field(default_factory=list)  # what was skipped and why, for the report

    def net(self, role: str) -> DeployNet | None:
        return next((n for n in self.nets if n.role == role), None)


def _in_folder(folder: Path, name: str) -> Path:
    path = Path(name).expanduser()
    return path if path.is_absolute() else folder / path


def _load_yaml(path: Path, what: str) -> DictConfig:
    if not path.is_file():
        raise BundleError(
            f"{what} {path} is missing. The run folder is incomplete; re-run the job or copy the file back."
        )
    cfg = OmegaConf.load(path)
    if not isinstance(cfg, DictConfig):
        raise BundleError(f"{what} {path} holds a YAML list, not a mapping.")
    return cfg


def build_net(model_cfg: DictConfig | dict, source: str) -> nn.Module:
    """Instantiate a kdlab net from its `_target_` config; any other target is refused.

    A run folder may come from someone else, and `instantiate` calls whatever `_target_` names:
    only classes under `kdlab.models` are built, and nested `_target_`s are not followed
    (`_recursive_=False`; kdlab's nets take plain values).
    """
    from hydra.utils import instantiate

    cfg = OmegaConf.create(model_cfg) if isinstance(model_cfg, dict) else model_cfg
    target = str(cfg.get("_target_", ""))
    if not target.startswith(MODEL_TARGET_PREFIX):
        raise BundleError(
            f"{source} names _target_ {target!r}; export builds kdlab's own nets only ({MODEL_TARGET_PREFIX}*). "
            "Check that the folder is a kdlab run folder and that its model YAML was not edited."
        )
    try:
        return instantiate(cfg, _recursive_=False, _convert_="all")
    except Exception as err:  # hydra wraps the net's own ValueError/TypeError
        raise BundleError(f"{source}: cannot build {target} from it: {err}") from err


def _load_net(role: str, model_cfg: DictConfig, weights: Path, source: str, mean: float, std: float) -> DeployNet:
    net = build_net(model_cfg, source)
    try:
        load_weights(net, weights, role=role)
    except CheckpointError as err:
        raise BundleError(str(err)) from err
    model = RawPixelClassifier(net, mean, std).eval().requires_grad_(False)
    return DeployNet(role, model, weights, OmegaConf.to_container(model_cfg, resolve=True))


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def read_test_set(data_dir: Path) -> TestSet:
    """The raw uint8 test images and labels, read straight from the IDX files (no DataModule to build)."""
    from kdlab.data.idx import read_idx

    paths = [data_dir / name for name in TEST_FILES]
    if missing := [str(p) for p in paths if not p.is_file()]:
        raise BundleError(
            f"The test set is not where the run's config says: {', '.join(missing)} not found. Pass "
            "--data-dir with the folder holding the MNIST IDX files (e.g. --data-dir data)."
        )
    images, labels = read_idx(paths[0]), read_idx(paths[1])
    if images.ndim != 3 or images.shape[1:] != INPUT_SHAPE[1:] or labels.shape != (len(images),):
        raise BundleError(f"{paths[0]} and {paths[1]} hold shapes {images.shape} and {labels.shape}, not MNIST's.")
    return TestSet(torch.from_numpy(images).unsqueeze(1), torch.from_numpy(labels).long(), str(data_dir))


def load_bundle(folder: str | os.PathLike, data_dir: str | os.PathLike | None = None) -> Bundle:
    """The folder's net(s) with their normalisation, and the test set its config names."""
    folder = Path(folder)
    try:
        record = RunRecord.read(folder)
    except RecordError as err:
        raise BundleError(str(err)) from err
    if record.status in UNUSABLE_STATUSES:
        raise BundleError(
            f"{folder} is a run with status {record.status!r}{f' ({record.message})' if record.message else ''}: "
            "its weights are not a finished model. Export a run that ended ok (or a smoke run, for trying)."
        )
    for key in ("weights", "config"):
        if key not in record.files:
            raise BundleError(
                f"{folder}/metrics.json names no {key!r} file (files: {sorted(record.files) or 'none'}). The run was "
                "made by a kdlab that did not save its trained net; re-run it with this kdlab."
            )
    config = _load_yaml(_in_folder(folder, record.files["config"]), "The run config")
    try:
        mean, std = float(config.data.mean), float(config.data.std)
        data_dir = Path(data_dir) if data_dir is not None else Path(str(config.data.data_dir))
    except Exception as err:  # missing keys or unresolvable interpolations
        raise BundleError(
            f"{folder}/{record.files['config']} lacks a resolved data.mean, data.std or data.data_dir ({err})."
        ) from err

    if "model" in record.files:
        model_cfg = _load_yaml(_in_folder(folder, record.files["model"]), "The model config")
    elif "model" in config:
        model_cfg = config.model
    else:
        raise BundleError(f"{folder} names no model config (files.model) and its config.yaml has no `model`.")
    main_role = "student" if record.is_distillation else "model"
    weights = _in_folder(folder, record.files["weights"])
    nets = [_load_net(main_role, model_cfg, weights, f"{folder} model config", mean, std)]
    notes: list[str] = []
    if record.is_distillation:
        teacher, note = _load_teacher(folder, record, config, mean, std)
        if teacher is not None:
            nets.insert(0, teacher)
        if note:
            notes.append(note)
    return Bundle(folder, record, nets, read_test_set(data_dir), mean, std, notes)


def _load_teacher(
    folder: Path, record: RunRecord, config: DictConfig, mean: float, std: float
) -> tuple[DeployNet | None, str | None]:
    """The teacher the student learnt from, for comparison; absent or changed, the student ships alone.

    The teacher sees the run's normalisation (the distillation step feeds both nets one batch).
    """
    ref = record.teacher
    if ref is None or "teacher" not in config or "model" not in config.teacher:
        return None, "the run names no teacher checkpoint or teacher.model: student measured alone"
    path = _in_folder(folder, ref.checkpoint)
    if not path.is_file():
        return None, f"teacher checkpoint {path} is gone (cache cleaned?): student measured alone"
    if ref.sha256 and not _sha256(path).startswith(ref.sha256):
        return None, (
            f"teacher checkpoint {path} changed since the run (sha256 differs from the record's {ref.sha256[:12]}): "
            "not the teacher this student learnt from, so it is left out"
        )
    return _load_net("teacher", config.teacher.model, path, f"{folder} config teacher.model", mean, std), None
