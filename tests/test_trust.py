"""Hostile and careless inputs: every one is refused early and loudly, or yields a result that is right.

Each test here failed on the code before the trust work: a wrong number is worse than a crash, and
a crash after minutes of work is worse than a refusal at start.
"""

import json
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import lightning as L
import pytest
import torch
from stand_ins import CrashAtEpoch

import kdlab.run.fit
from kdlab.callbacks import Interrupted
from kdlab.checkpoints import CheckpointError
from kdlab.modules.tally import DivergenceError
from kdlab.record import RunRecord
from kdlab.report.baselines import scratch_baseline
from kdlab.run import REFUSALS, train
from kdlab.run.fit import fit_run
from kdlab.teachers import TeacherCacheError, provision_teacher

TINY_TEACHER = 'teacher.overrides=["trainer.max_epochs=1"]'
REPO = Path(__file__).resolve().parents[1]


class SignalAt(L.Callback):
    """Sends this process `signum`, as a scheduler or Ctrl+C would, once training step `step` is done,
    or during the validation after it (after its first batch)."""

    def __init__(self, signum: int, step: int, during_validation: bool = False) -> None:
        self.signum, self.step, self.during_validation, self.sent = signum, step, during_validation, False

    def _send(self, trainer) -> None:
        if not self.sent and trainer.global_step == self.step:
            self.sent = True
            os.kill(os.getpid(), self.signum)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if not self.during_validation:
            self._send(trainer)

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        if self.during_validation and not trainer.sanity_checking:
            self._send(trainer)


# -- refused before any work ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        (["data.batch_size=0"], "batch_size must be an integer >= 1"),
        (["trainer.max_epochs=-3"], "max_epochs"),
        (["+distill.losses.bogus.weight=1"], r"distill\.losses\.bogus is not a loss term.*_target_"),
        (["distill.losses.kd.weight=0", "distill.losses.ce.weight=0"], "No loss term is active"),
        (["distill.losses.kd.weight=-1"], r"distill\.losses\.kd: KD: weight must be a finite number >= 0"),
        (["distill.temperature=0"], r"distill\.losses\.kd: KD: temperature must be a finite number > 0"),
        (["+loss@distill.losses.hint=hint", "distill.losses.hint.teacher_layer=nope"], r"distill\.losses\.hint.*nope"),
        (["teacher.ckpt_path=/no/such/teacher.ckpt"], "teacher.ckpt_path"),
        (["ckpt_path=/no/such/last.ckpt"], "resume"),
        (["model.activation=sigmoidish"], "Unknown activation 'sigmoidish'"),
        (["trainer.accelerator=gpu"], "trainer"),
        (["trainer.max_epochs=0"], "trains nothing"),
        (["runtime.teacher_cache=of"], r"runtime\.teacher_cache='of' is not one of auto, on, off"),
        (["runtime.threads=0"], r"runtime\.threads=0"),
        (["+runtime.malloc=tuned"], r"runtime has unknown key\(s\) \['malloc'\]"),
        (
            ["distill.temperature=1e-30"],
            r"(?s)distill\.losses\.kd would train on nothing: it underflows.*1e-30 is outside",
        ),
        (["distill.temperature=1e30"], r"(?s)distill\.losses\.kd would train on nothing: it overflows"),
        (["distill.losses.ce.weight=1e-50"], r"distill\.losses\.ce would train on nothing"),
        (["seed=abc"], "seed must be an integer"),
    ],
)
def test_bad_values_fail_before_any_teacher_is_trained(make_cfg, overrides, match):
    cfg = make_cfg("experiment=distill_mlp", *overrides)
    started = time.perf_counter()
    with pytest.raises(REFUSALS, match=match):  # one paragraph, exit 2 from train.py: never a traceback
        train(cfg)
    assert not Path(cfg.paths.teacher_dir).exists()  # no teacher was trained (or even looked up) first
    assert time.perf_counter() - started < 30


@pytest.mark.slow
def test_a_name_with_a_path_is_refused_before_any_folder_exists(tmp_path, tiny_cli, mnist_dir, run_script):
    root = tmp_path / "root"
    done = run_script(
        "train.py", *tiny_cli(root, mnist_dir), "experiment=student_scratch_mlp", "name=../../x", check=False
    )
    assert done.returncode != 0 and "cannot name a run folder" in done.stderr + done.stdout
    assert not (tmp_path / "x").exists() and not (root / "x").exists()


# -- divergence -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("overrides", "term"),
    [
        (["experiment=student_scratch_mlp", "optimizer.lr=1e6"], "ce"),
        (["experiment=distill_mlp", TINY_TEACHER, "optimizer.lr=1e8"], "(kd|ce)"),
    ],
)
def test_divergence_stops_the_run_and_is_recorded(make_cfg, overrides, term):
    cfg = make_cfg(*overrides, "trainer.max_epochs=2")
    with pytest.raises(DivergenceError, match=rf"non-finite .* step \d+, first in the term\(s\) .*{term}"):
        train(cfg)
    text = (Path(cfg.paths.output_dir) / "metrics.json").read_text()
    json.loads(text, parse_constant=lambda name: pytest.fail(f"bare {name} in the record"))
    record = RunRecord.read(cfg.paths.output_dir)
    assert record.status == "diverged" and "non-finite" in record.message
    assert not (Path(cfg.paths.output_dir) / "student.pt").exists()  # no student from a broken run
    assert not record.counts_as_baseline()


# -- baselines --------------------------------------------------------------------------------------


def test_baseline_counts_each_healthy_seed_once_and_ignores_smoke_and_evaluations(make_cfg):
    first, _ = train(make_cfg("experiment=student_scratch_mlp"))
    again, _ = train(make_cfg("experiment=student_scratch_mlp"))  # the same seed twice
    train(make_cfg("experiment=student_scratch_mlp", "seed=1", "trainer.fast_dev_run=true"))  # smoke
    train(make_cfg("experiment=student_scratch_mlp", "seed=2", "trainer.limit_train_batches=2"))  # smoke
    ckpt = Path(first.files["best_checkpoint"])
    evaluated, _ = train(make_cfg("experiment=student_scratch_mlp", "train=false", f"ckpt_path={ckpt}"))
    assert evaluated.mode == "evaluate" and evaluated.status == "ok"
    log_dir = make_cfg("experiment=student_scratch_mlp").paths.log_dir
    baseline = scratch_baseline(log_dir, first.identity["student"])
    assert baseline["runs"] == 1 and baseline["seeds"] == [0]
    assert baseline["mean"] == again.metrics["test/acc"]


# -- the teacher cache --------------------------------------------------------------------------------


def test_other_data_content_gets_its_own_teacher(make_cfg, tmp_path, mnist_dir):
    """Label-shuffled files in another folder (verify=false) must never be served as the normal teacher."""
    from kdlab.data import read_idx, write_idx

    shuffled = tmp_path / "shuffled"
    shuffled.mkdir()
    for name in ("train-images-idx3-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"):
        (shuffled / name).write_bytes((mnist_dir / name).read_bytes())
    labels = read_idx(mnist_dir / "train-labels-idx1-ubyte")
    write_idx(shuffled / "train-labels-idx1-ubyte", labels[torch.randperm(len(labels)).numpy()])

    poisoned, _ = train(make_cfg("experiment=distill_mlp", TINY_TEACHER, f"data.data_dir={shuffled}"))
    clean, _ = train(make_cfg("experiment=distill_mlp", TINY_TEACHER))
    assert poisoned.teacher.key != clean.teacher.key
    assert poisoned.teacher.sha256 != clean.teacher.sha256


def test_a_damaged_cached_teacher_is_moved_aside_and_retrained(make_cfg, caplog):
    first, _ = train(make_cfg("experiment=distill_mlp", TINY_TEACHER, "trainer.fast_dev_run=true"))
    weights = Path(first.teacher.checkpoint)
    weights.write_bytes(weights.read_bytes()[:100])  # truncated
    second, _ = train(make_cfg("experiment=distill_mlp", TINY_TEACHER, "trainer.fast_dev_run=true"))
    assert "damaged" in caplog.text and "training it first" in caplog.text
    assert second.teacher.checkpoint == first.teacher.checkpoint  # the same key, trained again
    assert second.teacher.sha256 == first.teacher.sha256  # and the same seed gives the same teacher
    assert list(weights.parent.parent.glob(f".{weights.parent.name}.bad-*"))


def test_a_job_of_several_processes_never_trains_a_missing_teacher_in_each(make_cfg, monkeypatch):
    """torchrun/SLURM start every rank at once: a missing teacher is refused in all, with the command that
    provisions it once; a cached one is found by every rank."""
    cfg = make_cfg("experiment=distill_mlp", TINY_TEACHER)
    fingerprint = {"x": "1"}
    for rank in ("0", "1"):
        with monkeypatch.context() as m:
            m.setenv("WORLD_SIZE", "2")
            m.setenv("RANK", rank)
            with pytest.raises(TeacherCacheError, match=r"scripts/provision\.py"):
                provision_teacher(cfg, cfg.teacher, fingerprint, cfg.paths.teacher_dir, fit_run)
    assert not list(Path(cfg.paths.teacher_dir).glob("*/teacher.safetensors"))
    ref = provision_teacher(cfg, cfg.teacher, fingerprint, cfg.paths.teacher_dir, fit_run)  # one process: trains
    with monkeypatch.context() as m:
        m.setenv("WORLD_SIZE", "2")
        m.setenv("RANK", "1")
        assert provision_teacher(cfg, cfg.teacher, fingerprint, cfg.paths.teacher_dir, fit_run) == ref


# -- resume -----------------------------------------------------------------------------------------


def test_last_checkpoint_is_the_last_epoch_even_without_improvement(make_cfg):
    cfg = make_cfg("experiment=student_scratch_mlp", "trainer.max_epochs=3")
    train(cfg)  # the easy data gives 100% val accuracy from the first epoch on: no later epoch improves
    folder = Path(cfg.paths.output_dir) / "checkpoints"
    last = torch.load(folder / "last.ckpt", weights_only=True)
    assert last["epoch"] == 2
    assert sorted(p.name for p in folder.iterdir()) == ["epoch_000.ckpt", "last.ckpt"]


def _hard(make_cfg, *overrides):
    """Short epochs of small batches on easy data: metrics still move from epoch to epoch."""
    return make_cfg(
        "experiment=distill_mlp",
        TINY_TEACHER,
        "trainer.max_epochs=4",
        "data.batch_size=32",
        "trainer.limit_train_batches=6",
        "optimizer.lr=1e-4",
        *overrides,
    )


def test_resume_after_a_crash_gives_the_uninterrupted_result(make_cfg, monkeypatch):
    whole, _ = train(_hard(make_cfg))
    crashed = _hard(make_cfg)
    build = kdlab.run.fit.build_callbacks
    with monkeypatch.context() as m:  # not in the config: the resumed run must be the same run
        m.setattr(kdlab.run.fit, "build_callbacks", lambda cfg: [*build(cfg), CrashAtEpoch(2)])
        with pytest.raises(RuntimeError, match="simulated crash"):
            train(crashed)
    last = Path(crashed.paths.output_dir) / "checkpoints" / "last.ckpt"
    resumed, _ = train(_hard(make_cfg, f"ckpt_path={last}"))
    assert resumed.output_dir == crashed.paths.output_dir
    for key in ("test/acc", "test/loss", "val/acc_best", "test/kl"):
        assert resumed.metrics[key] == whole.metrics[key], key
    assert Path(resumed.files["best_checkpoint"]).name == Path(whole.files["best_checkpoint"]).name


@pytest.mark.parametrize(
    ("signum", "step", "during_validation"),
    [(signal.SIGTERM, 8, False), (signal.SIGINT, 8, False), (signal.SIGTERM, 24, True)],
    ids=["sigterm-mid-epoch", "sigint-mid-epoch", "sigterm-mid-validation"],
)
def test_a_signal_then_the_resume_command_gives_the_uninterrupted_result(
    make_cfg, monkeypatch, signum, step, during_validation
):
    """Step 8 is the 3rd of epoch 1: the rest of that epoch's data order must follow. Step 24 ends epoch 3:
    its validation (4 batches) must count whole, for val/acc_best and the checkpoint selected."""
    whole, _ = train(_hard(make_cfg, "data.eval_batch_size=50"))
    stopped_cfg = _hard(make_cfg, "data.eval_batch_size=50")
    build = kdlab.run.fit.build_callbacks
    with monkeypatch.context() as m:
        m.setattr(kdlab.run.fit, "build_callbacks", lambda c: [*build(c), SignalAt(signum, step, during_validation)])
        with pytest.raises(Interrupted) as stopped:
            train(stopped_cfg)
    assert stopped.value.exit_code == 128 + signum and stopped.value.checkpoint.name == "interrupted.ckpt"
    resumed, _ = train(_hard(make_cfg, "data.eval_batch_size=50", f"ckpt_path={stopped.value.checkpoint}"))
    assert resumed.output_dir == stopped_cfg.paths.output_dir and resumed.global_step == whole.global_step
    for key in ("test/acc", "test/loss", "val/acc_best", "val/loss", "test/kl"):
        assert resumed.metrics[key] == whole.metrics[key], key
    assert resumed.metric_epochs == whole.metric_epochs and resumed.metric_epochs["val/acc"] == 4
    assert Path(resumed.files["best_checkpoint"]).name == Path(whole.files["best_checkpoint"]).name
    last = [torch.load(Path(r.output_dir) / "checkpoints" / "last.ckpt", weights_only=True) for r in (resumed, whole)]
    assert last[0]["state_dict"].keys() == last[1]["state_dict"].keys()
    assert all(torch.equal(last[0]["state_dict"][k], last[1]["state_dict"][k]) for k in last[1]["state_dict"])
    # every epoch's training loss, as logged, is the uninterrupted one too (the epoch's tally is checkpointed)
    assert scalars(Path(resumed.output_dir), "train/loss") == scalars(Path(whole.output_dir), "train/loss")


def scalars(folder: Path, tag: str) -> dict[int, float]:
    """The values TensorBoard shows for `tag` in a run folder, by step (the last one logged at a step wins)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    values = {}
    for events in sorted((folder / "tensorboard").glob("events.out.tfevents.*")):
        accumulator = EventAccumulator(str(events))
        accumulator.Reload()
        if tag in accumulator.Tags()["scalars"]:
            values.update({event.step: event.value for event in accumulator.Scalars(tag)})
    assert values, f"no {tag} in {folder}"
    return values


def test_a_signal_while_the_teacher_trains_prints_a_command_that_resumes_it(make_cfg, monkeypatch, tmp_path, caplog):
    """The printed command is the run's own: it resumes the teacher from its staging checkpoint, exactly."""
    teacher = ['teacher.overrides=["trainer.max_epochs=2","data.batch_size=32"]', "trainer.limit_train_batches=2"]
    whole, _ = train(make_cfg("experiment=distill_mlp", *teacher, f"paths.teacher_dir={tmp_path / 'other'}"))
    cfg = make_cfg("experiment=distill_mlp", *teacher)
    build = kdlab.run.fit.build_callbacks
    with monkeypatch.context() as m:
        m.setattr(kdlab.run.fit, "build_callbacks", lambda c: [*build(c), SignalAt(signal.SIGTERM, 40)])
        with pytest.raises(Interrupted) as stopped:
            train(cfg)
    assert "ckpt_path" not in stopped.value.resume  # the student had not started: the same command resumes
    assert list(Path(cfg.paths.teacher_dir).glob(".*.staging/checkpoints/interrupted.ckpt"))
    caplog.clear()
    resumed, _ = train(make_cfg("experiment=distill_mlp", *teacher))
    assert resumed.teacher.sha256 == whole.teacher.sha256  # the resumed teacher is the uninterrupted one, bit for bit
    assert "resuming its interrupted training first" in caplog.text  # and its log says so


def test_resume_with_more_epochs_is_refused_before_training(make_cfg):
    cfg = make_cfg("experiment=student_scratch_mlp", "trainer.max_epochs=2")
    train(cfg)
    last = Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt"
    with pytest.raises(CheckpointError, match=r"trainer\.max_epochs: 2 -> 5"):
        train(make_cfg("experiment=student_scratch_mlp", "trainer.max_epochs=5", f"ckpt_path={last}"))


def test_a_checkpoint_of_another_experiment_or_teacher_is_refused(make_cfg, tmp_path):
    scratch = make_cfg("experiment=student_scratch_mlp")
    train(scratch)
    other = Path(scratch.paths.output_dir) / "checkpoints" / "last.ckpt"
    with pytest.raises(CheckpointError, match="belongs to another run"):
        train(make_cfg("experiment=distill_mlp", TINY_TEACHER, f"ckpt_path={other}"))

    distill = make_cfg("experiment=distill_mlp", TINY_TEACHER)
    record, _ = train(distill)
    last = Path(distill.paths.output_dir) / "checkpoints" / "last.ckpt"
    swapped = tmp_path / "other_teacher.safetensors"
    from safetensors.torch import load_file, save_file

    state = load_file(record.teacher.checkpoint)
    save_file({k: v + 1 if v.is_floating_point() else v for k, v in state.items()}, str(swapped))
    with pytest.raises(CheckpointError, match="teacher"):
        train(make_cfg("experiment=distill_mlp", TINY_TEACHER, f"teacher.ckpt_path={swapped}", f"ckpt_path={last}"))


class Payload:
    ran = False

    def __reduce__(self):
        return (Payload._boom, ())

    @staticmethod
    def _boom():
        Payload.ran = True
        return "boom"


def test_a_pickled_payload_in_a_resume_checkpoint_never_runs(make_cfg, monkeypatch):
    cfg = make_cfg("experiment=student_scratch_mlp")
    train(cfg)
    last = Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt"
    checkpoint = torch.load(last, weights_only=True)
    checkpoint["payload"] = Payload()
    torch.save(checkpoint, last)
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")  # torch's documented override
    with pytest.raises(CheckpointError, match="weights_only"):
        train(make_cfg("experiment=student_scratch_mlp", f"ckpt_path={last}"))
    with pytest.raises(CheckpointError, match="weights_only"):
        train(make_cfg("experiment=student_scratch_mlp", "train=false", f"ckpt_path={last}"))
    assert not Payload.ran


# -- interruptions, as a scheduler delivers them ----------------------------------------------------


def _start(args: list[str], root: Path) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HYDRA_FULL_ERROR": "1"}
    log = open(root / "console.log", "w")  # noqa: SIM115 - closed with the process
    return subprocess.Popen(
        [sys.executable, "train.py", *args], cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT
    )


def _wait_for_epoch(root: Path, name: str, epoch: int, process: subprocess.Popen, timeout: float = 300) -> Path:
    """Poll the run's log until `epoch` epochs are done (last.ckpt is written before the epoch line)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for log in (root / "outputs" / name / "runs").glob("*/run.log"):
            if f"[{name}] epoch {epoch}/" in log.read_text():
                return log.parent
        assert process.poll() is None, (root / "console.log").read_text()[-3000:]
        time.sleep(0.05)
    raise AssertionError(f"epoch {epoch} never finished")


SLOW_EPOCHS = ["data.batch_size=16", "trainer.max_epochs=5", "optimizer.lr=1e-4"]
KILLED_METHODS = {  # a term's schedule and state must come through a kill -9 as they come through an epoch
    "kd": [],
    # the warm-up ramps over all 5 epochs (factor 0.2, 0.4, ... 1.0): it is still ramping where the run resumes
    "dkd_warmup": ["distill=dkd", "distill.losses.dkd.warmup=5"],
    # memory banks, Z and the negatives' generator; fewer negatives than the authors' 16384, for a CPU test
    "crd": ["distill=crd", "distill.losses.crd.nce_k=256"],
}


def _term_state(checkpoint: Path) -> dict:
    """The student's weights and every term's state (banks, generators) in a checkpoint."""
    state = torch.load(checkpoint, weights_only=True)["state_dict"]
    return {key: value for key, value in state.items() if key.startswith(("net.", "losses."))}


@pytest.mark.slow
@pytest.mark.parametrize("method", list(KILLED_METHODS))
def test_kill_9_then_the_readme_resume_command_gives_the_uninterrupted_result(
    tmp_path, mnist_dir, tiny_cli, run_script, method
):
    chosen = [*SLOW_EPOCHS, *KILLED_METHODS[method]]
    args = [*tiny_cli(tmp_path, mnist_dir), "experiment=distill_mlp", TINY_TEACHER, *chosen]
    run_script("train.py", *tiny_cli(tmp_path / "whole", mnist_dir), "experiment=distill_mlp", TINY_TEACHER, *chosen)
    (whole,) = (tmp_path / "whole" / "outputs" / "distill_mlp" / "runs").iterdir()

    process = _start(args, tmp_path)
    folder = _wait_for_epoch(tmp_path, "distill_mlp", 2, process)
    process.kill()  # SIGKILL: no handler runs, nothing is saved at the interrupt
    process.wait()
    # the README's command: the same overrides and the run's last.ckpt (the resume continues in its folder)
    run_script("train.py", *args, f"ckpt_path={folder / 'checkpoints' / 'last.ckpt'}")
    resumed, uninterrupted = RunRecord.read(folder), RunRecord.read(whole)
    assert resumed.status == "ok" and resumed.epochs == 5
    for key in ("test/acc", "val/acc_best", "test/loss", "test/agreement"):
        assert resumed.metrics[key] == uninterrupted.metrics[key], key
    assert Path(resumed.files["best_checkpoint"]).name == Path(uninterrupted.files["best_checkpoint"]).name
    resumed_state, whole_state = (_term_state(run / "checkpoints" / "last.ckpt") for run in (folder, whole))
    assert resumed_state.keys() == whole_state.keys()
    for key, value in whole_state.items():  # the student, and CRD's banks, Z and generator, bit for bit
        if torch.is_tensor(value):
            assert torch.equal(resumed_state[key], value), key
        else:
            assert resumed_state[key].keys() == value.keys(), key
            assert all(str(resumed_state[key][k]) == str(v) for k, v in value.items() if not torch.is_tensor(v)), key
            assert all(torch.equal(resumed_state[key][k], v) for k, v in value.items() if torch.is_tensor(v)), key
    if method == "crd":  # the banks were written and Z set: the comparison is not of untouched buffers
        assert (whole_state["losses.crd.normalisers"] > 0).all()
        assert whole_state["losses.crd._extra_state"]["state"] is not None


@pytest.mark.slow
@pytest.mark.parametrize(("signum", "code"), [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_a_signal_saves_a_checkpoint_exits_non_zero_and_prints_the_resume_command(
    tmp_path, mnist_dir, tiny_cli, run_script, signum, code
):
    args = [*tiny_cli(tmp_path, mnist_dir), "experiment=student_scratch_mlp", *SLOW_EPOCHS]
    process = _start(args, tmp_path)
    folder = _wait_for_epoch(tmp_path, "student_scratch_mlp", 1, process)
    process.send_signal(signum)
    assert process.wait(timeout=120) == code
    record = RunRecord.read(folder)
    assert record.status == "interrupted" and (folder / "checkpoints" / "interrupted.ckpt").is_file()
    command = record.message.split("To resume: ", 1)[1]
    assert f"To resume: {command}\n" in (tmp_path / "console.log").read_text()
    resume_args = shlex.split(command)[2:]  # drop "python train.py"
    run_script("train.py", *resume_args)
    assert RunRecord.read(folder).status == "ok" and RunRecord.read(folder).epochs == 5


@pytest.mark.parametrize("content", [b"", b"hello\n"], ids=["empty", "text"])
def test_a_file_that_is_no_checkpoint_is_refused_in_words_with_the_fix(make_cfg, tmp_path, content):
    bad = tmp_path / "bad.ckpt"
    bad.write_bytes(content)
    with pytest.raises(CheckpointError, match=r"the file is empty|not a PyTorch file") as resume:
        train(make_cfg("experiment=student_scratch_mlp", f"ckpt_path={bad}"))
    assert "checkpoints/last.ckpt" in str(resume.value)  # says which file to give instead
    with pytest.raises(CheckpointError, match=r"the file is empty|not a PyTorch file") as teacher:
        train(make_cfg("experiment=distill_mlp", f"teacher.ckpt_path={bad}"))
    assert "state_dict" in str(teacher.value)


def test_another_nets_weights_offered_as_the_teacher_are_refused_with_a_fix_hydra_accepts(make_cfg, tmp_path):
    from kdlab.config import compose_config
    from kdlab.models import SmallCNN

    weights = tmp_path / "cnn.pt"
    torch.save(SmallCNN((1, 28, 28), 10).state_dict(), weights)
    cfg = make_cfg("experiment=distill_mlp", f"teacher.ckpt_path={weights}")
    with pytest.raises(CheckpointError, match=r"does not match the configured teacher network \(MLP\)") as refused:
        train(cfg)
    assert not Path(cfg.paths.teacher_dir).exists()  # refused before any teacher trained or student started
    assert "teacher=cnn_small" in str(refused.value)
    compose_config(["experiment=distill_mlp", "teacher=cnn_small", f"teacher.ckpt_path={weights}"])  # the fix composes
