"""Two-process CPU DDP (gloo) through train.py: teacher training, distillation, sweeps, exact eval."""

from pathlib import Path

import pytest

from kdlab.record import RunRecord

DDP = ("trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2")
TINY_TEACHER = 'teacher.overrides=["trainer.max_epochs=1"]'
SMALL_BATCHES = ("data.batch_size=32", "data.eval_batch_size=64")  # 2 ranks still get several steps

pytestmark = pytest.mark.slow


@pytest.fixture
def cli(tiny_cli):
    return lambda root, data: [*tiny_cli(root, data), *SMALL_BATCHES]


@pytest.fixture
def run(run_script):
    return lambda *args: run_script("train.py", *args)


def only_run_folder(root: Path, name: str) -> Path:
    runs = [p for p in (root / "outputs" / name / "runs").iterdir() if p.is_dir()]
    assert len(runs) == 1, f"expected one run folder (no per-rank strays), found {runs}"
    return runs[0]


def test_ddp_eval_counts_every_test_image_once(tmp_path, odd_mnist_dir, cli, run):
    """One checkpoint, tested by 1 and by 2 processes: identical metrics on 401 (odd!) test images."""
    args = [
        *cli(tmp_path / "fit", odd_mnist_dir),
        "experiment=distill_mlp",
        TINY_TEACHER,
        "trainer.limit_train_batches=3",
    ]
    run(*args)
    ckpt = only_run_folder(tmp_path / "fit", "distill_mlp") / "checkpoints" / "last.ckpt"

    single = tmp_path / "single"
    cache = f"paths.teacher_dir={tmp_path / 'fit' / 'outputs' / 'teachers'}"  # the very same teacher
    evaluate = ["experiment=distill_mlp", TINY_TEACHER, cache, "train=false", f"ckpt_path={ckpt}"]
    run(*cli(single, odd_mnist_dir), *evaluate)
    ddp = tmp_path / "ddp"
    run(*cli(ddp, odd_mnist_dir), *evaluate, *DDP)

    one = RunRecord.read(only_run_folder(single, "distill_mlp")).metrics
    two = RunRecord.read(only_run_folder(ddp, "distill_mlp")).metrics
    assert 0.2 < one["test/acc"] < 1.0  # a half-trained student: a padded sampler would show
    for key in ("test/acc", "test/agreement", "test/teacher_acc"):
        assert two[key] == one[key], key  # counts over 401 images: exact
    assert two["test/kl"] == pytest.approx(one["test/kl"], rel=1e-5)


def test_ddp_trains_a_teacher_and_distils(tmp_path, mnist_dir, cli, run):
    done = run(*cli(tmp_path, mnist_dir), "experiment=train_teacher_mlp", *DDP)
    folder = only_run_folder(tmp_path, "train_teacher_mlp")
    assert RunRecord.read(folder).metrics["test/acc"] > 0.9
    assert done.stdout.count("kdlab: train_teacher_mlp") == 1  # rank zero alone prints the summary

    run(*cli(tmp_path, mnist_dir), "experiment=distill_mlp", TINY_TEACHER, *DDP)
    folder = only_run_folder(tmp_path, "distill_mlp")
    assert RunRecord.read(folder).metrics["test/acc"] > 0.9
    assert (folder / "student.pt").is_file()


def test_script_relaunching_ddp_inside_a_multirun_is_refused_before_any_job(tmp_path, mnist_dir, cli, run_script):
    """Its children would re-run train.py with -m and start sweeps of their own: refused at the start."""
    args = ["-m", *cli(tmp_path, mnist_dir), "experiment=distill_mlp", TINY_TEACHER, "distill.temperature=1,4", *DDP]
    done = run_script("train.py", *args, check=False)
    assert done.returncode != 0 and "Use trainer=ddp_spawn in sweeps" in done.stdout + done.stderr
    assert not (tmp_path / "outputs" / "teachers").exists()  # refused before any teacher or job ran
