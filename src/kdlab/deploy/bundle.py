"""A run folder's deployable nets, each behind the normalisation it was trained with, plus its test set.

The folder is read by kdlab.runfolder (the same reader as scripts/evaluate.py). A distillation run
yields its student and, when their weights are still there, the teacher it learnt from or each
ensemble member, so all can be measured side by side; every one ships with the normalisation of the
data it was trained on, which for a teacher may differ from the student's.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from kdlab.data.datamodule import Split
from kdlab.data.spec import DataSpec
from kdlab.runfolder import FolderNet, RunFolder, read_run_folder


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
class DeployNet:
    """One net to ship: `role` names it in files and tables ("student", "teacher", "member0", ... or "model")."""

    role: str
    model: RawPixelClassifier  # eval mode, frozen
    weights: Path  # the file its weights came from
    model_config: dict[str, Any]
    spec: DataSpec  # the data it was trained on

    @classmethod
    def of(cls, net: FolderNet) -> DeployNet:
        return cls(net.role, RawPixelClassifier(net.net, net.spec).eval(), net.weights, net.config, net.spec)

    @property
    def params(self) -> int:
        return sum(p.numel() for p in self.model.net.parameters())

    @cached_property
    def digest(self) -> str:
        """sha256 over the weights and the normalisation: what an export must have been made from."""
        h = hashlib.sha256(f"mean={list(self.spec.mean)!r};std={list(self.spec.std)!r}".encode())
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
            "data": self.spec.name,
            "mean": list(self.spec.mean),
            "std": list(self.spec.std),
            "classes": list(self.spec.classes),
            "input": f"uint8[N,{','.join(map(str, self.spec.input_shape))}] raw pixels 0..255",
            "output": f"float32[N,{self.spec.num_classes}] logits",
            "kdlab": __version__,
        }


@dataclass
class Bundle:
    run: RunFolder
    nets: list[DeployNet]  # the teacher or each ensemble member first (as far as still there), then the student
    test: Split  # raw uint8 test images and their labels, from the run's own datamodule
    source: str  # where the test set was read from
    notes: list[str] = field(default_factory=list)  # what was skipped and why, for the report

    @property
    def folder(self) -> Path:
        return self.run.folder

    def net(self, role: str) -> DeployNet | None:
        return next((n for n in self.nets if n.role == role), None)


def load_bundle(folder: str | os.PathLike, data_dir: str | os.PathLike | None = None) -> Bundle:
    """The folder's net(s), each with its own normalisation, and the test set of the run's data.

    A teacher whose file is gone or changed is left out with a note: the student still ships.
    """
    run = read_run_folder(folder, require_teachers=False)
    datamodule = run.datamodule(data_dir)
    source = str(datamodule.hparams.get("data_dir", run.spec.name))  # digits: no files, the name
    notes = [*run.notes, *(["the ensemble is incomplete: its combined accuracy is not reported"]
                           if run.record.members and run.combine is None else [])]  # fmt: skip
    nets = [DeployNet.of(net) for net in (*run.teachers, run.student)]
    return Bundle(run, nets, datamodule.data_test, source, notes)
