"""Ensembles under a Trainer and through the run: frozen members, the keys the single-teacher path and the ensemble
share (composed configs), validation before any member is provisioned (a duplicate member warned about), each member
provisioned once through the one-teacher cache, the shared teacher-output cache, testing a checkpoint against
changed members."""

import logging
import re
from pathlib import Path

import lightning as L
import pytest
import torch
from omegaconf import OmegaConf
from safetensors.torch import load_file, save_file

import kdlab.identity
from kdlab.checkpoints import CheckpointError, sha256_file
from kdlab.config import compose_config
from kdlab.identity import config_identity, digest, run_key, student_key
from kdlab.losses import build_terms
from kdlab.models import SmallCNN
from kdlab.modules import DistillationModule
from kdlab.record import RunRecord
from kdlab.run import train
from kdlab.run.summary import summary_rows, tensorboard_hparams
from kdlab.run.validation import validate_config
from kdlab.teachers import teacher_run_config

MNIST_SIZES = {"num_classes": 10, "input_shape": (1, 28, 28)}  # what these tests' nets read

ADAM = {"_target_": "torch.optim.Adam", "_partial_": True, "lr": 1e-3}
ENSEMBLE = "experiment=distill_ensemble_mlp"

# -- frozen members -------------------------------------------------------------------------------------
CNN = {"_target_": "kdlab.models.SmallCNN", "channels": [4, 8], "hidden": 16, "batch_norm": True, "dropout": 0.5}


def cnn_member(tmp_path: Path, seed: int) -> dict:
    torch.manual_seed(seed)
    net = SmallCNN((1, 28, 28), 10, channels=(4, 8), hidden=16, batch_norm=True, dropout=0.5)
    with torch.no_grad():  # non-trivial running statistics, so a change would show
        net.features[0][1].running_mean.uniform_(-1, 1)
    path = tmp_path / f"member{seed}.pt"
    torch.save(net.state_dict(), path)
    return {"net": CNN, "ckpt": str(path), "sha256": sha256_file(path)}


FEATURE_LOSSES = {
    "ce": {"_target_": "kdlab.losses.CE", "weight": 0.1},
    "kd": {"_target_": "kdlab.losses.KD", "weight": 0.5, "temperature": 4.0},  # the ensemble
    "kd0": {"_target_": "kdlab.losses.KD", "weight": 0.4, "temperature": 4.0, "member": 0},
    "hint": {
        "_target_": "kdlab.losses.Hint",
        "weight": 1.0,
        "student_layer": "features.1",
        "teacher_layer": "neck",
        "member": 1,
    },
}


class AssertMembersEval(L.Callback):
    def __init__(self):
        self.checked = 0

    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        assert all(not m.training for m in module.teacher.modules())
        self.checked += 1


def test_members_are_frozen_bit_identical_and_reloaded_from_their_files(tmp_path, mnist_dm):
    members = [cnn_member(tmp_path, 0), cnn_member(tmp_path, 1)]
    module = DistillationModule(
        **MNIST_SIZES,
        net={"_target_": "kdlab.models.MLP", "hidden": [32, 24]},
        teacher_net=None,
        teacher_ckpt=None,
        losses=FEATURE_LOSSES,
        optimizer=ADAM,
        members=members,
        combine={"mode": "mean_probs", "temperature": 4.0},
    )
    assert [n for n, m in module.teacher.members[1].named_modules() if m._forward_hooks] == ["neck"]
    assert [n for n, m in module.teacher.members[0].named_modules() if m._forward_hooks] == []
    before = {k: v.clone() for k, v in module.teacher.state_dict().items()}
    probe = AssertMembersEval()
    off = dict(logger=False, enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path)
    trainer = L.Trainer(max_epochs=1, accelerator="cpu", callbacks=[probe], **off)
    trainer.fit(module, datamodule=mnist_dm())
    assert probe.checked == 16  # every step: 1000 images / 64
    after = module.teacher.state_dict()
    assert sorted(before) == sorted(after) and any(k.startswith("members.1.") for k in before)
    for key, value in before.items():
        assert torch.equal(value, after[key]), f"teacher {key} changed during training"
    assert all(p.grad is None and not p.requires_grad for p in module.teacher.parameters())
    optimised = {id(p) for group in trainer.optimizers[0].param_groups for p in group["params"]}
    assert not optimised & {id(p) for p in module.teacher.parameters()}
    assert {id(p) for p in module.losses["hint"].parameters()} <= optimised  # member 1's hint regressor trains

    trainer.save_checkpoint(tmp_path / "distill.ckpt")
    saved = torch.load(tmp_path / "distill.ckpt", weights_only=True)
    assert [k for k in saved["state_dict"] if k.startswith("teacher.")] == []
    reloaded = DistillationModule.load_from_checkpoint(tmp_path / "distill.ckpt", weights_only=True)
    assert reloaded.is_ensemble and len(reloaded.teacher.members) == 2
    for key, value in module.state_dict().items():
        assert torch.equal(reloaded.state_dict()[key], value), key

    # a member file that changed since is refused by name
    state = torch.load(members[1]["ckpt"], weights_only=True)
    torch.save({k: v + 1 if v.is_floating_point() else v for k, v in state.items()}, members[1]["ckpt"])
    with pytest.raises(CheckpointError, match=r"teacher member 1 file .* has changed"):
        DistillationModule.load_from_checkpoint(tmp_path / "distill.ckpt", weights_only=True)


# -- the single-teacher path and the ensemble share keys --------------------------------------------------
DATA = {"x": "1"}
# Computed with this code (the data contract's refactor: IDENTITY_VERSION 3, the data node's name, shape,
# classes, normalisation and files joined every config, nets take their shape from the data) by the same
# calls as below: the teacher cache key, the run's config identity and the student key. A change here
# re-keys every cached teacher or every distillation run; if it is deliberate, recompute them and say so.
# (The keys pinned before, of commit 5591aa6, could not survive that refactor: every config changed.)
# Recomputed once since, deliberately: `teacher.feature_layer` (the layer feature terms tap by default) joined every
# teacher preset, so each distillation run's config identity changed; the teacher and student keys did not.
KEYS = {
    "distill_mlp": {"teacher": "ced8a3ed4cebd5bf", "config": "51ded2f5a609e4ad", "student": "6c6d19e96edf1df8"},
    "distill_cnn_mlp": {"teacher": "f87224950bef018c", "config": "df3580c2ce8f024a", "student": "6c6d19e96edf1df8"},
}


def test_single_teacher_cache_key_run_identity_and_student_key_are_pinned(monkeypatch):
    monkeypatch.setattr(kdlab.identity, "code_versions", lambda: {"fixed": 1})
    for experiment, expected in KEYS.items():
        cfg = compose_config([f"experiment={experiment}", "paths.root_dir=/r", "paths.output_dir=/o"])
        found = {
            "teacher": run_key(teacher_run_config(cfg, cfg.teacher), DATA),
            "config": digest(config_identity(cfg)),
            "student": student_key(cfg, DATA),
        }
        assert found == expected, experiment
        assert config_identity(cfg)["module"]["teacher_net"] == config_identity(cfg)["teacher"]["model"]

    # the ensemble's student is the scratch baseline's, and its member 0 is distill_cnn_mlp's teacher
    ensemble = compose_config([ENSEMBLE, "paths.root_dir=/r", "paths.output_dir=/o"])
    scratch = compose_config(["experiment=student_scratch_mlp", "paths.root_dir=/r", "paths.output_dir=/o"])
    assert student_key(ensemble, DATA) == student_key(scratch, DATA) == KEYS["distill_mlp"]["student"]
    member_keys = [run_key(teacher_run_config(ensemble, m), DATA) for m in ensemble.teacher.members]
    assert member_keys[0] == KEYS["distill_cnn_mlp"]["teacher"]
    assert len(set(member_keys)) == 3  # seeds 0, 1, 2: three teachers


def test_a_members_file_location_is_not_part_of_a_runs_identity():
    """As teacher.ckpt_path: the weights' checksum (identity["teacher"]) stands in for where they lie."""
    plain = compose_config([ENSEMBLE, "paths.root_dir=/r", "paths.output_dir=/o"])
    located = compose_config([ENSEMBLE, "paths.root_dir=/r", "paths.output_dir=/o", "teacher.members.1.ckpt_path=/x"])
    assert config_identity(located) == config_identity(plain)
    assert "ckpt_path" not in config_identity(plain)["teacher"]["members"][1]
    reseeded = compose_config([ENSEMBLE, "paths.root_dir=/r", "paths.output_dir=/o", "teacher.members.1.seed=7"])
    assert config_identity(reseeded) != config_identity(plain)


# -- refused before any member is provisioned -----------------------------------------------------------
@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        (["teacher.members.2.model={_target_: kdlab.models.Nope}"], r"teacher\.members\.2\.model cannot be built"),
        (["teacher.members.1.seed=abc"], r"teacher\.members\.1\.seed must be an integer"),
        (["teacher.members.1.recipe=train_nothing"], r"teacher\.members\.1\.recipe='train_nothing' is not"),
        (["teacher.members.2.ckpt_path=/no/such.pt"], r"teacher\.members\.2\.ckpt_path='/no/such\.pt' does not"),
        (["+teacher.members.0.lr=1"], r"teacher\.members\.0 has unknown key\(s\) \['lr'\]"),
        (["+teacher.seed=3"], r"teacher has key\(s\) \['seed'\] next to teacher\.members"),
        (["teacher.members=[]"], r"teacher\.members must be a non-empty list"),
        (["teacher.combine.mode=median"], r"teacher\.combine\.mode='median' is not a way"),
        (["teacher.combine.temperature=0"], r"teacher\.combine\.temperature must be a finite number > 0"),
        (["teacher.combine.mode=weighted"], r"teacher\.combine\.weights must be a list of one weight per member \(3"),
        (["teacher.combine.mode=weighted", "teacher.combine.weights=[1,1]"], r"one weight per member \(3 members\)"),
        (["teacher.combine.mode=weighted", "teacher.combine.weights=[1,-1,1]"], r"teacher\.combine\.weights\.1 must"),
        (["teacher.combine.mode=weighted", "teacher.combine.weights=[0,0,0]"], r"teacher\.combine\.weights are all 0"),
        (["teacher.combine.weights=[1,1,1]"], r"teacher\.combine\.weights=\[1, 1, 1\] is only read by"),
        (["+distill.losses.kd.member=3"], r"distill\.losses\.kd\.member=3 names no member: .* has 3"),
        (["+loss@distill.losses.hint=hint"], r"distill\.losses\.hint reads teacher layer\(s\) \['neck'\]"),
        (
            ["+loss@distill.losses.hint=hint", "+distill.losses.hint.member=1", "distill.losses.hint.teacher_layer=x"],
            r"distill\.losses\.hint asks for teacher member 1 layer\(s\) \['x'\]",
        ),
    ],
)
def test_bad_ensembles_fail_before_any_member_is_trained(make_cfg, overrides, match):
    cfg = make_cfg(ENSEMBLE, *overrides)
    with pytest.raises(Exception, match=match):
        train(cfg)
    assert not Path(cfg.paths.teacher_dir).exists()


DUPLICATE = re.compile(r"teacher\.members\.(\d) and teacher\.members\.(\d) are the same teacher")


def test_a_member_given_twice_is_warned_about_and_distinct_members_are_not(make_cfg, caplog):
    caplog.set_level(logging.WARNING, logger="kdlab.run.validation")
    validate_config(make_cfg(ENSEMBLE))  # seeds 0, 1, 2: three teachers
    assert DUPLICATE.findall(caplog.text) == []
    caplog.clear()
    validate_config(make_cfg(ENSEMBLE, "teacher.members.2.seed=0"))  # member 2 is member 0 again
    assert DUPLICATE.findall(caplog.text) == [("0", "2")]
    assert "the ensemble counts it twice" in caplog.text


MULTI_TEACHER = (  # the README's multi-teacher command: one KD term per member, 0.3 each, + 0.1 CE
    "distill.losses.kd.weight=0.3",
    "+distill.losses.kd.member=0",
    *(f"+loss@distill.losses.kd{i}=kd" for i in (1, 2)),
    *(f"distill.losses.kd{i}.weight=0.3" for i in (1, 2)),
    *(f"+distill.losses.kd{i}.member={i}" for i in (1, 2)),
)


def test_the_multi_teacher_command_validates_with_one_term_per_member(make_cfg):
    cfg = make_cfg(ENSEMBLE, *MULTI_TEACHER)
    validate_config(cfg)
    terms = build_terms(cfg.distill.losses)
    assert {name: (t.member, t.weight) for name, t in terms.items() if t.needs_teacher} == {
        "kd": (0, 0.3),
        "kd1": (1, 0.3),
        "kd2": (2, 0.3),
    }


def test_a_member_on_a_single_teacher_run_is_refused(make_cfg):
    cfg = make_cfg("experiment=distill_mlp", "+distill.losses.kd.member=0")
    with pytest.raises(ValueError, match=r"distill\.losses\.kd\.member=0 reads one member .* single teacher"):
        train(cfg)
    assert not Path(cfg.paths.teacher_dir).exists()


# -- end to end: each member provisioned once through the one-teacher cache, then reused -------------------
TINY_CNN = ("teacher.nets.cnn_small.channels=[4,8]", "teacher.nets.cnn_small.hidden=16")
MEMBER = (  # a tiny recipe through the member's own overrides
    "{model: ${teacher.nets.cnn_small}, recipe: train_teacher_cnn, seed: %d, overrides: ['trainer.max_epochs=1'], "
    "ckpt_path: null}"
)
TWO_MEMBERS = f"teacher.members=[{MEMBER % 0},{MEMBER % 1}]"
# distill_cnn_mlp with that tiny net and recipe: its teacher is TWO_MEMBERS' member 0
SINGLE_TINY_CNN = (
    "experiment=distill_cnn_mlp",
    "teacher.model.channels=[4,8]",
    "teacher.model.hidden=16",
    'teacher.overrides=["trainer.max_epochs=1"]',
)
TRAINED = "No cached teacher for recipe"  # kdlab.teachers.provision, once per teacher it trains


def provisioned(text: str) -> list[str]:
    """The teachers a run was given, by config key (kdlab.teachers.provision logs one line each)."""
    return re.findall(r"Teacher (teacher(?:\.members\.\d)?): ", text)


def test_members_are_provisioned_once_and_reused_and_checkpoints_check_them(make_cfg, caplog, tmp_path):
    caplog.set_level(logging.INFO, logger="kdlab.teachers")
    single, _ = train(make_cfg(*SINGLE_TINY_CNN))
    assert caplog.text.count(TRAINED) == 1 and provisioned(caplog.text) == ["teacher"]

    caplog.clear()  # member 0 is that teacher (same net, recipe, seed): only member 1 is trained
    cfg = make_cfg(ENSEMBLE, *TINY_CNN, TWO_MEMBERS)
    first, objects = train(cfg)
    assert provisioned(caplog.text) == ["teacher.members.0", "teacher.members.1"]
    assert caplog.text.count(TRAINED) == 1 and "(seed 1, key" in caplog.text
    assert first.members[0] == single.teacher and first.members[1].seed == 1
    assert first.teacher is None and first.is_ensemble and first.status == "ok"
    assert len([p for p in Path(cfg.paths.teacher_dir).iterdir() if p.is_dir()]) == 2

    caplog.clear()
    second, _ = train(make_cfg(ENSEMBLE, *TINY_CNN, TWO_MEMBERS))
    assert provisioned(caplog.text) == ["teacher.members.0", "teacher.members.1"] and TRAINED not in caplog.text
    assert second.members == first.members
    for key in ("test/acc", "val/loss", "test/teacher_acc", "test/member1_acc"):
        assert second.metrics[key] == first.metrics[key], key

    # each member and the ensemble scored in the same test pass; member 0 scores what it scored alone
    assert {"test/teacher_acc", "test/member0_acc", "test/member1_acc", "test/agreement", "test/kl"} <= set(
        first.metrics
    )
    assert first.metrics["test/member0_acc"] == single.metrics["test/teacher_acc"]
    assert first.params["teacher"] == 2 * single.params["teacher"]
    assert RunRecord.read(cfg.paths.output_dir) == first
    rows = dict(summary_rows(first))
    assert first.combine == {"mode": "mean_probs", "temperature": 4.0, "weights": None, "scored_at": 1.0}
    assert rows["ensemble of 2 test acc (mean_probs at T=1)"] == f"{100 * first.metrics['test/teacher_acc']:.2f}%"
    assert rows["member 1 test acc (train_teacher_cnn, seed 1)"] == f"{100 * first.metrics['test/member1_acc']:.2f}%"
    assert rows["member 0"] == single.teacher.checkpoint
    hp = tensorboard_hparams(cfg, first)
    assert (hp["teacher.members"], hp["teacher.combine"], hp["teacher.seeds"]) == (2, "mean_probs", "0,1")
    assert hp["teacher.combine.temperature"] == 4.0 == hp["distill.losses.kd.temperature"]
    saved = OmegaConf.load(Path(cfg.paths.output_dir) / "config.yaml")  # it names every member's file
    assert [m.ckpt_path for m in saved.teacher.members] == [m.checkpoint for m in first.members]
    assert objects["module"].hparams["members"][1]["sha256"] == first.members[1].sha256

    # testing the checkpoint (train=false): the same members test it; a member whose weights differ is refused
    last = Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt"
    tested, _ = train(make_cfg(ENSEMBLE, *TINY_CNN, TWO_MEMBERS, f"ckpt_path={last}", "train=false"))
    assert tested.status == "ok" and tested.mode == "evaluate" and tested.members == first.members
    swapped = tmp_path / "other_member.safetensors"
    state = load_file(first.members[1].checkpoint)
    save_file({k: v + 1 if v.is_floating_point() else v for k, v in state.items()}, str(swapped))
    with pytest.raises(CheckpointError, match=r"belongs to another run .*teacher\.member1: '[0-9a-f]+' -> '[0-9a-f]+'"):
        train(make_cfg(ENSEMBLE, *TINY_CNN, TWO_MEMBERS, f"teacher.members.1.ckpt_path={swapped}", f"ckpt_path={last}",
                       "train=false"))  # fmt: skip


def test_each_member_reads_its_own_output_cache_and_teaches_what_it_teaches_live(make_cfg):
    single, _ = train(make_cfg(*SINGLE_TINY_CNN, "runtime.teacher_cache=on"))
    cached, objects = train(make_cfg(ENSEMBLE, *TINY_CNN, TWO_MEMBERS, "runtime.teacher_cache=on"))
    live, _ = train(make_cfg(ENSEMBLE, *TINY_CNN, TWO_MEMBERS, "runtime.teacher_cache=off"))

    entries = cached.identity["teacher_outputs"]["members"]
    assert cached.identity["teacher_outputs"]["used"] is True and len(entries) == 2
    # member 0 is distill_cnn_mlp's teacher: it reads the entry that run built; member 1 builds its own
    assert entries[0]["path"] == single.identity["teacher_outputs"]["path"] and entries[0]["built_s"] is None
    assert entries[1]["built_s"] is not None
    assert Path(entries[1]["path"]).parent == Path(cached.members[1].checkpoint).parent / "outputs"
    assert [len(entry.logits) for entry in objects["module"].teacher_outputs] == [1000, 1000]
    assert live.identity["teacher_outputs"] == {"used": False, "reason": "runtime.teacher_cache=off"}
    for key in ("val/loss", "val/acc", "test/acc", "test/kl", "test/member1_acc"):
        assert cached.metrics[key] == pytest.approx(live.metrics[key], rel=1e-5, abs=1e-7), key
