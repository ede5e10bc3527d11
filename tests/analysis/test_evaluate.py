"""scripts/evaluate.py on hand-made run folders: tiny MLPs on the generated MNIST and CIFAR stand-ins."""

import dataclasses
import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra.utils import instantiate
from matplotlib.image import imread
from omegaconf import OmegaConf
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from kdlab.analysis.evaluate import evaluate_run
from kdlab.checkpoints import sha256_file
from kdlab.config import CONFIG_DIR
from kdlab.data import normalize, read_idx
from kdlab.models import MLP, net_config
from kdlab.record import RunRecord, TeacherRef

REPO = Path(__file__).resolve().parents[2]
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
STUDENT = {"_target_": "kdlab.models.MLP", "hidden": [16]}
TEACHER = {"_target_": "kdlab.models.MLP", "hidden": [32]}
TEACHER_NORM = {"mean": [0.5], "std": [0.25]}  # the teacher learnt other normalisation than the run's MNIST one


def data(name: str, data_dir: Path):
    """conf/data/<name>.yaml on generated files (offline, no checksums), and its spec after setup."""
    cfg = OmegaConf.to_container(OmegaConf.load(CONFIG_DIR / "data" / f"{name}.yaml"))
    offline = {"mirrors": [], "pypi_package": None} if name == "mnist" else {"download": False}
    cfg.update(data_dir=str(data_dir), val_size=60, eval_batch_size=200, verify=False, **offline)
    dm = instantiate(cfg, _convert_="all")
    dm.prepare_data()
    dm.setup("test")
    return cfg, dm.spec


def make_run(folder: Path, data_dir: Path, distill: bool, tensorboard: bool = True, name: str = "mnist") -> dict:
    """What a finished run leaves: metrics.json, student.pt, student_model.yaml, config.yaml (+ teacher file)."""
    folder.mkdir(parents=True)
    config, spec = data(name, data_dir)
    torch.manual_seed(0)
    nets = {"student": MLP(spec.input_shape, 10, hidden=[16]), "teacher": MLP(spec.input_shape, 10, hidden=[32])}
    torch.save(nets["student"].state_dict(), folder / "student.pt")
    OmegaConf.save(net_config(STUDENT, spec.input_shape, 10), folder / "student_model.yaml")
    teacher = None
    if distill:
        path = folder.parent / "teacher_cache" / "teacher.pt"  # outside the run folder, like kdlab's cache
        path.parent.mkdir(exist_ok=True)
        torch.save(nets["teacher"].state_dict(), path)
        trained = dataclasses.replace(spec, **TEACHER_NORM) if name == "mnist" else spec
        model = net_config(TEACHER, spec.input_shape, 10)
        teacher = TeacherRef(checkpoint=str(path), sha256=sha256_file(path), model=model, data=trained.to_dict())
    OmegaConf.save({"data": config, **({"teacher": {"model": TEACHER}} if distill else {})}, folder / "config.yaml")
    if tensorboard:
        (folder / "tensorboard").mkdir()
    RunRecord(
        name="distill_mlp" if distill else "student_scratch_mlp",
        kind="distillation" if distill else "supervised",
        status="ok",
        seed=0,
        metrics={"val/acc_best": 0.5},
        data=spec.to_dict(),
        teacher=teacher,
        output_dir=str(folder),
        files={"weights": "student.pt", "model": "student_model.yaml", "config": "config.yaml"},
        global_step=42,
    ).write(folder)
    return nets


def direct(net: MLP, mnist_dir: Path, mean: list[float], std: list[float]) -> tuple[torch.Tensor, torch.Tensor]:
    """Predictions on the 400 test images straight from the IDX files: another path than evaluate's."""
    x = torch.from_numpy(read_idx(mnist_dir / "t10k-images-idx3-ubyte")).unsqueeze(1)
    y = torch.from_numpy(read_idx(mnist_dir / "t10k-labels-idx1-ubyte")).long()
    with torch.no_grad():
        return net.eval()(normalize(x, mean, std)).argmax(1), y


def test_evaluate_distillation_run_writes_analysis(tmp_path, mnist_dir):
    """Each net reads the test images normalised as it was trained: the teacher its own way, not the run's."""
    folder = tmp_path / "run"
    nets = make_run(folder, mnist_dir, distill=True)
    before = RunRecord.read(folder)
    evaluate_run(folder, batch_size=128)

    record = RunRecord.read(folder)
    analysis = record.analysis
    assert set(analysis) == {"n_test", "n_bins", "student", "teacher", "disagreements", "agreement", "files"}
    assert analysis["n_test"] == 400
    s_pred, y = direct(nets["student"], mnist_dir, [0.1307], [0.3081])
    t_pred, _ = direct(nets["teacher"], mnist_dir, **TEACHER_NORM)
    t_wrong, _ = direct(nets["teacher"], mnist_dir, [0.1307], [0.3081])  # the teacher fed the run's normalisation
    assert analysis["student"]["acc"] == pytest.approx(float((s_pred == y).float().mean()))
    assert analysis["teacher"]["acc"] == pytest.approx(float((t_pred == y).float().mean()))
    assert analysis["disagreements"] == int((s_pred != t_pred).sum()) != int((s_pred != t_wrong).sum())
    assert analysis["student"]["per_class_acc"][3] == pytest.approx(float((s_pred[y == 3] == 3).float().mean()))
    assert 0.0 <= analysis["student"]["ece"] <= 1.0
    assert analysis["files"] == [
        "analysis/confusion_student.png",
        "analysis/reliability.png",
        "analysis/disagreements.png",
    ]
    for name in analysis["files"]:
        assert (folder / name).read_bytes()[:8] == PNG_SIGNATURE
    before.analysis = analysis
    assert record == before  # everything else in the record unchanged

    events = EventAccumulator(str(folder / "tensorboard")).Reload()
    assert set(events.Tags()["images"]) == {
        "visuals/confusion_student",
        "visuals/reliability",
        "visuals/disagreements",
    }
    assert [event.step for event in events.Images("visuals/reliability")] == [42]  # the run's last step


def test_evaluate_a_colour_run(tmp_path, cifar_dir):
    """A CIFAR-10 run: the test set comes from its own datamodule, the disagreement grid is drawn in colour."""
    folder = tmp_path / "run"
    make_run(folder, cifar_dir, distill=True, tensorboard=False, name="cifar10")
    analysis = evaluate_run(folder).analysis
    assert analysis["n_test"] == 60 and len(analysis["student"]["per_class_acc"]) == 10
    assert analysis["disagreements"] > 0
    grid = imread(folder / "analysis" / "disagreements.png")[..., :3]
    assert np.abs(grid[..., 0] - grid[..., 1]).max() > 0.2  # red and green differ: colour, not grey


def _script_main():
    spec = importlib.util.spec_from_file_location("evaluate_script", REPO / "scripts" / "evaluate.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main


def test_script_on_a_supervised_run(tmp_path, mnist_dir, capsys):
    folder = tmp_path / "run"
    make_run(folder, mnist_dir, distill=False, tensorboard=False)
    assert _script_main()([str(folder)]) == 0
    out = capsys.readouterr().out
    assert "student: acc" in out and "teacher" not in out
    analysis = RunRecord.read(folder).analysis
    assert set(analysis) == {"n_test", "n_bins", "student", "files"}
    assert analysis["files"] == ["analysis/confusion_student.png", "analysis/reliability.png"]
    assert not (folder / "tensorboard").exists()  # a run without TensorBoard does not get one


def test_script_says_what_is_missing(tmp_path, mnist_dir, capsys):
    folder = tmp_path / "run"
    make_run(folder, mnist_dir, distill=True)
    assert _script_main()([str(folder), "--data-dir", str(tmp_path / "nowhere")]) == 1
    assert "test set could not be read from" in (err := capsys.readouterr().err) and "--data-dir" in err
    teacher = Path(RunRecord.read(folder).teacher.checkpoint)
    torch.save(MLP((1, 28, 28), 10, hidden=[32]).state_dict(), teacher)  # the cached teacher was replaced
    assert _script_main()([str(folder)]) == 1
    assert "has changed since the run read it" in capsys.readouterr().err
    (folder / "student.pt").unlink()
    assert _script_main()([str(folder)]) == 1
    assert "student.pt is missing" in capsys.readouterr().err
    assert RunRecord.read(folder).analysis == {}
