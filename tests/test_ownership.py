"""Nothing a researcher already has is lost: a run owns its folder, and writes into a run it resumes only
after every check has passed; a finished run is never rewritten."""

from __future__ import annotations

from pathlib import Path

import pytest
from hydra.core.hydra_config import HydraConfig
from omegaconf import OmegaConf, open_dict, read_write
from stand_ins import CrashAtEpoch

import kdlab.run.fit
from kdlab.checkpoints import CheckpointError
from kdlab.record import RunRecord
from kdlab.run import train
from kdlab.run.folder import FolderTaken, claim

SHORT = ("experiment=student_scratch_mlp", "trainer.max_epochs=3", "data.batch_size=64")


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def crashed_run(make_cfg, monkeypatch, *overrides):
    """A run that died at the start of its second epoch, leaving last.ckpt: its config and folder."""
    cfg = make_cfg(*SHORT, *overrides)
    build = kdlab.run.fit.build_callbacks
    with monkeypatch.context() as m:
        m.setattr(kdlab.run.fit, "build_callbacks", lambda c: [*build(c), CrashAtEpoch(1)])
        with pytest.raises(RuntimeError, match="simulated crash"):
            train(cfg)
    return cfg, Path(cfg.paths.output_dir)


def in_folder(cfg, folder: Path):
    """`cfg` as Hydra hands it to a job whose folder is `folder` (a requeued or re-run sweep job)."""
    with open_dict(cfg):
        cfg.paths.output_dir = str(folder)
    with read_write(cfg.hydra.runtime):
        cfg.hydra.runtime.output_dir = str(folder)
    HydraConfig().set_config(cfg)
    return cfg


def test_a_refused_resume_leaves_the_run_it_names_exactly_as_it_was(make_cfg, monkeypatch):
    _, folder = crashed_run(make_cfg, monkeypatch)
    before = snapshot(folder)
    attempt = make_cfg(*SHORT, "optimizer.lr=0.01", f"ckpt_path={folder / 'checkpoints' / 'last.ckpt'}")
    with pytest.raises(CheckpointError, match=r"belongs to another run .*optimizer\.lr: 0\.003 -> 0\.01"):
        train(attempt)
    assert snapshot(folder) == before  # record, config, checkpoints: byte for byte
    refused = RunRecord.read(attempt.paths.output_dir)  # the refusal is recorded in the attempt's own folder
    assert refused.status == "failed" and "belongs to another run" in refused.message


def test_a_resume_continues_in_its_run_and_a_second_one_changes_nothing(make_cfg, monkeypatch):
    cfg, folder = crashed_run(make_cfg, monkeypatch)
    whole, _ = train(make_cfg(*SHORT))
    resume = make_cfg(*SHORT, f"ckpt_path={folder / 'checkpoints' / 'last.ckpt'}")
    made_for_it = Path(resume.paths.output_dir)
    resumed, _ = train(resume)
    assert resumed.status == "ok" and resumed.output_dir == str(folder) and len(resumed.resumed) == 1
    assert resumed.overrides == RunRecord.read(folder).overrides
    assert not made_for_it.exists()  # the folder made for the resume command is gone
    for key in ("test/acc", "test/loss", "val/acc_best", "val/loss"):
        assert resumed.metrics[key] == whole.metrics[key], key
    finished = snapshot(folder)
    again, objects = train(make_cfg(*SHORT, f"ckpt_path={folder / 'checkpoints' / 'last.ckpt'}"))
    assert again == resumed and "trainer" not in objects
    assert snapshot(folder) == finished  # swept, fixed and every val/* metric kept: nothing rewritten


def test_a_folder_a_live_run_holds_is_refused_untouched(make_cfg):
    cfg = make_cfg(*SHORT)
    folder = Path(cfg.paths.output_dir)
    other = claim(folder)  # another run, alive, owns this folder
    try:
        (folder / "metrics.json").write_text("{}")
        before = snapshot(folder)
        with pytest.raises(FolderTaken, match="still going"):
            train(cfg)
        assert snapshot(folder) == before
    finally:
        other.release()


def test_a_job_run_again_in_its_folder_continues_it_or_is_refused_if_it_is_another_run(make_cfg, monkeypatch):
    """What a requeued SLURM job or a re-run sweep does: the same job in the same folder picks up where it stopped."""
    cfg, folder = crashed_run(make_cfg, monkeypatch)
    other = in_folder(make_cfg(*SHORT, "seed=7"), folder)
    before = snapshot(folder)
    with pytest.raises(FolderTaken, match="holds another run"):
        train(other)
    assert snapshot(folder) == before
    again = in_folder(make_cfg(*SHORT), folder)
    record, objects = train(again)
    assert record.status == "ok" and len(record.resumed) == 1 and objects["trainer"].current_epoch == 3
    assert RunRecord.read(folder) == record


def test_a_sweep_folder_is_run_again_only_by_the_same_sweep(tmp_path, capsys):
    from kdlab.run.folder import FolderGuard

    def config(*overrides):
        return OmegaConf.create({"hydra": {"sweep": {"dir": str(tmp_path)}, "overrides": {"task": list(overrides)}}})

    FolderGuard().on_multirun_start(config("seed=0,1"))  # a new sweep folder
    OmegaConf.save(config("experiment=distill_mlp", "seed=0,1"), tmp_path / "multirun.yaml")
    FolderGuard().on_multirun_start(config("experiment=distill_mlp", "seed=0,1"))  # the same sweep, continued
    with pytest.raises(SystemExit) as refused:
        FolderGuard().on_multirun_start(config("experiment=distill_mlp", "seed=0,1,2"))
    assert refused.value.code == 2 and "holds another sweep" in capsys.readouterr().err
