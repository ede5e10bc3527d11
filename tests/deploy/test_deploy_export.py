"""Exported files: raw uint8 in, logits out, any batch, normalisation inside; bad files refused."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from deploy_runs import MEAN, STD, perturb_export
from deploy_runs import STUDENT as STUDENT_CFG
from omegaconf import OmegaConf

from kdlab.data import normalize
from kdlab.deploy import ExportError, RawPixelClassifier, load_bundle, open_export, verify_export
from kdlab.deploy.bundle import BundleError, DeployNet, build_net
from kdlab.deploy.export import EXAMPLE_BATCH, export_path, probe_batch, write_export
from kdlab.deploy.parity import parity_limit
from kdlab.models import MLP
from kdlab.record import RunRecord

FORMATS = ["torchscript", "onnx"]
REPO = Path(__file__).resolve().parents[2]


def raw_batch(n: int, seed: int = 3) -> torch.Tensor:
    return torch.randint(0, 256, (n, 1, 28, 28), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))


def test_raw_pixel_classifier_is_net_of_normalize():
    net = MLP(hidden=(8,)).eval()
    x = raw_batch(5)
    with torch.inference_mode():
        folded = RawPixelClassifier(net, MEAN, STD)(x)
        assert torch.equal(folded, net(normalize(x, MEAN, STD)))  # bit for bit: the same ops
        # MNIST's own constants give other logits, by far more than parity lets through
        assert (folded - net(normalize(x))).abs().max() > 100 * parity_limit(folded)


def test_bundle_reads_both_nets_with_the_runs_normalisation(distill_run: Path, tiny_nets):
    bundle = load_bundle(distill_run)
    assert [n.role for n in bundle.nets] == ["teacher", "student"]
    assert (bundle.mean, bundle.std) == (MEAN, STD)
    student = bundle.net("student").model
    assert (student.mean, student.std) == (MEAN, STD)
    assert torch.equal(student.net.head.weight, tiny_nets.student["head.weight"])
    assert bundle.test.images.dtype == torch.uint8 and bundle.test.images.shape == (400, 1, 28, 28)
    assert bundle.notes == []


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


@pytest.mark.parametrize("fmt", FORMATS)
def test_the_cnn_teacher_exports_too(tmp_path: Path, fmt: str):
    """conf/model/cnn_small.yaml: convolutions, batch norm (its running statistics) and max-pool survive."""
    cfg = OmegaConf.load(REPO / "conf" / "model" / "cnn_small.yaml")
    net = build_net(cfg, "cnn_small.yaml")
    torch.manual_seed(0)
    for module in net.modules():
        if isinstance(module, torch.nn.BatchNorm2d):  # not the identity statistics of a fresh layer
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
    model = RawPixelClassifier(net, MEAN, STD).eval()
    deploy_net = DeployNet("teacher", model, tmp_path / "teacher.pt", OmegaConf.to_container(cfg))
    runner = verify_export(write_export(deploy_net, fmt, export_path(tmp_path, "teacher", fmt)), fmt, deploy_net)
    x = raw_batch(3)
    with torch.inference_mode():
        expected = model(x)
    assert (runner.logits(x) - expected).abs().max() <= parity_limit(expected)


@pytest.mark.parametrize("fmt", FORMATS)
def test_verify_accepts_the_genuine_export(shipped_run: Path, fmt: str):
    net = load_bundle(shipped_run).net("student")
    runner = verify_export(export_path(shipped_run / "export", "student", fmt), fmt, net)
    assert runner.logits(probe_batch()).shape == (7, 10)


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
    cfg = {**STUDENT_CFG, "activation": {"_target_": "os.makedirs", "name": str(tmp_path / "pwned")}}
    with pytest.raises(BundleError, match="cannot build kdlab.models.MLP"):  # handed to MLP as data, not called
        build_net(cfg, "student_model.yaml")
    assert not (tmp_path / "pwned").exists()


def test_bundle_refuses_a_model_yaml_that_is_not_a_kdlab_net(distill_run: Path):
    OmegaConf.save(
        OmegaConf.create({"_target_": "os.system", "command": "echo pwned"}), distill_run / "student_model.yaml"
    )
    with pytest.raises(BundleError, match="kdlab's own nets only"):
        load_bundle(distill_run)


def test_bundle_refuses_a_failed_run(distill_run: Path):
    record = RunRecord.read(distill_run)
    record.status, record.message = "diverged", "loss became NaN at step 12"
    record.write(distill_run)
    with pytest.raises(BundleError, match="status 'diverged' \\(loss became NaN"):
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
