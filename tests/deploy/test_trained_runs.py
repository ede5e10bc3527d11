"""scripts/evaluate.py and scripts/export.py on folders that `train()` made: one reader (kdlab.runfolder), two scripts.

An ensemble run (each member exported, the members combined as in training) and a run whose teacher
was trained on another normalisation than the run's data (every net fed, and shipped, its own).
Training's own test numbers are the reference: evaluate and export must reproduce them.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch
import yaml

from kdlab.checkpoints import load_weights
from kdlab.data import normalize
from kdlab.deploy.export import export_path, open_export, read_manifest
from kdlab.models import build_net
from kdlab.record import RunRecord
from kdlab.run import train

# tests/test_ensemble.py's tiny ensemble: two 4-8 channel CNN members, trained one epoch each
TINY_CNN = ("teacher.nets.cnn_small.channels=[4,8]", "teacher.nets.cnn_small.hidden=16")
MEMBER = (
    "{model: ${teacher.nets.cnn_small}, recipe: train_teacher_cnn, seed: %d, overrides: ['trainer.max_epochs=1'], "
    "ckpt_path: null}"
)
REPO = Path(__file__).resolve().parents[2]
TWO_MEMBERS = f"teacher.members=[{MEMBER % 0},{MEMBER % 1}]"
EXPORT = ("--quick", "--threads", "1")


def script(name: str):
    """`main` of scripts/<name>.py, run in this process (a subprocess would pay the imports again)."""
    spec = importlib.util.spec_from_file_location(f"{name}_script", REPO / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main


def evaluated(folder: Path, capsys) -> tuple[str, dict]:
    assert script("evaluate")([str(folder)]) == 0
    return capsys.readouterr().out, RunRecord.read(folder).analysis


def exported(folder: Path, *args: str) -> dict:
    assert script("export")([str(folder), *EXPORT, *args]) == 0
    return json.loads((folder / "deploy.json").read_text())


def carded(folder: Path) -> dict:
    """The figures in the front matter of the run's model card (export/README.md)."""
    text = (folder / "export" / "README.md").read_text()
    return yaml.safe_load(text.removeprefix("---\n").split("\n---\n", 1)[0])["kdlab"]


def test_an_ensemble_run_evaluates_and_exports(make_cfg, capsys):
    record, _ = train(make_cfg("experiment=distill_ensemble_mlp", *TINY_CNN, TWO_MEMBERS))
    folder, metrics, trained = Path(record.output_dir), record.metrics, record.analysis
    assert record.status == "ok" and len(record.members) == 2 and record.teacher is None

    out, analysis = evaluated(folder, capsys)
    assert "ensemble of 2 (mean_probs at T=1): acc" in out
    # the members combined by teacher.combine at T=1 score what training's test pass measured
    assert analysis["teacher"]["acc"] == pytest.approx(metrics["test/teacher_acc"], abs=1e-6)
    assert [m["acc"] for m in analysis["members"]] == pytest.approx(
        [metrics["test/member0_acc"], metrics["test/member1_acc"]], abs=1e-6
    )
    assert analysis["student"]["acc"] == pytest.approx(metrics["test/acc"], abs=1e-6)
    assert analysis["disagreements"] == trained["disagreements"]
    assert analysis["teacher"]["ece"] == pytest.approx(trained["teacher"]["ece"], abs=1e-5)

    report = exported(folder)
    assert [n["role"] for n in report["nets"]] == ["member0", "member1", "student"]
    assert all(p["passed"] for p in report["parity"]) and len(report["parity"]) == 6
    accuracy = {n["role"]: n["accuracy"] for n in report["nets"]}
    assert accuracy["member1"] == pytest.approx(metrics["test/member1_acc"], abs=1e-6)
    assert report["ensemble"]["members"] == ["member0", "member1"]
    assert report["ensemble"]["accuracy"] == pytest.approx(metrics["test/teacher_acc"], abs=1e-6)
    for i, member in enumerate(record.members):
        runner = open_export(export_path(folder / "export", f"member{i}", "onnx"), "onnx", threads=1)
        manifest = read_manifest(runner)
        assert (manifest["mean"], manifest["std"]) == (member.data["mean"], member.data["std"])
        assert manifest["net"] == "kdlab.models.SmallCNN"
    assert "Student vs the ensemble of 2 (mean_probs at T=1)" in (folder / "deploy.md").read_text()

    card = carded(folder)  # the model card lists each member, as the record names it
    assert [(t["role"], t["recipe"], t["seed"], t["sha256"]) for t in card["teachers"]] == [
        (f"member{i}", m.recipe, m.seed, m.sha256) for i, m in enumerate(record.members)
    ]
    assert [t["accuracy"] for t in card["teachers"]] == pytest.approx(
        [metrics["test/member0_acc"], metrics["test/member1_acc"]], abs=1e-6
    )
    assert card["ensemble"]["combine"]["mode"] == "mean_probs"
    assert card["ensemble"]["accuracy"] == pytest.approx(metrics["test/teacher_acc"], abs=1e-6)
    assert card["agreement"] == analysis["agreement"] and card["params"] == record.params


def test_a_teacher_trained_on_another_normalisation_keeps_it(make_cfg, capsys):
    """The teacher's run normalised MNIST with mean 0.5, std 0.25; the student's with MNIST's own statistics."""
    teacher, _ = train(make_cfg("experiment=train_teacher_mlp", "model.hidden=[16]", "data.mean=[0.5]",
                                "data.std=[0.25]"))  # fmt: skip
    weights = Path(teacher.output_dir) / teacher.files["weights"]
    record, _ = train(make_cfg("experiment=distill_mlp", f"teacher.ckpt_path={weights}", "teacher.model.hidden=[16]"))
    folder, metrics = Path(record.output_dir), record.metrics
    assert (record.data["mean"], record.teacher.data["mean"]) == ([0.1307], [0.5])

    _, analysis = evaluated(folder, capsys)
    assert analysis["teacher"]["acc"] == pytest.approx(metrics["test/teacher_acc"], abs=1e-6)
    assert analysis["student"]["acc"] == pytest.approx(metrics["test/acc"], abs=1e-6)

    report = exported(folder, "--formats", "onnx")
    nets = {n["role"]: n for n in report["nets"]}
    assert nets["teacher"]["normalization"] == {"mean": [0.5], "std": [0.25]}
    assert nets["student"]["normalization"] == {"mean": [0.1307], "std": [0.3081]}
    assert nets["teacher"]["accuracy"] == pytest.approx(metrics["test/teacher_acc"], abs=1e-6)
    runner = open_export(export_path(folder / "export", "teacher", "onnx"), "onnx", threads=1)
    assert (read_manifest(runner)["mean"], read_manifest(runner)["std"]) == ([0.5], [0.25])
    x = torch.randint(0, 256, (5, 1, 28, 28), dtype=torch.uint8)
    net = load_weights(build_net(record.teacher.model, (1, 28, 28), 10), record.teacher.checkpoint).eval()
    with torch.inference_mode():  # the file is the trained teacher behind the normalisation it learnt
        expected = net(normalize(x, 0.5, 0.25))
    assert torch.allclose(runner.logits(x), expected, atol=1e-4)

    card = carded(folder)  # the model card: the record's figures and config.yaml's recipe
    assert card["test"]["accuracy"] == pytest.approx(metrics["test/acc"], abs=1e-6)
    assert (
        card["test"]["accuracy"] == analysis["student"]["acc"] and card["ece"]["student"] == analysis["student"]["ece"]
    )
    assert card["agreement"] == analysis["agreement"] and card["params"] == record.params
    (teacher,) = card["teachers"]
    assert (teacher["sha256"], teacher["normalization"]) == (record.teacher.sha256, {"mean": [0.5], "std": [0.25]})
    body = (folder / "export" / "README.md").read_text()
    assert "| loss `kd` | KD(weight=0.9, temperature=4.0) |" in body and "| loss `ce` | CE(weight=0.1," in body
    assert "| epochs | 1 run (trainer.max_epochs 1)" in body
