"""What a run leaves behind: complete TensorBoard data, progress lines, a readable summary, the threads it used."""

import json
import logging
import math
from pathlib import Path

import pytest
import torch
from rich.console import Console
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams import metadata as hp_metadata
from tensorboard.plugins.hparams import plugin_data_pb2

from kdlab.record import RunRecord
from kdlab.run import train
from kdlab.run.resume import continued
from kdlab.run.summary import print_summary

TINY_TEACHER = 'teacher.overrides=["trainer.max_epochs=1"]'


def _hparams_session(folder: Path) -> tuple[dict, int, list[int]]:
    """The HPARAMS entry of a run folder: hparam values, experiment summaries, session-end statuses."""
    events = EventAccumulator(str(folder), size_guidance={"tensors": 0}).Reload()
    runs = events.PluginTagToContent(hp_metadata.PLUGIN_NAME)
    hparams, experiments, ends = {}, 0, []
    for content in runs.values():
        data = plugin_data_pb2.HParamsPluginData.FromString(content)
        if data.HasField("session_start_info"):
            for key, value in data.session_start_info.hparams.items():
                hparams[key] = value.WhichOneof("kind") and getattr(value, value.WhichOneof("kind"))
        experiments += data.HasField("experiment")
        if data.HasField("session_end_info"):
            ends.append(data.session_end_info.status)
    return hparams, experiments, ends


def test_tensorboard_holds_every_scalar_the_hparams_entry_and_the_session_end(make_cfg):
    cfg = make_cfg("experiment=distill_mlp", TINY_TEACHER, "trainer.max_epochs=2")
    record, _ = train(cfg)
    folder = Path(cfg.paths.output_dir) / "tensorboard"
    scalars = set(EventAccumulator(str(folder)).Reload().Tags()["scalars"])
    assert {"train/loss", "train/acc", "val/acc", "val/acc_best", "val/agreement", "test/acc", "test/kl"} <= scalars
    assert not [tag for tag in scalars if tag.startswith("hp/")]  # no one-point charts of final metrics
    assert {"train/epoch", "train/lr-AdamW"} <= scalars and not [tag for tag in scalars if "/" not in tag]

    hparams, experiments, ends = _hparams_session(folder)
    assert experiments == 0  # TensorBoard derives the table from all the runs shown (kdlab.callbacks.hparams)
    assert hparams["trainer.max_epochs"] == 2 and hparams["distill.losses.kd.temperature"] == 4.0
    assert "distill.temperature" not in hparams  # the terms' own T, which a per-term override may change
    assert hparams["distill.losses.kd.weight"] == 0.9 and hparams["model.hidden"] == "[256, 128]"
    assert hparams["teacher.recipe"] == "train_teacher_mlp" and hparams["optimizer.lr"] == 0.003
    assert not [k for k in hparams if "mirror" in k or "data_dir" in k or "pypi" in k]
    assert len(hparams) < 30
    assert ends == [1]  # STATUS_SUCCESS, written once, at the end


def test_epoch_lines_without_a_progress_bar(make_cfg, caplog):
    caplog.set_level(logging.INFO, logger="kdlab.progress")
    train(make_cfg("experiment=distill_mlp", TINY_TEACHER, "trainer.max_epochs=3"))
    lines = [r.getMessage() for r in caplog.records if r.name == "kdlab.progress" and " epoch " in r.getMessage()]
    teacher = [line for line in lines if line.startswith("[teacher train_teacher_mlp")]
    student = [line for line in lines if line.startswith("[distill_mlp]")]
    assert len(teacher) == 1 and len(student) == 3
    assert student[-1].startswith("[distill_mlp] epoch 3/3  train loss ")
    for part in ("val acc ", "best ", "ETA "):
        assert part in student[0]


def test_summary_labels_smoke_runs_and_wraps_long_paths(make_cfg):
    record, _ = train(make_cfg("experiment=distill_mlp", "trainer.fast_dev_run=true"))
    record.output_dir = "/very/long/" + "folder_name/" * 12 + "job_17"
    console = Console(width=80, record=True)
    print_summary(record, console)
    text = console.export_text()
    assert "SMOKE" in text and "…" not in text
    assert "job_17" in text.replace("\n", "").replace("│", "").replace(" ", "")
    assert Path(record.teacher.checkpoint).parent.name in text.replace("\n", "").replace("│", "").replace(" ", "")


def test_diverged_run_record_is_valid_json_with_status(make_cfg):
    cfg = make_cfg("experiment=student_scratch_mlp", "optimizer.lr=1e6", "trainer.max_epochs=2")
    with pytest.raises(Exception, match="diverged"):
        train(cfg)
    data = json.loads((Path(cfg.paths.output_dir) / "metrics.json").read_text())
    assert data["status"] == "diverged"
    assert all(v is None or math.isfinite(v) for v in data["metrics"].values())


def test_a_run_records_the_threads_it_computed_with(make_cfg):
    before = torch.get_num_threads()
    try:
        record, _ = train(make_cfg("experiment=student_scratch_mlp", "trainer.fast_dev_run=true", "runtime.threads=1"))
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
    runtime = record.code["runtime"]
    assert runtime["threads"] == 1 and runtime["chosen_by"] == "runtime.threads" and runtime["cpus"] >= 1


def test_a_run_records_where_its_time_went_and_a_resume_adds_to_it(make_cfg):
    record, _ = train(make_cfg("experiment=distill_mlp", TINY_TEACHER))
    assert list(record.stages) == ["data", "teacher", "teacher outputs", "fit", "test"]
    assert all(seconds >= 0 for seconds in record.stages.values())
    assert 0 < sum(record.stages.values()) <= record.wall_time_s
    teacher = RunRecord.read(Path(record.teacher.checkpoint).parent)  # the teacher's own run, trained in this one
    assert list(teacher.stages) == ["data", "fit", "test"]
    console = Console(width=200, record=True)
    print_summary(record, console)
    shown = next(line for line in console.export_text().splitlines() if "time by stage" in line)
    other = record.wall_time_s - sum(record.stages.values())
    assert f"fit {record.stages['fit']:.1f} s" in shown and f"other {other:.1f} s" in shown
    # a resumed attempt adds its stages to the earlier attempts' (as it adds its wall time)
    previous = RunRecord(name="x", kind="supervised", stages={"data": 1.0, "fit": 10.0}, wall_time_s=12.0)
    now = RunRecord(name="x", kind="supervised", stages={"data": 0.5, "fit": 2.25, "test": 1.0})
    assert continued(now, previous).stages == {"data": 1.5, "fit": 12.25, "test": 1.0}
