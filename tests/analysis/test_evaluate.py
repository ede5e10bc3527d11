"""scripts/evaluate.py on hand-made run folders: tiny MLPs on the generated MNIST stand-in."""

import hashlib
import importlib.util
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from kdlab.analysis.evaluate import evaluate_run
from kdlab.data import normalize, read_idx
from kdlab.models import MLP
from kdlab.record import RunRecord, TeacherRef

REPO = Path(__file__).resolve().parents[2]
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
STUDENT = {"_target_": "kdlab.models.MLP", "hidden": [16]}
TEACHER = {"_target_": "kdlab.models.MLP", "hidden": [32]}


def make_run(folder: Path, mnist_dir: Path, distill: bool, tensorboard: bool = True) -> dict[str, MLP]:
    """What a finished run leaves: metrics.json, student.pt, student_model.yaml, config.yaml (+ teacher file)."""
    folder.mkdir(parents=True)
    torch.manual_seed(0)
    nets = {"student": MLP(hidden=[16]), "teacher": MLP(hidden=[32])}
    torch.save(nets["student"].state_dict(), folder / "student.pt")
    OmegaConf.save(STUDENT, folder / "student_model.yaml")
    config = {
        "data": {
            "_target_": "kdlab.data.MNISTDataModule",
            "data_dir": str(mnist_dir),
            "val_size": 200,
            "eval_batch_size": 200,
            "mirrors": [],
            "pypi_package": None,
            "verify": False,
            "mean": 0.1307,
            "std": 0.3081,
        }
    }
    teacher = None
    if distill:
        path = folder.parent / "teacher_cache" / "teacher.pt"  # outside the run folder, like kdlab's cache
        path.parent.mkdir(exist_ok=True)
        torch.save(nets["teacher"].state_dict(), path)
        teacher = TeacherRef(checkpoint=str(path), sha256=hashlib.sha256(path.read_bytes()).hexdigest())
        config["teacher"] = {"model": TEACHER}
    OmegaConf.save(config, folder / "config.yaml")
    if tensorboard:
        (folder / "tensorboard").mkdir()
    RunRecord(
        name="distill_mlp" if distill else "student_scratch_mlp",
        kind="distillation" if distill else "supervised",
        status="ok",
        seed=0,
        metrics={"val/acc_best": 0.5},
        teacher=teacher,
        output_dir=str(folder),
        files={"weights": "student.pt", "model": "student_model.yaml", "config": "config.yaml"},
        global_step=42,
    ).write(folder)
    return nets


def direct(net: MLP, mnist_dir: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """Predictions on the 400 test images straight from the IDX files: another path than evaluate's."""
    x = torch.from_numpy(read_idx(mnist_dir / "t10k-images-idx3-ubyte")).unsqueeze(1)
    y = torch.from_numpy(read_idx(mnist_dir / "t10k-labels-idx1-ubyte")).long()
    with torch.no_grad():
        return net.eval()(normalize(x)).argmax(1), y


def test_evaluate_distillation_run_writes_analysis(tmp_path, mnist_dir):
    folder = tmp_path / "run"
    nets = make_run(folder, mnist_dir, distill=True)
    before = RunRecord.read(folder)
    evaluate_run(folder, batch_size=128)

    record = RunRecord.read(folder)
    analysis = record.analysis
    assert set(analysis) == {"n_test", "n_bins", "student", "teacher", "disagreements", "agreement", "files"}
    assert analysis["n_test"] == 400
    s_pred, y = direct(nets["student"], mnist_dir)
    t_pred, _ = direct(nets["teacher"], mnist_dir)
    assert analysis["student"]["acc"] == pytest.approx(float((s_pred == y).float().mean()))
    assert analysis["teacher"]["acc"] == pytest.approx(float((t_pred == y).float().mean()))
    assert analysis["student"]["per_class_acc"][3] == pytest.approx(float((s_pred[y == 3] == 3).float().mean()))
    assert analysis["disagreements"] == int((s_pred != t_pred).sum()) > 0
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
        "analysis/confusion_student",
        "analysis/reliability",
        "analysis/disagreements",
    }
    assert [event.step for event in events.Images("analysis/reliability")] == [42]  # the run's last step


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
    teacher = Path(RunRecord.read(folder).teacher.checkpoint)
    torch.save(MLP(hidden=[32]).state_dict(), teacher)  # the cached teacher was replaced
    assert _script_main()([str(folder)]) == 1
    assert "has changed since the run read it" in capsys.readouterr().err
    (folder / "student.pt").unlink()
    assert _script_main()([str(folder)]) == 1
    assert "student.pt is missing" in capsys.readouterr().err
    assert RunRecord.read(folder).analysis == {}
