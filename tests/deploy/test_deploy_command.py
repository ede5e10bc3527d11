"""`scripts/export.py`: the report with every row, exit codes, refusals, missing optional packages."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest
from deploy_runs import (
    STUDENT,
    TEACHER,
    TEACHER_MEAN,
    TEACHER_STD,
    data_config,
    datamodule,
    perturb_export,
    teacher_ref,
    train_tiny,
    write_run,
)
from omegaconf import OmegaConf
from safetensors.torch import save_file

from kdlab.deploy import main
from kdlab.deploy.runtimes import INSTALL_HINT
from kdlab.deploy.speed import available_threads

pytestmark = pytest.mark.unit

ROLES_RUNTIMES = [(role, rt) for role in ("teacher", "student") for rt in ("eager", "torchscript", "onnxruntime")]


def copy_run(shipped_run: Path, tmp_path: Path) -> Path:
    """A private copy of the exported run (its teacher checkpoint path is absolute, so it still resolves)."""
    return Path(shutil.copytree(shipped_run, tmp_path / "run"))


def test_report_has_every_row(shipped_run: Path):
    report = json.loads((shipped_run / "deploy.json").read_text())
    assert report["status"] == "ok" and report["formats"] == ["torchscript", "onnx"]
    assert [n["role"] for n in report["nets"]] == ["teacher", "student"]
    assert [(p["role"], p["format"], p["passed"], p["images"]) for p in report["parity"]] == [
        (role, fmt, True, 400) for role in ("teacher", "student") for fmt in ("torchscript", "onnx")
    ]
    threads = sorted({1, available_threads()})
    rows = {(r["role"], r["runtime"], r["threads"]) for r in report["speed"]["rows"]}
    assert rows == {(role, rt, n) for role, rt in ROLES_RUNTIMES for n in threads}
    for r in report["speed"]["rows"]:
        assert 0 < r["latency_median_us"] <= r["latency_p95_us"] and r["throughput_ips"] > 0
    for n in report["nets"]:  # weights, TorchScript and ONNX files (the student's also as safetensors), at their sizes
        shipped = ["config", "safetensors"] if n["role"] == "student" else []
        assert sorted(n["files"]) == sorted(["onnx", "torchscript", "weights", *shipped])
        assert all(Path(f["path"]).stat().st_size == f["bytes"] for f in n["files"].values())
    # 2 x (784 x 32 + 32 x 16 + 16 x 10) = 51,520 FLOPs for the teacher, 2 x (784 x 8 + 8 x 10) for the student
    assert [n["flops_per_image"] for n in report["nets"]] == [51_520, 12_704]

    md = (shipped_run / "deploy.md").read_text()
    for role, rt in ROLES_RUNTIMES:
        for n in threads:
            assert f"| {role} | {rt} | {n} |" in md
    assert "Student vs teacher: 0.25x the parameters" in md
    assert sorted(p.name for p in (shipped_run / "export").iterdir()) == [
        "README.md",
        "student.onnx",
        "student.safetensors",
        "student.torchscript.pt",
        "student.yaml",
        "teacher.onnx",
        "teacher.torchscript.pt",
    ]  # and no .partial file left behind


@pytest.mark.heavy
def test_a_cached_teacher_exports_alone_with_its_own_normalisation(teacher_cache: Path, capsys):
    assert main([str(teacher_cache), "--formats", "torchscript", "--quick", "--threads", "1"]) == 0
    assert "parity model torchscript: ok" in capsys.readouterr().out
    report = json.loads((teacher_cache / "deploy.json").read_text())
    assert [(n["role"], n["normalization"]) for n in report["nets"]] == [
        ("model", {"mean": [TEACHER_MEAN], "std": [TEACHER_STD]})
    ]
    assert [(r["role"], r["runtime"], r["threads"]) for r in report["speed"]["rows"]] == [
        ("model", "eager", 1),
        ("model", "torchscript", 1),
    ]
    assert (teacher_cache / "export" / "model.torchscript.pt").is_file()


@pytest.mark.heavy
def test_forced_parity_failure_exits_1_with_the_numbers(teacher_cache: Path, monkeypatch, capsys):
    """No tolerance at all: onnxruntime's other summation order alone now fails the check."""
    monkeypatch.setattr("kdlab.deploy.parity.TOLERANCE", 0.0)
    assert main([str(teacher_cache), "--formats", "onnx", "--no-bench"]) == 1
    err = capsys.readouterr().err
    assert "parity failed for model onnx" in err
    assert "model onnx: FAILED: max |logit diff|" in err and "(limit 0)" in err
    assert "argmax agreement 100.00% on 400 images" in err
    assert list((teacher_cache / "export").iterdir()) == []  # nothing kept, not even the .partial file
    assert json.loads((teacher_cache / "deploy.json").read_text())["status"] == "parity failed"


@pytest.mark.heavy
def test_check_refuses_a_perturbed_export_with_the_numbers(shipped_run: Path, tmp_path: Path, capsys):
    run = copy_run(shipped_run, tmp_path)
    onnx_file = run / "export" / "student.onnx"
    perturb_export(onnx_file, onnx_file, "onnx", delta=0.5)
    assert main([str(run), "--check", "--no-bench"]) == 1
    err = capsys.readouterr().err
    assert "student onnx: FAILED: max |logit diff| 0.5" in err
    assert onnx_file.is_file()  # --check reports; it never deletes a file it did not write


@pytest.mark.parametrize("name", ["student.torchscript.pt", "teacher.onnx"])
def test_check_refuses_a_truncated_export(shipped_run: Path, tmp_path: Path, capsys, name: str):
    run = copy_run(shipped_run, tmp_path)
    path = run / "export" / name
    path.write_bytes(path.read_bytes()[:1000])
    assert main([str(run), "--check", "--no-bench"]) == 1
    assert "corrupt or truncated" in capsys.readouterr().err


def test_check_accepts_the_genuine_exports(shipped_run: Path, tmp_path: Path, capsys):
    run = copy_run(shipped_run, tmp_path)
    files = [*(run / "export").iterdir(), run / "deploy.json", run / "deploy.md"]
    before = {p: p.read_bytes() for p in files}
    assert main([str(run), "--check", "--no-bench"]) == 0
    assert capsys.readouterr().out.count(": ok: max |logit diff|") == 4
    assert {p: p.read_bytes() for p in files} == before  # --check writes nothing, not even the report


@pytest.mark.heavy
def test_without_onnx_packages_onnx_says_how_to_install_and_torchscript_still_works(
    distill_run: Path, monkeypatch, capsys
):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # `import onnxruntime` now raises ImportError
    assert main([str(distill_run), "--no-bench"]) == 2
    assert INSTALL_HINT in capsys.readouterr().err
    assert not (distill_run / "export").exists()  # refused before any work

    assert main([str(distill_run), "--formats", "torchscript", "--quick", "--threads", "1"]) == 0
    rows = json.loads((distill_run / "deploy.json").read_text())["speed"]["rows"]
    assert {r["runtime"] for r in rows} == {"eager", "torchscript"}


def test_package_imports_without_the_optional_packages(monkeypatch):
    import kdlab

    monkeypatch.setattr(kdlab, "deploy", sys.modules["kdlab.deploy"])  # put back after the fresh import below
    for name in ("onnx", "onnxruntime", "onnxscript"):
        monkeypatch.setitem(sys.modules, name, None)
    for name in [m for m in sys.modules if m.startswith("kdlab.deploy")]:
        monkeypatch.delitem(sys.modules, name)
    import kdlab.deploy  # noqa: F811  (a fresh import, with the packages blocked)

    assert kdlab.deploy.main.__module__ == "kdlab.deploy.command"


def test_a_folder_without_a_record_exits_2(tmp_path: Path, capsys):
    assert main([str(tmp_path), "--no-bench"]) == 2
    assert "No run record" in capsys.readouterr().err


def test_test_files_of_other_data_are_refused(distill_run: Path, tmp_path: Path, capsys):
    """--data-dir at other files: the fingerprint in metrics.json says they are not what the run read."""
    other = Path(shutil.copytree(OmegaConf.load(distill_run / "config.yaml").data.data_dir, tmp_path / "other"))
    labels = other / "t10k-labels-idx1-ubyte"
    labels.write_bytes(labels.read_bytes()[:-1] + bytes([(labels.read_bytes()[-1] + 1) % 10]))
    assert main([str(distill_run), "--no-bench", "--data-dir", str(other)]) == 2
    err = capsys.readouterr().err
    assert "are not the data this run read: t10k-labels-idx1-ubyte differ" in err and "--data-dir" in err


def test_threads_option():
    from kdlab.deploy.command import parse_threads

    assert parse_threads("1,all,1") == tuple(dict.fromkeys((1, available_threads())))
    with pytest.raises(ValueError, match="positive integers or 'all'"):
        parse_threads("0")


@pytest.mark.heavy
def test_a_colour_run_ships_with_its_shape_and_per_channel_normalisation(tmp_path: Path, cifar_dir: Path, capsys):
    """A CIFAR-10 run (generated files): the test set from its own datamodule, no 28x28 anywhere."""
    data = data_config("cifar10", cifar_dir)
    dm = datamodule(data)
    mean, std = list(dm.spec.mean), list(dm.spec.std)
    teacher = tmp_path / "teacher.safetensors"
    save_file(train_tiny(TEACHER, dm, seed=0, mean=mean, std=std, steps=3), str(teacher))
    student = train_tiny(STUDENT, dm, seed=1, mean=mean, std=std, steps=3)
    run = write_run(tmp_path / "run", student, data, dm.spec, [teacher_ref(teacher, dm.spec)], name="distill_cifar10")
    assert main([str(run), "--formats", "torchscript", "--no-bench"]) == 0
    report = json.loads((run / "deploy.json").read_text())
    assert report["test"] == {"images": 60, "source": str(cifar_dir), "data": "cifar10", "input_shape": [3, 32, 32]}
    assert [n["normalization"] for n in report["nets"]] == [{"mean": mean, "std": std}] * 2
    assert [n["flops_per_image"] for n in report["nets"]] == [
        2 * (3072 * 32 + 32 * 16 + 16 * 10),
        2 * (3072 * 8 + 8 * 10),
    ]
    assert "raw uint8 pixels [N, 3, 32, 32]" in (run / "deploy.md").read_text()
