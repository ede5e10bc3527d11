"""The sweep report on hand-made sweep folders: grouping, statistics, files. No training."""

from pathlib import Path

import numpy as np
import pytest
import yaml
from matplotlib.image import imread
from sweep_builders import COMMON, KL, TEST_ACC, VAL_ACC, distill_record

from kdlab.record import TeacherRef
from kdlab.report import load_jobs, swept_keys, write_report

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def table_line(report_md: str, first_cell: str) -> list[str]:
    lines = [line for line in report_md.splitlines() if line.startswith(f"| {first_cell} ")]
    assert len(lines) == 1, report_md
    return [cell.strip() for cell in lines[0].strip("|").split("|")]


def test_rows_average_the_seeds_of_each_temperature(grid_sweep):
    report = write_report(grid_sweep)

    assert report.keys == ["distill.temperature"]  # constant overrides and the seed are not swept
    # job 6 (temperature 4) never finished: its setting gets a row of its own, with no numbers
    assert [row.setting for row in report.rows] == [{"distill.temperature": t} for t in ("2", "4", "10")]
    assert [len(row.jobs) for row in report.rows] == [3, 0, 3]
    for row, jobs in zip((report.rows[0], report.rows[2]), ([3, 4, 5], [0, 1, 2]), strict=True):
        assert sorted(int(job.name) for job in row.jobs) == jobs
        for metric, values in (("test/acc", TEST_ACC), ("val/acc_best", VAL_ACC), ("test/kl", KL)):
            mean, std = row.stats(metric)
            picked = np.array(values)[jobs]
            assert mean == pytest.approx(np.mean(picked))
            assert std == pytest.approx(np.std(picked, ddof=1))  # the sample std over seeds

    text = (grid_sweep / "report.md").read_text()
    assert report.table in text
    assert "teacher acc (%)" in report.table and "member" not in report.table  # one teacher: no member columns
    two = table_line(text, "2")
    t2 = np.array(TEST_ACC[3:]) * 100
    v2 = np.array(VAL_ACC[3:]) * 100
    assert two[1] == "3"
    assert two[2] == f"{t2.mean():.2f} ± {t2.std(ddof=1):.2f}"
    assert two[3] == f"{v2.mean():.2f} ± {v2.std(ddof=1):.2f}"
    assert two[4] == "98.10"  # teacher
    assert two[6] == f"{np.mean(KL[3:]):.4f}"
    assert two[7] == "235,146"
    assert two[8] == "11.0"  # median wall time of seeds 0, 1, 2
    assert two[9] == ""  # notes: nothing left out of this row
    assert table_line(text, "10")[2] == f"{np.mean(TEST_ACC[:3]) * 100:.2f} ± {np.std(TEST_ACC[:3], ddof=1) * 100:.2f}"
    assert table_line(text, "4")[1:4] == ["0", "-", "-"]
    assert table_line(text, "4")[9] == "unfinished: 6"
    assert "Best by validation (val/acc_best; the test set only reports it): distill.temperature=2:" in text
    assert "94.00 ± 0.40% test acc over 2 runs, seeds 0, 1" in text  # the baseline seen by the most runs
    assert "- job folder `6` (distill.temperature=4, seed=0): **unfinished**: no metrics.json" in text


def test_a_rows_wall_time_is_its_median_job_not_the_mean_with_the_job_that_trained_the_teacher(grid_sweep):
    """Job 3 (temperature 2, seed 0) trained the sweep's teacher: 1000 s where its siblings took 11 and 12 s."""
    first = grid_sweep / "3" / "metrics.json"
    first.write_text(first.read_text().replace('"wall_time_s": 10.0', '"wall_time_s": 1000.0'))
    report = write_report(grid_sweep)
    assert "median wall time (s)" in report.table
    assert table_line(report.table, "2")[8] == "12.0"  # the mean, 341.0 s, is no run's cost


def test_writes_valid_pngs_and_nothing_tensorboard_reads_as_a_run(grid_sweep, tmp_path):
    report = write_report(grid_sweep)

    pngs = [grid_sweep / "acc_vs_distill.temperature.png", grid_sweep / "acc_vs_params.png"]
    for png in pngs:
        assert png.read_bytes()[:8] == PNG_SIGNATURE
        assert imread(png).shape[2] in (3, 4)  # decodes as an image
        assert f"]({png.name})" in (grid_sweep / "report.md").read_text()
        assert png in report.files

    # `tensorboard --logdir outputs` took a report's event files for another run: its HPARAMS table
    # took over the runs' own. The runs write TensorBoard; the report writes none, here or in --out.
    write_report(grid_sweep, tmp_path / "out")
    assert not list(tmp_path.rglob("events.out.tfevents.*"))


def test_single_seed_has_zero_std_and_optuna_best_trial_is_named(tmp_path, make_job):
    """An Optuna sweep: each trial its own setting (n=1), the best one from optimization_results.yaml."""
    sweep = tmp_path / "optuna"
    trials = [(2.5, 0.61, 0.93), (7.25, 0.83, 0.97), (5.0, 0.55, 0.95)]  # temperature, kd weight, val acc
    for job, (temp, kd, val) in enumerate(trials):
        overrides = [f"distill.temperature={temp}", f"distill.losses.kd.weight={kd}", *COMMON]
        make_job(sweep / str(job), overrides, distill_record(overrides, 0, val - 0.01, val, 0.2, baseline={}))
    best = {"distill.temperature": 7.25, "distill.losses.kd.weight": 0.83}
    (sweep / "optimization_results.yaml").write_text(
        yaml.safe_dump({"name": "optuna", "best_params": best, "best_value": 0.97})
    )
    out = tmp_path / "report"

    report = write_report(sweep, out)

    assert report.keys == ["distill.temperature", "distill.losses.kd.weight"]
    assert [len(row.jobs) for row in report.rows] == [1, 1, 1]
    assert [row.stats("val/acc_best") for row in report.rows] == [(0.93, 0.0), (0.95, 0.0), (0.97, 0.0)]
    text = (out / "report.md").read_text()
    assert table_line(text, "7.25")[4] == "97.00 ± 0.00"  # val acc best, n=1
    assert "Optuna best trial (job folder 1)" in text
    assert "value 0.9700" in text
    for name in ("acc_vs_distill.temperature", "acc_vs_distill.losses.kd.weight", "acc_vs_params"):
        assert (out / f"{name}.png").read_bytes()[:8] == PNG_SIGNATURE
    assert not (sweep / "report.md").exists()  # --out leaves the sweep folder alone
    assert "Same student from scratch" not in text  # no job knew a scratch baseline
    assert "No from-scratch baseline found for student recipe `1df3e6693a055c7c`" in text


def test_missing_overrides_file_falls_back_to_the_records(tmp_path):
    for job, temp in enumerate((1, 4)):
        overrides = [f"distill.temperature={temp}"]
        distill_record(overrides, 0, 0.9, 0.9, 0.1).write(tmp_path / str(job))  # no .hydra/
    assert swept_keys(load_jobs(tmp_path)) == ["distill.temperature"]


def test_records_overrides_win_over_hydras_file(tmp_path, make_job):
    """The record is the job's own account; Hydra's file is read only where the record has none."""
    overrides = ["distill.temperature=4", "seed=0"]
    make_job(tmp_path / "0", ["distill.temperature=1", "seed=0"], distill_record(overrides, 0, 0.9, 0.9, 0.1))
    (job,) = load_jobs(tmp_path)
    assert job.overrides == {"distill.temperature": "4", "seed": "0"}


def test_no_record_is_a_clear_error(tmp_path, make_job):
    make_job(tmp_path / "sweep" / "0", [*COMMON, "distill.temperature=1"], None)
    with pytest.raises(
        FileNotFoundError, match=r"(?s)No metrics.json under .*sweep.*started 1 job folder there.*may still be running"
    ):
        write_report(tmp_path / "sweep")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        write_report(tmp_path / "no_such_sweep")
    assert not (tmp_path / "no_such_sweep").exists()


def test_jobs_come_in_job_number_order(tmp_path, make_job):
    for job in (10, 2, 1):
        overrides = [f"distill.temperature={job}"]
        make_job(tmp_path / str(job), overrides, distill_record(overrides, 0, 0.9, 0.9, 0.1))
    assert [job.name for job in load_jobs(Path(tmp_path))] == ["1", "2", "10"]


def test_an_ensemble_sweep_shows_each_members_accuracy(tmp_path, make_job):
    sweep = tmp_path / "ensemble"
    for job, (temp, seed) in enumerate([(2, 0), (2, 1), (4, 0)]):
        overrides = [f"distill.temperature={temp}", f"seed={seed}", *COMMON]
        record = distill_record(overrides, seed, 0.95, 0.96, 0.1)
        record.metrics.update({"test/member0_acc": 0.97 + 0.01 * seed, "test/member1_acc": 0.96})
        record.members = [TeacherRef(f"m{i}.safetensors", f"{i}" * 64) for i in range(2)]
        record.combine = {"mode": "mean_probs", "temperature": float(temp), "weights": None, "scored_at": 1.0}
        make_job(sweep / str(job), overrides, record)

    text = write_report(sweep).table
    header = [cell.strip() for cell in text.splitlines()[0].strip("|").split("|")]
    # scored at T=1 in every job, whatever distill.temperature the row distilled at: the run summary's label
    assert header[4:7] == ["ensemble acc (%, mean_probs at T=1)", "member 0 acc (%)", "member 1 acc (%)"]
    assert table_line(text, "2")[4:7] == ["98.10", "97.50", "96.00"]  # member 0: mean of 97 and 98

    record.combine = None  # a record from before kdlab recorded how: no label claims a T
    record.write(sweep / "2")
    assert write_report(sweep).table.splitlines()[0].split("|")[5].strip() == "ensemble acc (%)"
