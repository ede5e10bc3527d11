"""Exported files: raw uint8 in, logits out, any batch, each net's own normalisation inside; bad files refused."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from deploy_runs import MEAN, STD, TEACHER_MEAN, TEACHER_STD, perturb_export
from deploy_runs import STUDENT as STUDENT_CFG
from omegaconf import OmegaConf

from kdlab.data import DataSpec, normalize
from kdlab.deploy.bundle import load_bundle
from kdlab.deploy.export import (
    EXAMPLE_BATCH,
    ExportError,
    export_path,
    open_export,
    probe_batch,
    read_manifest,
    verify_export,
    write_export,
)
from kdlab.deploy.parity import parity_limit
from kdlab.models import MLP, net_config
from kdlab.record import RunRecord
from kdlab.runfolder import FolderNet, RawPixelClassifier, RunFolderError, build_kdlab_net

pytestmark = pytest.mark.unit

FORMATS = ["torchscript", "onnx"]
REPO = Path(__file__).resolve().parents[2]
MNIST = DataSpec("mnist", (1, 28, 28), [str(i) for i in range(10)], [MEAN], [STD])
RGB = DataSpec("cifar10", (3, 32, 32), [str(i) for i in range(10)], [0.49, 0.48, 0.45], [0.25, 0.24, 0.26])


def raw_batch(n: int, seed: int = 3, shape=(1, 28, 28)) -> torch.Tensor:
    return torch.randint(0, 256, (n, *shape), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("spec", [MNIST, RGB], ids=["grey", "rgb"])
def test_raw_pixel_classifier_is_net_of_normalize(spec: DataSpec):
    net = MLP(spec.input_shape, 10, hidden=(8,)).eval()
    x = raw_batch(5, shape=spec.input_shape)
    with torch.inference_mode():
        folded = RawPixelClassifier(net, spec)(x)
        assert torch.equal(folded, net(normalize(x, spec.mean, spec.std)))  # bit for bit: the same ops, per channel
        # another normalisation gives other logits, by far more than parity lets through
        assert (folded - net(normalize(x, 0.5, 0.25))).abs().max() > 100 * parity_limit(folded)


def test_bundle_reads_each_net_with_its_own_normalisation(distill_run: Path, nets):
    bundle = load_bundle(distill_run)
    assert [n.role for n in bundle.nets] == ["teacher", "student"]
    student, teacher = bundle.net("student"), bundle.net("teacher")
    assert (student.spec.mean, student.spec.std) == ((MEAN,), (STD,))  # the run's data
    assert (teacher.spec.mean, teacher.spec.std) == ((TEACHER_MEAN,), (TEACHER_STD,))  # the data it was trained on
    assert torch.equal(student.model.net.head.weight, nets.student["head.weight"])
    assert bundle.test.x.dtype == torch.uint8 and bundle.test.x.shape == (400, 1, 28, 28)
    assert bundle.notes == []


@pytest.mark.parametrize("fmt", FORMATS)
def test_the_exported_teacher_carries_its_own_normalisation(shipped_run: Path, fmt: str):
    """The teacher learnt TEACHER_MEAN/STD, the student's data is MEAN/STD: each file holds its own net's."""
    runner = open_export(export_path(shipped_run / "export", "teacher", fmt), fmt, threads=1)
    assert {k: read_manifest(runner)[k] for k in ("mean", "std")} == {"mean": [TEACHER_MEAN], "std": [TEACHER_STD]}
    net = load_bundle(shipped_run).net("teacher").model.net
    x = raw_batch(7)
    with torch.inference_mode():
        own = net(normalize(x, TEACHER_MEAN, TEACHER_STD))
        assert (net(normalize(x, MEAN, STD)) - own).abs().max() > 100 * parity_limit(own)  # the run's is wrong
    assert (runner.logits(x) - own).abs().max() <= parity_limit(own)
    report = json.loads((shipped_run / "deploy.json").read_text())
    assert [n["normalization"] for n in report["nets"]] == [
        {"mean": [TEACHER_MEAN], "std": [TEACHER_STD]},
        {"mean": [MEAN], "std": [STD]},
    ]


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("batch", [7, 1])
def test_export_takes_uint8_any_batch_and_folds_normalisation(shipped_run: Path, fmt: str, batch: int):
    """Exported at batch 2 (EXAMPLE_BATCH), run at 7 and 1: equal to net(normalize(x)) within the limit."""
    assert EXAMPLE_BATCH == 2
    net = load_bundle(shipped_run).net("student").model.net
    x = raw_batch(batch)
    with torch.inference_mode():
        expected = net(normalize(x, MEAN, STD))
    logits = open_export(export_path(shipped_run / "export", "student", fmt), fmt, threads=1).logits(x)
    assert logits.shape == (batch, 10) and logits.dtype == torch.float32
    assert (logits - expected).abs().max() <= parity_limit(expected)
    assert torch.equal(logits.argmax(1), expected.argmax(1))


def test_onnx_graph_declares_uint8_pixels_and_a_symbolic_batch(shipped_run: Path):
    runner = open_export(shipped_run / "export" / "student.onnx", "onnx", threads=1)
    (pixels,) = runner.session.get_inputs()
    assert (pixels.name, pixels.type) == ("pixels", "tensor(uint8)")
    assert isinstance(pixels.shape[0], str) and pixels.shape[1:] == [1, 28, 28]
    with pytest.raises(Exception, match="(?i)type"):  # normalised floats are not accepted
        runner.session.run(None, {"pixels": raw_batch(2).float().numpy()})


@pytest.mark.heavy
@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("spec", [MNIST, RGB], ids=["grey", "rgb"])
def test_the_cnn_exports_too(tmp_path: Path, fmt: str, spec: DataSpec):
    """conf/model/cnn_small.yaml: convolutions, batch norm (its running statistics) and max-pool survive,
    on one channel and on three (a per-channel normalisation, another input shape)."""
    cfg = net_config(OmegaConf.to_container(OmegaConf.load(REPO / "conf" / "model" / "cnn_small.yaml")),
                     spec.input_shape, spec.num_classes)  # fmt: skip
    net = build_kdlab_net(cfg, "cnn_small.yaml")
    torch.manual_seed(0)
    for module in net.modules():
        if isinstance(module, torch.nn.BatchNorm2d):  # not the identity statistics of a fresh layer
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
    model = RawPixelClassifier(net, spec).eval()
    deploy_net = FolderNet("teacher", net, cfg, tmp_path / "teacher.pt", spec)
    runner = verify_export(write_export(deploy_net, fmt, export_path(tmp_path, "teacher", fmt)), fmt, deploy_net)
    assert read_manifest(runner)["input"] == f"uint8[N,{','.join(map(str, spec.input_shape))}] raw pixels 0..255"
    x = raw_batch(3, shape=spec.input_shape)
    with torch.inference_mode():
        expected = model(x)
    assert (runner.logits(x) - expected).abs().max() <= parity_limit(expected)


@pytest.mark.parametrize("fmt", FORMATS)
def test_verify_accepts_the_genuine_export(shipped_run: Path, fmt: str):
    net = load_bundle(shipped_run).net("student")
    runner = verify_export(export_path(shipped_run / "export", "student", fmt), fmt, net)
    assert runner.logits(probe_batch((1, 28, 28))).shape == (7, 10)


@pytest.mark.parametrize("fmt", FORMATS)
def test_verify_refuses_a_truncated_file(shipped_run: Path, tmp_path: Path, fmt: str):
    src = export_path(shipped_run / "export", "student", fmt)
    bad = tmp_path / src.name
    bad.write_bytes(src.read_bytes()[: src.stat().st_size // 2])
    with pytest.raises(ExportError, match="corrupt or truncated"):
        verify_export(bad, fmt, load_bundle(shipped_run).net("student"))


@pytest.mark.parametrize("fmt", FORMATS)
def test_verify_refuses_another_nets_export(shipped_run: Path, tmp_path: Path, fmt: str):
    """The teacher's file under the student's name: it loads and runs, but it is not the student."""
    swapped = tmp_path / export_path(Path(), "student", fmt).name
    shutil.copyfile(export_path(shipped_run / "export", "teacher", fmt), swapped)
    with pytest.raises(ExportError, match="exported from another net"):
        verify_export(swapped, fmt, load_bundle(shipped_run).net("student"))


@pytest.mark.filterwarnings("ignore:.*torch.jit.* is deprecated:DeprecationWarning")
@pytest.mark.parametrize("fmt", FORMATS)
def test_verify_refuses_a_file_altered_after_export(shipped_run: Path, tmp_path: Path, fmt: str):
    src = export_path(shipped_run / "export", "student", fmt)
    altered = tmp_path / src.name
    perturb_export(src, altered, fmt)
    with pytest.raises(ExportError, match="does not reproduce its logits") as err:
        verify_export(altered, fmt, load_bundle(shipped_run).net("student"))
    assert "max |logit diff| 0.5" in str(err.value)


@pytest.mark.filterwarnings("ignore:.*torch.jit.* is deprecated:DeprecationWarning")
def test_verify_refuses_a_file_without_manifest(shipped_run: Path, tmp_path: Path):
    bundle = load_bundle(shipped_run)
    plain = tmp_path / "student.torchscript.pt"
    torch.jit.script(bundle.net("student").model).save(str(plain))
    with pytest.raises(ExportError, match="no kdlab manifest"):
        verify_export(plain, "torchscript", bundle.net("student"))


def test_nested_targets_in_a_model_yaml_are_not_called(tmp_path: Path):
    cfg = {
        **net_config(STUDENT_CFG, (1, 28, 28), 10),
        "activation": {"_target_": "os.makedirs", "name": str(tmp_path / "pwned")},
    }
    with pytest.raises(RunFolderError, match="cannot build kdlab.models.MLP"):  # handed to MLP as data, not called
        build_kdlab_net(cfg, "student_model.yaml")
    assert not (tmp_path / "pwned").exists()


def test_bundle_refuses_a_model_yaml_that_is_not_a_kdlab_net(distill_run: Path):
    OmegaConf.save(
        OmegaConf.create({"_target_": "os.system", "command": "echo pwned"}), distill_run / "student_model.yaml"
    )
    with pytest.raises(RunFolderError, match="kdlab rebuilds its own nets only"):
        load_bundle(distill_run)


def test_bundle_refuses_a_failed_run(distill_run: Path):
    record = RunRecord.read(distill_run)
    record.status, record.message = "diverged", "loss became NaN at step 12"
    record.write(distill_run)
    with pytest.raises(RunFolderError, match="status 'diverged' \\(loss became NaN"):
        load_bundle(distill_run)


def test_a_changed_teacher_is_left_out_with_a_note(distill_run: Path):
    teacher_file = Path(RunRecord.read(distill_run).teacher.checkpoint)
    from safetensors.torch import load_file, save_file

    state = load_file(str(teacher_file))
    state["head.bias"] = state["head.bias"] + 1.0
    save_file(state, str(teacher_file))
    bundle = load_bundle(distill_run)
    assert [n.role for n in bundle.nets] == ["student"]
    assert "changed since the run" in bundle.notes[0]
