"""The student as safetensors and the model card (export/README.md): every figure the record's, or counted again."""

from __future__ import annotations

import json
import math
import shutil
import statistics
from pathlib import Path

import pytest
import torch
import yaml
from deploy_runs import MEAN, STD, data_config, write_distill_run, write_run, write_teacher_cache
from hydra.utils import instantiate
from omegaconf import OmegaConf
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from kdlab.data import normalize
from kdlab.deploy import export_run, main
from kdlab.deploy.speed import QUICK
from kdlab.record import RunRecord

unit = pytest.mark.unit


def front_matter(card: Path) -> tuple[dict, str]:
    """(the YAML block between the two `---` lines, the Markdown after it), as a hub reads a README."""
    text = card.read_text()
    assert text.startswith("---\n")
    head, body = text[4:].split("\n---\n", 1)
    return yaml.safe_load(head), body


def read_test_split(run: Path) -> tuple[torch.Tensor, torch.Tensor]:
    dm = instantiate(OmegaConf.load(run / "config.yaml").data, _convert_="all")
    dm.prepare_data()
    dm.setup("test")
    return dm.data_test.x, dm.data_test.y


def net_from_yaml(path: Path) -> torch.nn.Module:
    return instantiate(OmegaConf.load(path)).eval()


def wilson(k: int, n: int) -> tuple[float, float]:
    """Wilson's score interval, solved from |p - p_hat| = z sqrt(p (1 - p) / n) as a quadratic in p."""
    z = statistics.NormalDist().inv_cdf(0.975)
    a, b, c = 1 + z * z / n, -(2 * k / n + z * z / n), (k / n) ** 2
    root = math.sqrt(b * b - 4 * a * c)
    return (-b - root) / (2 * a), (-b + root) / (2 * a)


@unit
@pytest.mark.parametrize("k, n", [(0, 10), (3, 10), (140, 360), (9_871, 10_000), (400, 400)])
def test_wilson_interval(k: int, n: int):
    from kdlab.deploy.card_figures import wilson_interval

    low, high = wilson_interval(k, n)
    assert (low, high) == (pytest.approx(wilson(k, n)[0], abs=1e-12), pytest.approx(wilson(k, n)[1], abs=1e-12))
    assert 0 <= low <= k / n <= high <= 1 and (low == 0) == (k == 0) and (high == 1) == (k == n)


@pytest.fixture(scope="module")
def carded_run(tmp_path_factory: pytest.TempPathFactory, nets, mnist_dir: Path) -> Path:
    """A distillation run whose record holds what training writes (test metrics, params, analysis), exported."""
    from kdlab.analysis.evaluate import evaluate_run

    root = tmp_path_factory.mktemp("carded")
    teacher = write_teacher_cache(root / "teachers" / "abc123", nets, mnist_dir)
    run = write_distill_run(root / "run", nets, mnist_dir, teacher / "teacher.safetensors")
    record = evaluate_run(run)  # the record's analysis: accuracy, ECE and agreement of the saved nets
    analysis = record.analysis
    as_logged = lambda x: float(torch.tensor(x, dtype=torch.float32))  # noqa: E731  (Lightning logs float32)
    record.metrics = {"test/acc": as_logged(analysis["student"]["acc"]),
                      "test/teacher_acc": as_logged(analysis["teacher"]["acc"]),
                      "test/agreement": as_logged(analysis["agreement"])}  # fmt: skip
    record.params = {role: sum(t.numel() for t in getattr(nets, role).values()) for role in ("student", "teacher")}
    record.overrides = ["experiment=distill_mlp", "distill.losses.kd.temperature=2"]
    record.identity = {"data": dict(record.data["fingerprint"]), "run": "0123456789abcdef"}
    record.write(run)
    cfg = OmegaConf.load(run / "config.yaml")  # the recipe as a run's config.yaml has it: T=2 for kd, 4 elsewhere
    cfg.distill = {"temperature": 4.0, "losses": {"ce": {"_target_": "kdlab.losses.CE", "weight": 0.1},
                                                  "kd": {"_target_": "kdlab.losses.KD", "weight": 0.9,
                                                         "temperature": 2.0}}}  # fmt: skip
    cfg.optimizer = {"_target_": "torch.optim.AdamW", "_partial_": True, "lr": 0.003}
    cfg.scheduler = None
    OmegaConf.save(cfg, run / "config.yaml")
    export_run(run, settings=QUICK, threads=(1,))
    return run


@pytest.mark.heavy
@unit
def test_the_safetensors_file_loads_into_the_net_from_the_model_yaml(shipped_run: Path):
    export = shipped_run / "export"
    x, _ = read_test_split(shipped_run)
    pixels = normalize(x, MEAN, STD)
    reference = net_from_yaml(shipped_run / "student_model.yaml")
    reference.load_state_dict(torch.load(shipped_run / "student.pt", weights_only=True))
    for config in (shipped_run / "student_model.yaml", export / "student.yaml"):  # the run's YAML and the export's
        net = net_from_yaml(config)
        net.load_state_dict(load_file(export / "student.safetensors"))
        with torch.inference_mode():
            assert torch.equal(net(pixels), reference(pixels))
    with safe_open(str(export / "student.safetensors"), framework="pt") as f:
        header = f.metadata()
    assert header["format"] == "pt"
    assert json.loads(header["kdlab.model"]) == OmegaConf.to_container(
        OmegaConf.load(shipped_run / "student_model.yaml")
    )
    assert (json.loads(header["kdlab.data"])["mean"], json.loads(header["kdlab.data"])["std"]) == ([MEAN], [STD])
    from kdlab.deploy import load_safetensors

    model = load_safetensors(export / "student.safetensors")  # the file alone: raw uint8 in, normalisation inside
    with torch.inference_mode():
        assert torch.equal(model(x), reference(pixels))


def test_the_card_states_the_record_s_figures(carded_run: Path):
    record = RunRecord.read(carded_run)
    meta, body = front_matter(carded_run / "export" / "README.md")
    figures, analysis = meta["kdlab"], record.analysis

    x, y = read_test_split(carded_run)  # count the student's correct answers by hand
    net = net_from_yaml(carded_run / "student_model.yaml")
    net.load_state_dict(torch.load(carded_run / "student.pt", weights_only=True))
    with torch.inference_mode():
        correct = int((net(normalize(x, MEAN, STD)).argmax(1) == y).sum())
    test = figures["test"]
    assert (test["correct"], test["images"]) == (correct, len(y)) == (correct, analysis["n_test"])
    assert test["accuracy"] == correct / len(y) == analysis["student"]["acc"]
    assert test["accuracy"] == pytest.approx(record.metrics["test/acc"], abs=1e-6)
    low, high = wilson(correct, len(y))
    assert test["interval"]["method"] == "wilson" and test["interval"]["level"] == 0.95
    assert (test["interval"]["low"], test["interval"]["high"]) == (pytest.approx(low, abs=1e-12),
                                                                   pytest.approx(high, abs=1e-12))  # fmt: skip
    assert test["interval"]["low"] < test["accuracy"] <= test["interval"]["high"]
    assert figures["agreement"] == analysis["agreement"]
    assert figures["ece"]["student"] == analysis["student"]["ece"]
    assert figures["ece"]["teacher"] == analysis["teacher"]["ece"]
    assert figures["params"] == record.params
    (teacher,) = figures["teachers"]
    assert (teacher["sha256"], teacher["seed"], teacher["net"]) == (record.teacher.sha256, None, "kdlab.models.MLP")
    assert teacher["accuracy"] == pytest.approx(record.metrics["test/teacher_acc"], abs=1e-6)
    rows = json.loads((carded_run / "deploy.json").read_text())["speed"]["rows"]
    assert [(r["runtime"], r["latency_median_us"]) for r in figures["latency"]] == [
        (r["runtime"], r["latency_median_us"]) for r in rows if r["role"] == "student"
    ]

    # what a hub reads: model-index with the test accuracy on the run's dataset
    assert meta["library_name"] == "kdlab" and meta["datasets"] == ["mnist"] and meta["metrics"] == ["accuracy"]
    assert "knowledge-distillation" in meta["tags"]
    (result,) = meta["model-index"][0]["results"]
    assert result["dataset"]["split"] == "test"
    assert result["metrics"] == [{"type": "accuracy", "value": test["accuracy"], "name": "Test accuracy"}]

    # and what a person reads
    assert f"{100 * correct / len(y):.2f}% ({correct} of {len(y)})" in body
    assert f"[{100 * low:.2f}%, {100 * high:.2f}%]" in body and "95% Wilson score interval" in body
    assert f"| agreement with the teacher (same top-1) | {100 * analysis['agreement']:.2f}% |" in body
    assert f"| calibration: ECE ({analysis['n_bins']} bins) | {analysis['student']['ece']:.4f} |" in body
    assert "| loss `kd` | KD(weight=0.9, temperature=2.0) |" in body  # the T that term ran at
    assert "| distill.temperature | 4.0 |" in body and "| scheduler | none |" in body
    assert "| optimizer | AdamW(lr=0.003) |" in body
    assert "`python train.py experiment=distill_mlp distill.losses.kd.temperature=2`" in body
    for part, digest in record.data["fingerprint"].items():
        assert f"| {part} | `{digest}` |" in body
    assert "names the same digests" in body
    assert "Warning" not in body
    assert "| student | onnxruntime | 1 |" in body
    assert 'session.run(None, {"pixels": pixels})' in body


@pytest.mark.heavy
@unit
def test_a_scratch_run_s_card_says_there_is_no_teacher(tmp_path: Path, nets, mnist_dir: Path, capsys):
    data = data_config("mnist", mnist_dir, mean=[MEAN], std=[STD])
    run = write_run(tmp_path / "run", nets.student, data, nets.spec, name="student_scratch_mlp")
    assert main([str(run), "--formats", "torchscript", "--no-bench"]) == 0
    assert "model card README.md" in capsys.readouterr().out
    meta, body = front_matter(run / "export" / "README.md")
    assert meta["kdlab"]["kind"] == "supervised" and meta["kdlab"]["teachers"] == []
    assert meta["kdlab"]["agreement"] is None and meta["kdlab"]["ensemble"] is None
    assert "knowledge-distillation" not in meta["tags"] and "onnx" not in meta["tags"]
    assert "## Teacher\n\nNone: a supervised run, trained from scratch on the labels with no teacher." in body
    assert "agreement" not in body.split("## Results")[1].split("\n\n")[1]  # no agreement row
    assert "Not measured (exported with --no-bench)." in body
    assert "Calibration and agreement are not in the run record: run `python scripts/evaluate.py" in body
    assert "| optimizer | not in config.yaml |" in body  # not recorded: said so, not guessed
    assert sorted(p.name for p in (run / "export").iterdir()) == [
        "README.md", "model.safetensors", "model.torchscript.pt", "model.yaml"]  # fmt: skip


@pytest.mark.heavy
@unit
def test_the_card_warns_when_the_record_disagrees_with_the_export(shipped_run: Path, tmp_path: Path):
    run = Path(shutil.copytree(shipped_run, tmp_path / "run"))
    record = RunRecord.read(run)
    record.status, record.message = "interrupted", "SIGTERM at epoch 3"
    record.metrics["test/acc"] = 0.5  # not what the weights score now
    record.write(run)
    export_run(run, formats=("torchscript",), bench=False)
    meta, body = front_matter(run / "export" / "README.md")
    measured = meta["kdlab"]["test"]["accuracy"]
    assert measured != 0.5 and meta["kdlab"]["test"]["recorded_accuracy"] == 0.5
    assert "> **Warning:** This run's status is 'interrupted': SIGTERM at epoch 3" in body
    assert f"recorded test/acc 50.00%, but the shipped weights score {100 * measured:.2f}%" in body


@pytest.mark.heavy
@unit
def test_check_refuses_a_safetensors_file_of_other_weights(shipped_run: Path, tmp_path: Path, capsys):
    run = Path(shutil.copytree(shipped_run, tmp_path / "run"))
    path = run / "export" / "student.safetensors"
    with safe_open(str(path), framework="pt") as f:
        header, tensors = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
    tensors["head.bias"] = tensors["head.bias"] + 0.5  # metadata kept: only the tensors tell
    save_file(tensors, str(path), metadata=header)
    assert main([str(run), "--check", "--no-bench"]) == 1
    err = capsys.readouterr().err
    assert "student.safetensors is not this run's student: tensor(s) head.bias differ" in err

    path.write_bytes(path.read_bytes()[:100])
    assert main([str(run), "--check", "--no-bench"]) == 1
    assert "cannot be read as safetensors" in capsys.readouterr().err
