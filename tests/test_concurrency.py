"""Runs side by side, as a researcher starts them from a shell: each in its own folder, the same seed gives the same
numbers whatever runs beside it, and a folder or sweep that holds another run is refused before Hydra writes."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from kdlab.record import RunRecord

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[1]


def start(args: list[str], threads: str | None = "1") -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    if threads is not None:
        env["OMP_NUM_THREADS"] = threads
    return subprocess.Popen([sys.executable, "train.py", *args], cwd=REPO, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)  # fmt: skip


def finish(process: subprocess.Popen) -> tuple[int, str]:
    out, _ = process.communicate(timeout=600)
    return process.returncode, out


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_runs_started_together_keep_their_own_folders_and_the_alone_numbers(tmp_path, mnist_dir, tiny_cli):
    """Threads come from the CPUs a run is given (here: all of them, for each run), never from what else runs."""
    args = [*tiny_cli(tmp_path, mnist_dir), "experiment=student_scratch_mlp", "data.batch_size=64"]
    code, out = finish(start([*args, "seed=0"], threads=None))
    assert code == 0, out[-3000:]
    (alone,) = (tmp_path / "outputs" / "student_scratch_mlp" / "runs").iterdir()
    together = [start([*args, f"seed={seed}"], threads=None) for seed in (0, 1)]  # the same second
    for code, out in map(finish, together):
        assert code == 0, out[-3000:]
    records = [RunRecord.read(f) for f in (tmp_path / "outputs" / "student_scratch_mlp" / "runs").iterdir()]
    assert sorted(r.seed for r in records) == [0, 0, 1] and len({r.output_dir for r in records}) == 3
    first = RunRecord.read(alone)
    (beside,) = [r for r in records if r.seed == 0 and r.output_dir != str(alone)]
    assert beside.code["runtime"]["threads"] == first.code["runtime"]["threads"]
    for key in ("test/acc", "test/loss", "val/loss", "val/acc_best"):
        assert beside.metrics[key] == first.metrics[key], key


def test_a_run_sent_to_another_runs_folder_is_refused_before_anything_is_written(tmp_path, mnist_dir, tiny_cli):
    folder = tmp_path / "mine"
    args = [*tiny_cli(tmp_path, mnist_dir), "experiment=student_scratch_mlp", f"hydra.run.dir={folder}"]
    code, out = finish(start([*args, "seed=0"]))
    assert code == 0, out[-3000:]
    before = snapshot(folder)
    code, out = finish(start([*args, "seed=1"]))  # a typo'd or reused hydra.run.dir
    assert code != 0 and "is the folder of another run" in out
    assert snapshot(folder) == before  # .hydra/, run.log, the record, the checkpoints: byte for byte


def test_two_runs_given_one_folder_at_once_never_share_it(tmp_path, mnist_dir, tiny_cli):
    folder = tmp_path / "shared"
    args = [*tiny_cli(tmp_path, mnist_dir), "experiment=student_scratch_mlp", f"hydra.run.dir={folder}"]
    results = [finish(p) for p in [start([*args, f"seed={seed}"]) for seed in (0, 1)]]
    assert sorted(code for code, _ in results) == [0, 2], [out[-1500:] for _, out in results]
    refused = next(out for code, out in results if code == 2)
    assert "still going" in refused or "another run" in refused
    record = RunRecord.read(folder)
    assert record.status == "ok" and record.seed == next(s for s, (c, _) in zip((0, 1), results, strict=True) if c == 0)
