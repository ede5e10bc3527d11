"""The teacher-output cache: exact for every view, keyed by all it depends on (the run's precision and the teacher's
normalisation included), never trained on when damaged, checked against the live teacher on a seeded sample."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from kdlab.checkpoints import sha256_file
from kdlab.data import normalize, random_flip, random_shift, shift_images
from kdlab.models import MLP, SmallCNN
from kdlab.modules import DistillationModule
from kdlab.record import TeacherRef
from kdlab.teachers.cache import planned_images, provide_teacher_outputs
from kdlab.teachers.outputs import (
    TeacherOutputs,
    TeacherOutputsError,
    build_batch_size,
    check_sample,
    compute_teacher_outputs,
    load,
    save,
    tolerance,
    view_offsets,
)

MNIST_SIZES = {"num_classes": 10, "input_shape": (1, 28, 28)}  # what these tests' nets read

pytestmark = pytest.mark.unit

MNIST = {"mean": [0.1307], "std": [0.3081]}
FASHION = {"mean": [0.2860], "std": [0.3530]}  # another dataset's normalisation, for a teacher trained on it
TEACHER = {"_target_": "kdlab.models.MLP", "hidden": [64, 32], "dropout": 0.5}  # dropout: eval mode must hold
STUDENT = {"_target_": "kdlab.models.MLP", "hidden": [16]}
ADAM = {"_target_": "torch.optim.Adam", "_partial_": True, "lr": 1e-3}
KD = {
    "ce": {"_target_": "kdlab.losses.CE", "weight": 0.1},
    "kd": {"_target_": "kdlab.losses.KD", "weight": 0.9, "temperature": 4.0},
}
HINT = {"_target_": "kdlab.losses.Hint", "weight": 1.0, "student_layer": "features.0", "teacher_layer": "features.1"}
BF16 = torch.bfloat16


def random_teacher(seed: int) -> MLP:
    torch.manual_seed(seed)
    return MLP((1, 28, 28), 10, hidden=(64, 32), dropout=0.5).eval()


def teacher_file(tmp_path: Path, seed: int) -> Path:
    path = tmp_path / f"teacher{seed}.safetensors"
    if not path.is_file():
        save_file(random_teacher(seed).state_dict(), str(path))
    return path


def images(n: int = 40) -> torch.Tensor:
    return torch.randint(0, 256, (n, 1, 28, 28), dtype=torch.uint8, generator=torch.Generator().manual_seed(3))


def live(teacher, x_uint8, norm=MNIST) -> torch.Tensor:
    with torch.no_grad():
        return teacher(normalize(x_uint8, norm["mean"], norm["std"]))


@pytest.mark.heavy
def test_cached_logits_equal_live_ones_for_every_view():
    teacher, x = random_teacher(0), images()
    outputs = compute_teacher_outputs(teacher, x, 2, True, MNIST, batch_size=16)
    assert outputs.logits.shape == (40, 50, 10)  # 5 x 5 shifts, each also mirrored
    index = torch.arange(40)
    for dy, dx, f in view_offsets(2, True).tolist():
        shift, flip = torch.tensor([[dy, dx]]).expand(40, 2), torch.full((40,), bool(f))
        view = shift_images(x, shift)
        view = view.flip(-1) if f else view
        torch.testing.assert_close(outputs.lookup(index, shift, flip), live(teacher, view), rtol=0, atol=1e-6)
    # as training draws them: each image its own random shift and flip, in a shuffled batch
    order = torch.randperm(40, generator=torch.Generator().manual_seed(1))[:16]
    g = torch.Generator().manual_seed(2)
    shifted, shift = random_shift(x[order], 2, g)
    flipped, flip = random_flip(shifted, g)
    assert 0 < int(flip.sum()) < 16  # both kinds of view in the batch
    torch.testing.assert_close(outputs.lookup(order, shift, flip), live(teacher, flipped), rtol=0, atol=1e-6)
    # no augmentation: one view, and a batch without shifts or flips reads it
    flat = compute_teacher_outputs(teacher, x, 0, False, MNIST)
    assert flat.views == 1
    torch.testing.assert_close(flat.lookup(index, None, None), live(teacher, x), rtol=0, atol=1e-6)


def test_the_table_is_computed_with_the_norm_it_is_given():
    teacher, x = random_teacher(0), images(8)
    own = compute_teacher_outputs(teacher, x, 0, False, FASHION)
    torch.testing.assert_close(own.lookup(torch.arange(8), None), live(teacher, x, FASHION), rtol=0, atol=1e-6)
    assert not torch.allclose(own.lookup(torch.arange(8), None), live(teacher, x, MNIST), atol=1e-3)


@pytest.mark.heavy
def test_a_conv_teacher_is_built_in_cache_sized_batches_and_equals_its_live_self():
    torch.manual_seed(0)
    # conv1's maps are 32 x 28 x 28 floats = 100 KB an image: 256 images keep them within 32 MB
    assert build_batch_size(SmallCNN((1, 28, 28), 10, channels=(32, 64), hidden=128), (1, 28, 28), "cpu") == 256
    assert build_batch_size(random_teacher(0), (1, 28, 28), "cpu") == 4096  # an MLP's activations are small

    cnn = SmallCNN((1, 28, 28), 10, channels=(4, 8), hidden=16).eval()
    for m in cnn.modules():  # non-trivial running statistics, as a trained teacher has
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5), m.running_var.uniform_(0.5, 2.0)
    x = images(150)  # three build batches of 64, the last one short
    before = {k: v.clone() for k, v in cnn.state_dict().items()}
    outputs = compute_teacher_outputs(cnn, x, 1, False, MNIST, batch_size=64)
    assert all(torch.equal(v, cnn.state_dict()[k]) for k, v in before.items()) and not cnn.training
    for dy, dx, _ in view_offsets(1, False).tolist():
        shift = torch.tensor([[dy, dx]]).expand(150, 2)
        got = outputs.lookup(torch.arange(150), shift)
        torch.testing.assert_close(got, live(cnn, shift_images(x, shift)), rtol=1e-5, atol=1e-5)


# -- precision: a bf16-mixed run's teacher computes in bf16, and so does its table --------------------------
def test_the_tolerance_follows_the_precision():
    assert tolerance("32-true") == tolerance(32) == 1e-4
    assert tolerance("bf16-mixed") == 4 * torch.finfo(BF16).eps == 2**-5
    assert tolerance("16-mixed") == 4 * torch.finfo(torch.float16).eps


def test_a_bf16_table_agrees_with_the_live_bf16_teacher_where_a_float32_table_cannot():
    teacher, x = random_teacher(0), images(16)
    bf16 = compute_teacher_outputs(teacher, x, 1, False, MNIST, precision="bf16-mixed")
    full = compute_teacher_outputs(teacher, x, 1, False, MNIST, precision="32-true")
    assert bf16.tolerance == tolerance("bf16-mixed") and full.tolerance == tolerance("32-true")
    index = torch.arange(16)
    for dy, dx, _ in view_offsets(1, False).tolist():
        shift = torch.tensor([[dy, dx]]).expand(16, 2)
        with torch.autocast("cpu", dtype=BF16):  # what the Trainer runs the live teacher under at bf16-mixed
            live_bf16 = live(teacher, shift_images(x, shift)).float()
        tol = tolerance("bf16-mixed")
        assert torch.allclose(bf16.lookup(index, shift), live_bf16, rtol=tol, atol=tol)
        # the bug this key prevents: a float32 table checked against a live bf16 teacher at float32's tolerance
        tol = tolerance("32-true")
        assert not torch.allclose(full.lookup(index, shift), live_bf16, rtol=tol, atol=tol)


# -- storage: checksummed, a damaged entry is moved aside, never trained on -------------------------------
def test_an_entry_round_trips_and_an_altered_one_is_moved_aside(tmp_path, caplog):
    outputs = compute_teacher_outputs(random_teacher(0), images(6), 1, True, MNIST)
    outputs.key = "k1"
    path = tmp_path / "k1.safetensors"
    save(outputs, path)
    back = load(path, "k1", 1e-4)
    assert torch.equal(back.logits, outputs.logits) and (back.max_shift, back.flip, back.key) == (1, True, "k1")
    assert load(tmp_path / "absent.safetensors", "k1", 1e-4) is None

    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
    logits = load_file(str(path))["logits"]
    logits[2, 3, :2] += 0.5  # a few logits changed, the header (and its sha256) kept
    save_file({"logits": logits}, str(path), metadata=meta)
    caplog.set_level(logging.WARNING, logger="kdlab.teachers")
    assert load(path, "k1", 1e-4) is None
    assert not path.exists() and len(list(tmp_path.glob("k1.safetensors.bad-*"))) == 1  # kept for a look, not deleted
    assert "its logits have sha256" in caplog.text

    save(outputs, path)
    assert load(path, "another key", 1e-4) is None  # an entry of another key is never read as this one
    (tmp_path / "k2.safetensors").write_bytes(b"not a safetensors file")
    assert load(tmp_path / "k2.safetensors", "k2", 1e-4) is None
    assert len(list(tmp_path.glob("*.bad-*"))) == 3


def test_the_sample_check_is_seeded():
    teacher, x = random_teacher(0), images(40)
    outputs = compute_teacher_outputs(teacher, x, 2, False, MNIST)
    seen = []
    hook = teacher.register_forward_pre_hook(lambda module, args: seen.append(args[0].clone()))
    try:
        runs = [check_sample(outputs, teacher, x, MNIST, "cpu", "32-true", seed=seed, size=64) for seed in (7, 7, 8)]
    finally:
        hook.remove()
    assert [ok for ok, _ in runs] == [True, True, True]
    assert torch.equal(seen[0], seen[1])  # the same seed checks the same (image, view) entries
    assert not torch.equal(seen[0], seen[2])
    # a wrong table is caught, and named
    outputs.logits[:, :, 0] += 1.0
    ok, detail = check_sample(outputs, teacher, x, MNIST, "cpu", "32-true", seed=7, size=64)
    assert not ok and detail.startswith("64 of 64 sampled entries differ")


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


# -- provisioning: keys, checks, refusals ---------------------------------------------------------------
@pytest.fixture
def setup(tmp_path, mnist_dm):
    """What kdlab.run hands provide_teacher_outputs: config, module, datamodule (set up), teacher refs, teacher_dir."""

    def make(seed=0, losses=KD, cache="auto", data_kw=None, trainer=None, norm=None):
        path = teacher_file(tmp_path, seed)
        cfg = OmegaConf.create(
            {
                "runtime": {"teacher_cache": cache},
                "trainer": {"accelerator": "cpu", **(trainer or {})},  # no limits: plan unknown, built
                "data": {"batch_size": 64},
            }
        )
        module = DistillationModule(
            **MNIST_SIZES,
            net=STUDENT,
            teacher_net=TEACHER,
            teacher_ckpt=str(path),
            losses=losses,
            optimizer=ADAM,
            teacher_norm=norm,
        )
        dm = mnist_dm(augment_shift=2, seed=0, **(data_kw or {}))
        dm.prepare_data()
        dm.setup("fit")
        ref = TeacherRef(checkpoint=str(path), sha256=sha256_file(path))
        return cfg, module, dm, [ref], str(tmp_path / "teachers")

    return make


def first_batch(dm):
    return dm.preprocess_batch(next(iter(dm.train_dataloader())), training=True)


@pytest.mark.heavy
def test_outputs_are_built_once_then_read_and_checked(setup, caplog):
    caplog.set_level(logging.INFO, logger="kdlab.teachers")
    first = provide_teacher_outputs(*setup())
    assert first["used"] is True and first["built_s"] is not None and Path(first["path"]).is_file()
    assert "teachers/outputs-by-sha256/" in first["path"]  # a teacher given by path: keyed by its sha256
    again_args = setup()
    again = provide_teacher_outputs(*again_args)
    assert again["used"] is True and again["built_s"] is None and again["key"] == first["key"]
    assert caplog.text.count("512 sampled entries match the live teacher") == 2
    module = again_args[1]
    assert module.teacher_outputs[0].logits.shape == (1000, 25, 10)  # 1200 - 200 validation images
    assert module.teacher_outputs[0].path == first["path"]


@pytest.mark.heavy
def test_auto_builds_only_what_pays_for_itself_and_reads_any_entry(setup, tmp_path):
    # 2 epochs put 2000 images through the teacher; the build would put 25 views x 1000 images through it
    short = provide_teacher_outputs(*setup(trainer={"max_epochs": 2}))
    assert short["used"] is False and "runtime.teacher_cache=on builds them anyway" in short["reason"]
    assert not (tmp_path / "teachers").exists()  # nothing built
    full = provide_teacher_outputs(*setup(trainer={"max_epochs": 30}))  # 30000 >= 25000: worth building
    assert full["used"] is True and full["built_s"] is not None
    again = provide_teacher_outputs(*setup(trainer={"fast_dev_run": True}))  # an entry exists: a smoke run reads it
    assert again["used"] is True and again["built_s"] is None and again["key"] == full["key"]
    forced = provide_teacher_outputs(*setup(seed=1, cache="on", trainer={"fast_dev_run": True}))
    assert forced["used"] is True and forced["built_s"] is not None


def other_data(mnist_dir: Path, tmp_path: Path) -> Path:
    """mnist_dir with one training pixel changed: other content under the same file names."""
    folder = tmp_path / "other_mnist"
    shutil.copytree(mnist_dir, folder)
    images_file = folder / "train-images-idx3-ubyte"
    raw = bytearray(images_file.read_bytes())
    raw[16 + 100] ^= 0xFF  # after the 16-byte IDX header
    images_file.write_bytes(bytes(raw))
    return folder


@pytest.mark.heavy
def test_the_key_changes_with_the_teacher_the_data_the_split_the_precision_and_the_norm(setup, mnist_dir, tmp_path):
    base = provide_teacher_outputs(*setup())
    keys = {"base": base["key"]}
    keys["teacher"] = provide_teacher_outputs(*setup(seed=1))["key"]  # other teacher weights
    keys["data"] = provide_teacher_outputs(*setup(data_kw={"data_dir": str(other_data(mnist_dir, tmp_path))}))["key"]
    keys["exclude"] = provide_teacher_outputs(*setup(data_kw={"exclude_classes": [3]}))["key"]
    other_split = provide_teacher_outputs(*setup(data_kw={"split_seed": 1}))
    keys["split"] = other_split["key"]
    assert other_split["built_s"] is not None
    keys["flip"] = provide_teacher_outputs(*setup(data_kw={"augment_flip": True}))["key"]
    keys["norm"] = provide_teacher_outputs(*setup(norm=FASHION))["key"]
    bf16 = setup(trainer={"precision": "bf16-mixed"})
    keys["precision"] = provide_teacher_outputs(*bf16)["key"]
    assert len(set(keys.values())) == len(keys), keys
    assert bf16[1].teacher_outputs[0].tolerance == tolerance("bf16-mixed")


def test_a_precision_that_runs_the_whole_teacher_in_another_dtype_keeps_it_live(setup):
    assert provide_teacher_outputs(*setup(trainer={"precision": "bf16-true"})) == {
        "used": False,
        "reason": "trainer.precision=bf16-true runs the whole teacher in that dtype",
    }


@pytest.mark.heavy
def test_the_first_batch_check_passes_under_cpu_autocast_bf16(setup):
    """A bf16-mixed run's entry is built in bf16 and checked at bf16's tolerance against its live bf16 teacher."""
    cfg, module, dm, refs, teacher_dir = setup(trainer={"precision": "bf16-mixed"})
    assert provide_teacher_outputs(cfg, module, dm, refs, teacher_dir)["used"] is True
    batch = first_batch(dm)
    module.on_fit_start()
    assert module._check_outputs is True
    with torch.autocast("cpu", dtype=BF16):
        loss, inputs = module.shared_step(batch, "train")  # compares the cached logits with the live teacher's
    assert module._check_outputs is False and torch.isfinite(loss)
    cached = module.teacher_outputs[0].lookup(batch.index, batch.shift, batch.flip)
    assert torch.equal(inputs.teacher_logits, cached)  # and trains on the cached ones


@pytest.mark.heavy
def test_the_first_training_batch_catches_logits_of_another_teacher(setup):
    cfg, module, dm, refs, teacher_dir = setup()
    provide_teacher_outputs(cfg, module, dm, refs, teacher_dir)
    module.teacher_outputs[0].logits.mul_(1.5)  # as if another teacher's (the sample check already passed)
    module.teacher_outputs[0].__post_init__()
    module.on_fit_start()
    with pytest.raises(TeacherOutputsError, match="differ from the live teacher on the first training batch"):
        module.shared_step(first_batch(dm), "train")


@pytest.mark.heavy
def test_an_entry_that_disagrees_with_the_live_teacher_is_rebuilt(setup, caplog):
    entry = Path(provide_teacher_outputs(*setup())["path"])
    stored = load_file(str(entry))["logits"]
    key = entry.stem
    wrong = TeacherOutputs(stored * 1.01, 2, False, key)
    save(wrong, entry)  # a well-formed entry (its own checksum) with other numbers
    caplog.set_level(logging.WARNING, logger="kdlab.teachers")
    again = provide_teacher_outputs(*setup())
    assert "do not match the live teacher" in caplog.text and again["built_s"] is not None
    torch.testing.assert_close(load_file(str(entry))["logits"], stored, rtol=0, atol=0)


@pytest.mark.heavy
def test_a_corrupted_entry_is_never_trained_on_and_is_rebuilt(setup, caplog):
    cfg, module, dm, refs, teacher_dir = setup()
    entry = Path(provide_teacher_outputs(cfg, module, dm, refs, teacher_dir)["path"])
    stored = load_file(str(entry))["logits"]
    with safe_open(str(entry), framework="pt") as f:
        meta = f.metadata()
    changed = stored.clone()
    changed[5, 7, :3] += 0.25  # a few logits of one view, as a flipped bit or a bad write would
    save_file({"logits": changed}, str(entry), metadata=meta)  # the header's sha256 is the original's
    caplog.set_level(logging.WARNING, logger="kdlab.teachers")
    assert load(entry, meta["key"], tolerance("32-true")) is None
    assert not entry.exists()
    aside = list(entry.parent.glob(f"{entry.name}.bad-*"))
    assert len(aside) == 1 and torch.equal(load_file(str(aside[0]))["logits"], changed)  # moved, not deleted
    assert "is damaged" in caplog.text

    save_file({"logits": changed}, str(entry), metadata=meta)  # damaged again, now read by a run
    args = setup()
    again = provide_teacher_outputs(*args)
    assert again["built_s"] is not None and again["key"] == meta["key"]
    assert torch.equal(args[1].teacher_outputs[0].logits, stored)  # what it trains on: the rebuilt, exact table
    assert torch.equal(load_file(str(entry))["logits"], stored)


@pytest.mark.heavy
def test_the_same_entries_are_checked_on_every_run_of_a_key(setup):
    provide_teacher_outputs(*setup())  # built
    inputs = []
    for _ in range(2):  # two runs that read the entry: each checks a sample against the live teacher
        args, seen = setup(), []
        hook = args[1].teacher.register_forward_pre_hook(lambda module, a, seen=seen: seen.append(a[0].clone()))
        assert provide_teacher_outputs(*args)["built_s"] is None
        hook.remove()
        inputs.append(torch.cat([x.flatten(1) for x in seen]))
    assert inputs[0].shape[0] > 512 and torch.equal(inputs[0], inputs[1])


@pytest.mark.heavy
def test_a_feature_term_or_the_switch_keeps_the_teacher_live(setup, caplog):
    caplog.set_level(logging.INFO, logger="kdlab.teachers")
    with_hint = provide_teacher_outputs(*setup(losses={**KD, "hint": HINT}))
    assert with_hint == {"used": False, "reason": "the loss term(s) hint read teacher features, which are not cached"}
    assert "The teacher runs live in training: the loss term(s) hint" in caplog.text
    assert provide_teacher_outputs(*setup(cache="off")) == {"used": False, "reason": "runtime.teacher_cache=off"}
    cfg, *rest = setup()
    cfg.train = False  # an evaluation trains nothing: no outputs to build
    assert provide_teacher_outputs(cfg, *rest) == {"used": False, "reason": "nothing is trained (train=false)"}
    _, module, *_ = setup(losses={**KD, "hint": HINT})
    with pytest.raises(ValueError, match="read teacher features"):
        module.use_teacher_outputs(TeacherOutputs(torch.zeros(2, 25, 10), 2, False))


AFFINE = {"augment_affine": {"rotate": 10, "scale": [0.9, 1.1]}}


@pytest.mark.heavy
def test_affine_views_keep_the_teacher_live_under_auto_and_refuse_on(setup, caplog):
    """Continuous distortions have no finite set of views to cache: auto says so once and runs the teacher live."""
    caplog.set_level(logging.INFO, logger="kdlab.teachers")
    cfg, module, dm, refs, teacher_dir = setup(data_kw=AFFINE)
    assert provide_teacher_outputs(cfg, module, dm, refs, teacher_dir) == {
        "used": False,
        "reason": "data.augment_affine draws continuous views, which no cache can enumerate: the teacher scores "
        "each training batch's own augmented pixels",
    }
    assert module.teacher_outputs is None and not list(Path(teacher_dir).glob("**/*.safetensors"))
    assert caplog.text.count("The teacher runs live in training: data.augment_affine draws continuous views") == 1
    with pytest.raises(ValueError, match=r"runtime.teacher_cache=on .* data.augment_affine=\{'rotate': 10.0"):
        provide_teacher_outputs(*setup(data_kw=AFFINE, cache="on"))
    assert provide_teacher_outputs(*setup(data_kw=AFFINE, cache="off"))["reason"] == "runtime.teacher_cache=off"


@pytest.mark.heavy
def test_a_cached_entry_never_answers_an_affine_batch(setup):
    cfg, module, dm, refs, teacher_dir = setup()
    provide_teacher_outputs(cfg, module, dm, refs, teacher_dir)  # an entry of the shift views, in use
    distorted = setup(data_kw=AFFINE)[2]
    with pytest.raises(TeacherOutputsError, match="distorted by data.augment_affine"):
        module.known_teacher_logits(first_batch(distorted), "train")
