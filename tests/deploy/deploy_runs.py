"""Run folders as kdlab leaves them, made by hand: tiny MLPs trained a few steps on the generated data.

Nothing here runs kdlab's training code: the folders follow the contract kdlab.runfolder reads
(metrics.json via RunRecord with its data spec and teacher refs, the weights, the model YAML, the
resolved config.yaml), so these tests hold whatever the run code does as long as it writes that contract.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf
from safetensors.torch import save_file

from kdlab.checkpoints import sha256_file
from kdlab.config import CONFIG_DIR
from kdlab.data import DataSpec, normalize
from kdlab.models import build_net, net_config
from kdlab.record import RunRecord, TeacherRef

MEAN, STD = 0.2, 0.35  # the run's data: not MNIST's, so a wrong constant anywhere in the export path shows
TEACHER_MEAN, TEACHER_STD = 0.45, 0.22  # the teacher learnt the same images normalised its own way
TEACHER = {"_target_": "kdlab.models.MLP", "hidden": [32, 16]}
STUDENT = {"_target_": "kdlab.models.MLP", "hidden": [8]}


def data_config(name: str, data_dir: Path, **values) -> dict:
    """conf/data/<name>.yaml on generated files (offline, format checks only); `values` override it (mean, std)."""
    cfg = OmegaConf.to_container(OmegaConf.load(CONFIG_DIR / "data" / f"{name}.yaml"))
    offline = {"mirrors": [], "pypi_package": None} if "pypi_package" in cfg else {"download": False}
    return {**cfg, "data_dir": str(data_dir), "verify": False, "val_size": 60, **offline, **values}


def datamodule(cfg: dict):
    dm = instantiate(cfg, _convert_="all")
    dm.prepare_data()
    dm.setup("fit")
    return dm


def train_tiny(model_cfg: dict, dm, seed: int, mean=MEAN, std=STD, steps: int = 40) -> dict[str, torch.Tensor]:
    """A few Adam steps on the datamodule's training images, normalised by (mean, std): well above chance."""
    torch.manual_seed(seed)
    net = build_net(model_cfg, dm.input_shape, dm.num_classes)
    x, y = dm.data_train.x, dm.data_train.y
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    for step in range(steps):
        idx = torch.arange(step * 64, step * 64 + 64) % len(x)
        loss = torch.nn.functional.cross_entropy(net(normalize(x[idx], mean, std)), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    return {k: v.detach().clone() for k, v in net.state_dict().items()}


@dataclass
class Nets:
    teacher: dict[str, torch.Tensor]  # trained on TEACHER_MEAN/TEACHER_STD
    student: dict[str, torch.Tensor]  # trained on MEAN/STD
    spec: DataSpec  # the run's data
    teacher_spec: DataSpec  # the same images, the teacher's normalisation


def tiny_nets(mnist_dir: Path) -> Nets:
    dm = datamodule(data_config("mnist", mnist_dir, mean=[MEAN], std=[STD]))
    teacher = train_tiny(TEACHER, dm, seed=0, mean=TEACHER_MEAN, std=TEACHER_STD)
    spec = dm.spec
    teacher_spec = dataclasses.replace(spec, mean=(TEACHER_MEAN,), std=(TEACHER_STD,))
    return Nets(teacher, train_tiny(STUDENT, dm, seed=1), spec, teacher_spec)


def filled(model: dict, spec: DataSpec) -> dict:
    return net_config(model, spec.input_shape, spec.num_classes)


def teacher_ref(path: Path, spec: DataSpec | None, model: dict = TEACHER) -> TeacherRef:
    """How a run records a teacher it read: file, checksum, net and (when known) the data it was trained on."""
    return TeacherRef(checkpoint=str(path), sha256=sha256_file(path), model=filled(model, spec) if spec else model,
                      data=spec.to_dict() if spec else None)  # fmt: skip


def write_run(folder: Path, student: dict, data: dict, spec: DataSpec, teachers: list[TeacherRef] = (),
              combine: dict | None = None, name: str = "distill_mlp") -> Path:  # fmt: skip
    """A run folder: one teacher, an ensemble (`combine` given) or none (a supervised run)."""
    folder.mkdir(parents=True, exist_ok=True)
    torch.save(student, folder / "student.pt")
    OmegaConf.save(OmegaConf.create(filled(STUDENT, spec)), folder / "student_model.yaml")
    config = {"data": data, "model": STUDENT}
    if combine is not None:
        config["teacher"] = {"members": [{"model": TEACHER, "ckpt_path": t.checkpoint} for t in teachers],
                             "combine": combine}  # fmt: skip
    elif teachers:
        config["teacher"] = {"model": TEACHER, "ckpt_path": teachers[0].checkpoint, "recipe": "train_teacher_mlp"}
    OmegaConf.save(OmegaConf.create(config), folder / "config.yaml")
    RunRecord(
        name=name,
        kind="distillation" if teachers else "supervised",
        status="ok",
        seed=1,
        data=spec.to_dict(),
        teacher=teachers[0] if teachers and combine is None else None,
        members=list(teachers) if combine is not None else [],
        output_dir=str(folder),
        files={"weights": "student.pt", "model": "student_model.yaml", "config": "config.yaml"},
        global_step=42,
    ).write(folder)
    return folder


def write_teacher_cache(folder: Path, nets: Nets, data_dir: Path) -> Path:
    """A cached-teacher entry: teacher.safetensors, teacher_model.yaml, config.yaml, metrics.json (its own data)."""
    folder.mkdir(parents=True, exist_ok=True)
    save_file(nets.teacher, str(folder / "teacher.safetensors"))
    OmegaConf.save(OmegaConf.create(filled(TEACHER, nets.teacher_spec)), folder / "teacher_model.yaml")
    data = data_config("mnist", data_dir, mean=[TEACHER_MEAN], std=[TEACHER_STD])
    OmegaConf.save(OmegaConf.create({"data": data, "model": TEACHER}), folder / "config.yaml")
    RunRecord(
        name="train_teacher_mlp",
        kind="supervised",
        status="ok",
        seed=0,
        metrics={"test/acc": 0.9},
        data=nets.teacher_spec.to_dict(),
        output_dir=str(folder),
        files={"weights": "teacher.safetensors", "model": "teacher_model.yaml", "config": "config.yaml"},
    ).write(folder)
    return folder


def write_distill_run(folder: Path, nets: Nets, data_dir: Path, teacher_file: Path) -> Path:
    """A distillation run folder pointing at `teacher_file` (trained on its own normalisation), as a run leaves it."""
    data = data_config("mnist", data_dir, mean=[MEAN], std=[STD])
    return write_run(folder, nets.student, data, nets.spec, [teacher_ref(teacher_file, nets.teacher_spec)])


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
