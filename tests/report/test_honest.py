"""A report a researcher can rely on: jobs that went wrong are named, short sweeps say so, nothing crashes."""

import itertools
import json
import sys

import pytest
from matplotlib.text import Text
from sweep_builders import STUDENT_KEY, distill_record

from kdlab.record import RunRecord
from kdlab.report import load_jobs, write_report


def table_line(text: str, first_cell: str) -> list[str]:
    lines = [line for line in text.splitlines() if line.startswith(f"| {first_cell} ")]
    assert len(lines) == 1, text
    return [cell.strip() for cell in lines[0].strip("|").split("|")]


def test_a_diverged_job_is_named_and_the_others_are_reported(troubled_sweep):
    assert '"test/acc": null' in (troubled_sweep / "2" / "metrics.json").read_text()  # NaN is written as null

    report = write_report(troubled_sweep)

    diverged = (
        "- job folder `2` (distill.temperature=8, seed=0): **diverged**: train/loss became NaN at epoch 0, step 17"
    )
    text = (troubled_sweep / "report.md").read_text()
    assert diverged in text
    assert diverged in report.text  # printed by scripts/report.py too
    eight = table_line(text, "8")  # the other seed of temperature 8 is averaged alone
    assert eight[1:3] == ["1", "93.00 ± 0.00"]
    assert eight[-1] == "diverged: 2"
    one = table_line(text, "1")
    assert one[1:3] == ["2", "95.50 ± 0.71"]
    assert one[6] == "5.0e-05"  # a tiny KL in scientific notation, not 0.0001 nor a crash
    assert "3 of 5 jobs finished (1 diverged, 1 unfinished)" in text
    assert (troubled_sweep / "acc_vs_params.png").is_file()


def test_failed_interrupted_running_and_unreadable_jobs_are_listed_by_folder(tmp_path, make_job):
    ok = ["distill.temperature=1", "seed=0"]
    make_job(tmp_path / "0", ok, distill_record(ok, 0, 0.9, 0.9, 0.1))
    ends = {"1": ("failed", "CUDA out of memory"), "2": ("interrupted", "stopped by SIGTERM"), "3": ("running", None)}
    for folder, (status, message) in ends.items():
        overrides = [f"distill.temperature={folder}", "seed=0"]
        make_job(
            tmp_path / folder, overrides, distill_record(overrides, 0, 0.9, 0.9, 0.1, status=status, message=message)
        )
    make_job(tmp_path / "4", ["distill.temperature=4", "seed=0"], None)
    (tmp_path / "4" / "metrics.json").write_text('{"test/acc": NaN}')  # what json.dumps wrote before RunRecord
    make_job(tmp_path / "5", ["distill.temperature=5", "seed=0"], None)

    report = write_report(tmp_path)

    assert [job.state for job in report.jobs] == [
        "finished",
        "failed",
        "interrupted",
        "unfinished",
        "unfinished",
        "unfinished",
    ]
    text = (tmp_path / "report.md").read_text()
    assert "- job folder `1` (distill.temperature=1, seed=0): **failed**: CUDA out of memory" in text
    assert "job folder `2` (distill.temperature=2, seed=0): **interrupted**: stopped by SIGTERM" in text
    assert (
        "job folder `3` (distill.temperature=3, seed=0): **unfinished** (status running): the record says running"
        in text
    )
    assert "job folder `4` (distill.temperature=4, seed=0): **unfinished**: unreadable metrics.json:" in text
    assert "non-standard JSON constant NaN" in text
    assert "job folder `5` (distill.temperature=5, seed=0): **unfinished**: no metrics.json" in text
    assert table_line(text, "1")[1:3] == ["1", "90.00 ± 0.00"]


def test_common_settings_come_above_the_table_and_in_every_plot(troubled_sweep):
    report = write_report(troubled_sweep)

    assert report.common == ["experiment=distill_mlp", "trainer.max_epochs=2"]
    common = "**Common to every job:** `experiment=distill_mlp` `trainer.max_epochs=2`"
    for text in ((troubled_sweep / "report.md").read_text(), report.text):
        lines = text.splitlines()
        assert lines.index(common) < lines.index(report.table.splitlines()[0])
    assert set(report.figures) == {"acc_vs_distill.temperature", "acc_vs_params"}
    for fig in report.figures.values():
        subtitle = fig.axes[0].get_title(loc="left")
        assert "common: experiment=distill_mlp, trainer.max_epochs=2" in subtitle
        assert "not shown: 1 diverged, 1 unfinished (job folders 2, 4)" in subtitle


def test_a_missing_baseline_is_said_with_the_command_that_trains_it(troubled_sweep):
    report = write_report(troubled_sweep)

    text = (troubled_sweep / "report.md").read_text()
    assert f"No from-scratch baseline found for student recipe `{STUDENT_KEY}`" in text
    # the scratch experiment distill_mlp builds on, with the sweep's student-recipe overrides
    assert "`python train.py -m experiment=student_scratch_mlp trainer.max_epochs=2 seed=0,1,2`" in text
    assert "Same student from scratch" not in text
    assert "No from-scratch baseline" in report.text


def test_scratch_experiment_and_command_for_each_distillation_experiment():
    from kdlab.report.baselines import scratch_command, scratch_experiment

    assert scratch_experiment("distill_mlp") == "student_scratch_mlp"
    assert scratch_experiment("distill_cnn_mlp") == "student_scratch_mlp"
    assert scratch_experiment("distill_article") is None  # its own recipe: train its student alone

    from kdlab.report.load import Job, parse_overrides

    lines = ["experiment=distill_article", "distill.temperature=4", "optimizer.lr=0.01", "hydra.sweep.dir=x", "seed=3"]
    job = Job("0", "finished", None, None, *parse_overrides(lines))
    assert scratch_command(job) == (
        "python train.py -m experiment=distill_article module=teacher '~teacher' '~distill' "
        "optimizer.lr=0.01 seed=0,1,2"
    )


def _labels(fig) -> dict[str, object]:
    return {text.get_text(): text for text in fig.axes[0].texts}


def test_every_point_of_acc_vs_params_is_labelled_and_labels_do_not_overlap(tmp_path, make_job):
    """Eight settings at the same parameter count and near-equal accuracy: their labels must still be readable."""
    for job, (temp, weight) in enumerate(itertools.product((1, 2, 4, 8), (0.5, 0.9))):
        overrides = [f"distill.temperature={temp}", f"distill.losses.kd.weight={weight}", "seed=0"]
        make_job(tmp_path / str(job), overrides, distill_record(overrides, 0, 0.95 + job * 1e-4, 0.95, 0.1))

    report = write_report(tmp_path)

    fig = report.figures["acc_vs_params"]
    labels = _labels(fig)
    assert set(labels) == {row.label(report.keys) for row in report.rows}
    assert len(labels) == 8
    fig.draw_without_rendering()
    boxes = [Text.get_window_extent(text) for text in labels.values()]  # the text alone, not its leader line
    for a, b in itertools.combinations(boxes, 2):
        assert not a.overlaps(b)
    for text in labels.values():  # each label points at its own setting's point
        row = next(r for r in report.rows if r.label(report.keys) == text.get_text())
        assert text.xy == (row.params, pytest.approx(100 * row.mean("test/acc")))


def test_troubled_sweep_labels_name_the_settings(troubled_sweep):
    report = write_report(troubled_sweep)
    assert set(_labels(report.figures["acc_vs_params"])) == {"distill.temperature=1", "distill.temperature=8"}


def test_smoke_jobs_are_shown_marked_and_never_best(tmp_path, make_job):
    for job, (temp, val, status) in enumerate(((1, 0.99, "smoke"), (4, 0.90, "ok"), (8, 0.80, "ok"))):
        overrides = [f"distill.temperature={temp}", "seed=0"]
        record = distill_record(overrides, 0, val, val, 0.1, status=status)
        record.smoke = ["trainer.fast_dev_run"] if status == "smoke" else []
        make_job(tmp_path / str(job), overrides, record)
    # a smoke job of a full setting gets a row of its own: it must not pull the full runs' mean down
    overrides = ["distill.temperature=4", "seed=1"]
    make_job(tmp_path / "3", overrides, distill_record(overrides, 1, 0.1, 0.1, 0.1, status="smoke"))

    report = write_report(tmp_path)

    assert [(row.setting["distill.temperature"], row.smoke) for row in report.rows] == [
        ("1", True),
        ("4", False),
        ("4", True),
        ("8", False),
    ]
    text = (tmp_path / "report.md").read_text()
    assert "Best by validation (val/acc_best; the test set only reports it): distill.temperature=4:" in text
    assert "2 of 4 finished jobs are smoke runs (trainer.fast_dev_run)" in text
    smoke_rows = [line for line in text.splitlines() if line.startswith("| ") and line.rstrip(" |").endswith("smoke")]
    assert len(smoke_rows) == 2
    assert report.rows[1].mean("val/acc_best") == pytest.approx(0.90)
    assert "distill.temperature=1 (smoke)" in _labels(report.figures["acc_vs_params"])


def test_a_sweep_of_only_smoke_runs_has_no_best(tmp_path, make_job):
    for job in range(2):
        overrides = [f"distill.temperature={job + 1}", "seed=0"]
        make_job(tmp_path / str(job), overrides, distill_record(overrides, 0, 0.5, 0.5 + job / 10, 0.1, status="smoke"))
    text = write_report(tmp_path).text
    assert "No best setting: only smoke runs have a validation accuracy" in text
    assert "Best by validation" not in text


def test_without_matplotlib_the_report_is_written_and_says_how_to_get_plots(troubled_sweep, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # `import matplotlib` now raises ImportError

    report = write_report(troubled_sweep)

    assert not list(troubled_sweep.glob("*.png"))
    assert report.figures == {}
    text = (troubled_sweep / "report.md").read_text()
    assert "Plots skipped: matplotlib is not installed. Install it with `pip install 'kdlab[plots]'`" in text
    assert "![" not in text
    assert "Plots skipped" in report.text
    assert table_line(text, "1")[1] == "2"


def test_all_metrics_null_still_loads(tmp_path, make_job):
    """A finished record whose metrics are all null: '-' everywhere, no arithmetic on None."""
    overrides = ["distill.temperature=1", "seed=0"]
    record = distill_record(overrides, 0, 0.9, 0.9, 0.1)
    record.metrics = {"test/acc": None, "val/acc_best": None, "test/kl": None}
    make_job(tmp_path / "0", overrides, record)
    report = write_report(tmp_path)
    assert report.keys == ["distill.temperature"]  # one job, but its record says the sweep varied it
    assert table_line(report.table, "1")[1:4] == ["1", "-", "-"]
    (job,) = load_jobs(tmp_path)
    assert job.metric("test/acc") is None
    assert json.loads((tmp_path / "0" / "metrics.json").read_text())["metrics"]["test/acc"] is None
    assert RunRecord.read(tmp_path / "0").status == "ok"
