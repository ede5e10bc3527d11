"""kdlab on a real (one-node) SLURM cluster: a 2-job sweep through hydra/launcher=slurm, one job preempted
mid-epoch. SLURM's PreemptMode=REQUEUE does what `scontrol requeue` does here: SIGTERM to the job (kdlab saves
checkpoints/interrupted.ckpt and exits), then the same job starts again, into the same job folder, where kdlab
finds its own stopped run and continues it. Nothing is lost and the metrics are the uninterrupted ones."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from slurm import NEEDS_SLURM, requeue_first_job

from kdlab.record import RunRecord

pytestmark = [pytest.mark.slow, NEEDS_SLURM]

REPO = Path(__file__).resolve().parents[2]
RECIPE = ["experiment=student_scratch_mlp", "trainer.max_epochs=2", "data.batch_size=32", "data.val_size=200",
          "data.eval_batch_size=200", "data.verify=false", "data.pypi_package=null", "data.mirrors=[]",
          "trainer.enable_progress_bar=false", "~callbacks.model_summary"]  # fmt: skip
ON_THIS_CLUSTER = ["hydra/launcher=slurm", "hydra.launcher.partition=debug", "hydra.launcher.gpus_per_node=0",
                   "hydra.launcher.cpus_per_task=1", "hydra.launcher.mem_gb=1"]  # fmt: skip


@pytest.fixture(scope="module")
def big_mnist(tmp_path_factory) -> Path:
    """12,000 training images: 375 steps of 32 an epoch, a few seconds, long enough to stop one mid-epoch."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("suite_conftest", REPO / "tests" / "conftest.py")
    suite = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(suite)  # the suite's generated digits, in bigger numbers
    return suite.write_synthetic_mnist(tmp_path_factory.mktemp("mnist_big"), 12200, 400)


def test_a_preempted_sweep_job_is_resumed_from_its_interrupt_checkpoint(slurm_env, tmp_path, big_mnist):
    common = [*RECIPE, f"data.data_dir={big_mnist}"]
    alone = subprocess.run([sys.executable, "train.py", *common, f"paths.root_dir={tmp_path / 'alone'}", "seed=0"],
                           cwd=REPO, env=slurm_env, capture_output=True, text=True, timeout=600)  # fmt: skip
    assert alone.returncode == 0, alone.stdout[-2000:] + alone.stderr[-3000:]
    (reference,) = (tmp_path / "alone" / "outputs" / "student_scratch_mlp" / "runs").iterdir()

    sweep_dir = tmp_path / "sweep"
    sweep = subprocess.Popen(
        [sys.executable, "train.py", "-m", *ON_THIS_CLUSTER, *common, f"paths.root_dir={tmp_path}",
         f"hydra.sweep.dir={sweep_dir}", "seed=0,1"],  # fmt: skip
        cwd=REPO, env=slurm_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    log = sweep_dir / "0" / "run.log"
    requeue_first_job(
        slurm_env, sweep, sweep_dir, lambda: log.is_file() and "training for 2 epochs" in log.read_text(),
        timeout=300, settle_s=1.5,  # mid-epoch 1
    )  # fmt: skip

    preempted, untouched = RunRecord.read(sweep_dir / "0"), RunRecord.read(sweep_dir / "1")
    assert preempted.status == "ok" and len(preempted.resumed) == 1  # it stopped, then continued in its folder
    assert untouched.status == "ok" and untouched.resumed == []
    stopped_at = [sweep_dir / job / "checkpoints" / "interrupted.ckpt" for job in ("0", "1")]
    assert [path.is_file() for path in stopped_at] == [True, False]
    whole = RunRecord.read(reference)
    assert preempted.global_step == whole.global_step == 2 * 375
    for key in ("test/acc", "test/loss", "val/acc_best", "val/loss"):
        assert preempted.metrics[key] == whole.metrics[key], key
