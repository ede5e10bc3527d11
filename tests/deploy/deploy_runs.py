"""Run folders as kdlab leaves them, made by hand: tiny MLPs trained a few steps on the generated digits.

Nothing here runs kdlab's training code: the folders follow the contract export reads (metrics.json
via RunRecord, the weights, the model YAML, the resolved config.yaml), so these tests hold whatever
the run code does as long as it writes that contract.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import torch
from omegaconf import OmegaConf
from safetensors.torch import save_file

from kdlab.data import normalize, read_idx
from kdlab.models import MLP
from kdlab.record import RunRecord, TeacherRef

MEAN, STD = 0.2, 0.35  # not MNIST's: a wrong constant anywhere in the export path shows
TEACHER = {"_target_": "kdlab.models.MLP", "in_features": 784, "hidden": [32, 16], "num_classes": 10}
STUDENT = {"_target_": "kdlab.models.MLP", "in_features": 784, "hidden": [8], "num_classes": 10}


def train_tiny(model_cfg: dict, mnist_dir: Path, seed: int, steps: int = 40) -> dict[str, torch.Tensor]:
    """A few Adam steps on the generated digits: enough for well above chance, in well under a second."""
    torch.manual_seed(seed)
    net = MLP(**{k: v for k, v in model_cfg.items() if k != "_target_"})
    x = torch.from_numpy(read_idx(mnist_dir / "train-images-idx3-ubyte")).unsqueeze(1)
    y = torch.from_numpy(read_idx(mnist_dir / "train-labels-idx1-ubyte")).long()
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    for step in range(steps):
        idx = torch.arange(step * 64, step * 64 + 64) % len(x)
        loss = torch.nn.functional.cross_entropy(net(normalize(x[idx], MEAN, STD)), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    return {k: v.detach().clone() for k, v in net.state_dict().items()}


@dataclass
class Nets:
    teacher: dict[str, torch.Tensor]
    student: dict[str, torch.Tensor]


def _config(data_dir: Path, teacher: dict | None = None) -> dict:
    cfg = {"data": {"_target_": "kdlab.data.MNISTDataModule", "data_dir": str(data_dir), "mean": MEAN, "std": STD}}
    if teacher is not None:
        cfg["teacher"] = {"model": teacher, "ckpt_path": None, "recipe": "train_teacher_mlp", "seed": 0}
    return cfg


def write_teacher_cache(folder: Path, nets: Nets, data_dir: Path) -> Path:
    """A cached-teacher entry: teacher.safetensors, teacher_model.yaml, config.yaml, metrics.json."""
    folder.mkdir(parents=True, exist_ok=True)
    save_file(nets.teacher, str(folder / "teacher.safetensors"))
    OmegaConf.save(OmegaConf.create(TEACHER), folder / "teacher_model.yaml")
    OmegaConf.save(OmegaConf.create({**_config(data_dir), "model": TEACHER}), folder / "config.yaml")
    RunRecord(
        name="train_teacher_mlp",
        kind="supervised",
        status="ok",
        seed=0,
        metrics={"test/acc": 0.9},
        output_dir=str(folder),
        files={"weights": "teacher.safetensors", "model": "teacher_model.yaml", "config": "config.yaml"},
    ).write(folder)
    return folder


def write_distill_run(folder: Path, nets: Nets, data_dir: Path, teacher_file: Path) -> Path:
    """A distillation run folder pointing at `teacher_file`, as the run code leaves it."""
    folder.mkdir(parents=True, exist_ok=True)
    torch.save(nets.student, folder / "student.pt")
    OmegaConf.save(OmegaConf.create(STUDENT), folder / "student_model.yaml")
    OmegaConf.save(OmegaConf.create({**_config(data_dir, TEACHER), "model": STUDENT}), folder / "config.yaml")
    RunRecord(
        name="distill_mlp",
        kind="distillation",
        status="ok",
        seed=1,
        teacher=TeacherRef(checkpoint=str(teacher_file), sha256=hashlib.sha256(teacher_file.read_bytes()).hexdigest()),
        output_dir=str(folder),
        files={"weights": "student.pt", "model": "student_model.yaml", "config": "config.yaml"},
    ).write(folder)
    return folder


def perturb_export(src: Path, dst: Path, fmt: str, delta: float = 0.5) -> None:
    """The same file with the head's bias shifted by `delta`, manifest kept: a lie only the logits reveal."""
    if fmt == "torchscript":
        from kdlab.deploy.export import MANIFEST_FILE

        extra = {MANIFEST_FILE: ""}
        module = torch.jit.load(str(src), _extra_files=extra)
        with torch.no_grad():
            module.net.head.bias += delta
        module.save(str(dst), _extra_files=extra)
        return
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(src))
    bias = next(t for t in model.graph.initializer if t.name.endswith("head.bias"))
    bias.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(bias) + delta, bias.name))
    onnx.save(model, str(dst))
