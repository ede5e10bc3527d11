"""The teacher-output cache: exact for every shift, refused when what it depends on changes, live when it must be."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf
from safetensors.torch import load_file, save_file

from kdlab.checkpoints import sha256_file
from kdlab.data import MNISTDataModule, normalize, random_shift, shift_images
from kdlab.models import MLP, SmallCNN
from kdlab.modules import DistillationModule
from kdlab.record import TeacherRef
from kdlab.run import train
from kdlab.teacher_outputs import (
    BuildSettings,
    TeacherOutputs,
    TeacherOutputsError,
    build_settings,
    compute_teacher_outputs,
    planned_images,
    provide_teacher_outputs,
    shift_offsets,
    to_float16_if_harmless,
)

MEAN, STD = 0.1307, 0.3081
TEACHER = {"_target_": "kdlab.models.MLP", "hidden": [64, 32], "dropout": 0.5}  # dropout: eval mode must hold
STUDENT = {"_target_": "kdlab.models.MLP", "hidden": [16]}
ADAM = {"_target_": "torch.optim.Adam", "_partial_": True, "lr": 1e-3}
KD = {
    "ce": {"_target_": "kdlab.losses.CE", "weight": 0.1},
    "kd": {"_target_": "kdlab.losses.KD", "weight": 0.9, "temperature": 4.0},
}
HINT = {"_target_": "kdlab.losses.Hint", "weight": 1.0, "student_layer": "features.0", "teacher_layer": "features.1"}


def random_teacher(seed: int) -> MLP:
    torch.manual_seed(seed)
    return MLP(hidden=(64, 32), dropout=0.5).eval()


def teacher_file(tmp_path: Path, seed: int) -> Path:
    path = tmp_path / f"teacher{seed}.safetensors"
    save_file(random_teacher(seed).state_dict(), str(path))
    return path


def images(n: int = 40) -> torch.Tensor:
    return torch.randint(0, 256, (n, 1, 28, 28), dtype=torch.uint8, generator=torch.Generator().manual_seed(3))


def test_cached_logits_equal_live_ones_for_every_shift():
    teacher, x = random_teacher(0), images()
    outputs = compute_teacher_outputs(teacher, x, 2, MEAN, STD, settings=BuildSettings(16, channels_last=False))
    assert outputs.logits.shape == (40, 25, 10)
    index = torch.arange(40)
    with torch.no_grad():
        for dy, dx in shift_offsets(2).tolist():
            shift = torch.tensor([[dy, dx]]).expand(40, 2)
            live = teacher(normalize(shift_images(x, shift), MEAN, STD))
            torch.testing.assert_close(outputs.lookup(index, shift), live, rtol=0, atol=1e-6)
        # as training draws them: each image its own random shift, in a shuffled batch
        order = torch.randperm(40, generator=torch.Generator().manual_seed(1))[:16]
        shifted, shift = random_shift(x[order], 2, torch.Generator().manual_seed(2))
        live = teacher(normalize(shifted, MEAN, STD))
        torch.testing.assert_close(outputs.lookup(order, shift), live, rtol=0, atol=1e-6)
        # no augmentation: one view, and a batch without shifts reads it
        flat = compute_teacher_outputs(teacher, x, max_shift=0, mean=MEAN, std=STD)
        assert flat.views == 1
        torch.testing.assert_close(flat.lookup(index, None), teacher(normalize(x, MEAN, STD)), rtol=0, atol=1e-6)


def test_a_conv_teacher_is_built_in_cache_sized_channels_last_batches_and_equals_its_live_self():
    torch.manual_seed(0)
    cnn = SmallCNN(channels=(32, 64), hidden=128).eval()
    for m in cnn.modules():  # non-trivial running statistics, as a trained teacher has
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5), m.running_var.uniform_(0.5, 2.0)
    settings = build_settings(cnn, (1, 28, 28))
    # conv1's maps are 32 x 28 x 28 floats = 100 KB an image: 256 images keep them within 32 MB
    assert settings == BuildSettings(256, channels_last=True)
    assert build_settings(random_teacher(0), (1, 28, 28)) == BuildSettings(4096, channels_last=False)

    x = images(300)  # more than one build batch
    outputs = compute_teacher_outputs(cnn, x, 1, MEAN, STD)
    assert all(p.is_contiguous() for p in cnn.parameters())  # the live teacher keeps its layout
    with torch.no_grad():
        for dy, dx in shift_offsets(1).tolist():
            shift = torch.tensor([[dy, dx]]).expand(300, 2)
            live = cnn(normalize(shift_images(x, shift), MEAN, STD))
            torch.testing.assert_close(outputs.lookup(torch.arange(300), shift), live, rtol=1e-5, atol=1e-5)


def test_float16_is_stored_only_where_it_changes_nothing_that_matters():
    teacher, x = random_teacher(0), images()
    outputs = compute_teacher_outputs(teacher, x, 1, MEAN, STD)
    student = torch.randn(64, 10)
    assert to_float16_if_harmless(outputs, [4.0], student)
    assert outputs.logits.dtype == torch.float16

    close = torch.zeros(4, 9, 10)
    close[..., 0], close[..., 1] = 1000.0, 1000.25  # 0.25 apart: float16 (spacing 0.5 at 1000) ties them
    tied = TeacherOutputs(close, 1)
    assert not to_float16_if_harmless(tied, [4.0], torch.randn(36, 10))
    assert tied.logits.dtype == torch.float32


# -- provisioning: keys, checks, refusals ---------------------------------------------------------------
@pytest.fixture
def setup(tmp_path, mnist_dir):
    """What kdlab.run hands provide_teacher_outputs: config, module, datamodule, data checksums, teacher ref."""

    def make(seed=0, losses=KD, cache="auto", data_kw=None, data=None, trainer=None):
        path = teacher_file(tmp_path, seed)
        cfg = OmegaConf.create(
            {
                "runtime": {"teacher_cache": cache, "teacher_cache_dtype": "float32"},
                "paths": {"teacher_dir": str(tmp_path / "teachers")},
                "teacher": {"model": TEACHER},
                "trainer": {"accelerator": "cpu", **(trainer or {})},  # no limits: plan unknown, built
                "data": {"batch_size": 64},
            }
        )
        module = DistillationModule(
            net=STUDENT, teacher_net=TEACHER, teacher_ckpt=str(path), losses=losses, optimizer=ADAM
        )
        dm = MNISTDataModule(
            data_dir=str(mnist_dir),
            val_size=200,
            augment_shift=2,
            verify=False,
            mirrors=[],
            pypi_package=None,
            **(data_kw or {}),
        )
        ref = TeacherRef(checkpoint=str(path), sha256=sha256_file(path))
        return cfg, module, dm, data or {"train-images": "md5-a"}, ref

    return make


def test_outputs_are_built_once_then_read_and_checked(setup, caplog):
    caplog.set_level(logging.INFO, logger="kdlab.teacher_outputs")
    first = provide_teacher_outputs(*setup())
    assert first["used"] and first["built_s"] is not None and Path(first["path"]).is_file()
    assert "teachers/outputs-by-sha256/" in first["path"]  # a teacher given by path: keyed by its sha256
    again_args = setup()
    again = provide_teacher_outputs(*again_args)
    assert again["used"] and again["built_s"] is None and again["key"] == first["key"]
    assert "512 sampled entries match the live teacher" in caplog.text
    module = again_args[1]
    assert module.teacher_outputs[0].logits.shape == (1000, 25, 10)  # 1200 - 200 validation images
    assert module.teacher_outputs[0].path == first["path"]


@pytest.mark.parametrize(
    ("trainer", "planned"),
    [
        ({"fast_dev_run": True}, 64),
        ({"fast_dev_run": 3}, 192),
        ({"max_epochs": 2}, 2000),
        ({"max_epochs": 30, "limit_train_batches": 1.0}, 30000),
        ({"max_epochs": 30, "limit_train_batches": 0.5}, 15000),
        ({"max_epochs": 30, "limit_train_batches": 2}, 3840),  # an int counts batches: 2 x 64 an epoch
        ({"max_epochs": 30, "max_steps": 10}, 640),
        ({"max_epochs": -1, "max_steps": -1}, None),
    ],
)
def test_planned_images_follow_the_trainer_limits(trainer, planned):
    assert planned_images(OmegaConf.create({"data": {"batch_size": 64}, "trainer": trainer}), 1000) == planned


def test_auto_builds_only_what_pays_for_itself_and_reads_any_entry(setup, tmp_path):
    # 2 epochs put 2000 images through the teacher; the build would put 25 views x 1000 images through it
    short = provide_teacher_outputs(*setup(trainer={"max_epochs": 2}))
    assert short["used"] is False and "runtime.teacher_cache=on builds them anyway" in short["reason"]
    assert not (tmp_path / "teachers").exists()  # nothing built
    full = provide_teacher_outputs(*setup(trainer={"max_epochs": 30}))  # 30000 >= 25000: worth building
    assert full["used"] and full["built_s"] is not None
    again = provide_teacher_outputs(*setup(trainer={"fast_dev_run": True}))  # an entry exists: a smoke run reads it
    assert again["used"] and again["built_s"] is None and again["key"] == full["key"]
    forced = provide_teacher_outputs(*setup(seed=1, cache="on", trainer={"fast_dev_run": True}))
    assert forced["used"] and forced["built_s"] is not None


def test_the_cache_is_refused_after_the_teacher_or_the_data_changes(setup):
    base = provide_teacher_outputs(*setup())
    assert provide_teacher_outputs(*setup(seed=1))["key"] != base["key"]  # other teacher weights
    assert provide_teacher_outputs(*setup(data={"train-images": "md5-b"}))["key"] != base["key"]  # other data
    assert provide_teacher_outputs(*setup(data_kw={"exclude_classes": [3]}))["key"] != base["key"]  # other split
    other_split = provide_teacher_outputs(*setup(data_kw={"split_seed": 1}))
    assert other_split["key"] != base["key"] and other_split["built_s"] is not None


def test_an_entry_that_disagrees_with_the_live_teacher_is_rebuilt(setup, caplog):
    entry = Path(provide_teacher_outputs(*setup())["path"])
    stored = load_file(str(entry))
    from safetensors import safe_open

    with safe_open(str(entry), framework="pt") as f:
        meta = f.metadata()
    save_file({"logits": stored["logits"] * 1.01}, str(entry), metadata=meta)  # same key, other numbers
    caplog.set_level(logging.WARNING, logger="kdlab.teacher_outputs")
    again = provide_teacher_outputs(*setup())
    assert "do not match the live teacher" in caplog.text and again["built_s"] is not None
    torch.testing.assert_close(load_file(str(entry))["logits"], stored["logits"], rtol=0, atol=0)


def test_the_first_training_batch_catches_logits_of_another_teacher(setup):
    cfg, module, dm, data, ref = setup()
    provide_teacher_outputs(cfg, module, dm, data, ref)
    module.teacher_outputs[0].logits.mul_(1.5)  # as if another teacher's (the sample check already passed)
    module.teacher_outputs[0].__post_init__()
    dm.prepare_data()
    dm.setup("fit")
    batch = dm.preprocess_batch(next(iter(dm.train_dataloader())), training=True)
    module.on_fit_start()
    with pytest.raises(TeacherOutputsError, match="differ from the live teacher on the first training batch"):
        module.shared_step(batch, "train")


def test_a_feature_term_or_the_switch_keeps_the_teacher_live(setup, caplog):
    caplog.set_level(logging.INFO, logger="kdlab.teacher_outputs")
    with_hint = provide_teacher_outputs(*setup(losses={**KD, "hint": HINT}))
    assert with_hint == {"used": False, "reason": "the loss term(s) hint read teacher features, which are not cached"}
    assert "The teacher runs live in training: the loss term(s) hint" in caplog.text
    assert provide_teacher_outputs(*setup(cache="off"))["used"] is False
    cfg, *rest = setup()
    cfg.train = False  # an evaluation trains nothing: no outputs to build
    assert provide_teacher_outputs(cfg, *rest) == {"used": False, "reason": "nothing is trained (train=false)"}
    _, module, *_ = setup(losses={**KD, "hint": HINT})
    with pytest.raises(ValueError, match="read teacher features"):
        module.use_teacher_outputs(TeacherOutputs(torch.zeros(2, 25, 10), 2))


def test_a_run_with_the_cache_learns_what_the_live_teacher_teaches(make_cfg):
    """End to end: the cached logits are the live ones, so the student and its metrics come out the same."""
    tiny_teacher = 'teacher.overrides=["trainer.max_epochs=1"]'
    cached, _ = train(
        make_cfg("experiment=distill_mlp", tiny_teacher, "trainer.max_epochs=2", "runtime.teacher_cache=on")
    )
    live, _ = train(
        make_cfg("experiment=distill_mlp", tiny_teacher, "trainer.max_epochs=2", "runtime.teacher_cache=off")
    )
    assert cached.identity["teacher_outputs"]["used"] is True
    assert Path(cached.identity["teacher_outputs"]["path"]).parent == Path(cached.teacher.checkpoint).parent / "outputs"
    assert live.identity["teacher_outputs"] == {"used": False, "reason": "runtime.teacher_cache=off"}
    for key in ("val/loss", "val/acc", "test/acc", "test/kl", "test/loss"):
        assert cached.metrics[key] == pytest.approx(live.metrics[key], rel=1e-5, abs=1e-7), key
