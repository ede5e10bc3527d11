"""Paired comparisons over seeds, checked against intervals computed by hand (t-table values to 6 digits)."""

from __future__ import annotations

import math

import pytest
from sweep_builders import COMMON, GRID, STUDENT_KEY, TEST_ACC, distill_record, write_job

from kdlab.record import RunRecord
from kdlab.report import ComparisonError, write_report
from kdlab.report.paired import pair, t_quantile
from kdlab.run.summary import summary_rows

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(
    ("df", "p", "table"),  # Student's t quantiles as printed in any statistics table
    [(1, 0.975, 12.706205), (2, 0.975, 4.302653), (4, 0.975, 2.776445), (9, 0.975, 2.262157), (1, 0.995, 63.656741)],
)
def test_t_quantiles_match_the_table(df, p, table):
    assert t_quantile(df, p) == pytest.approx(table, abs=2e-6)


def test_an_interval_over_zero_reads_no_detectable_difference():
    # d = 0.2, 0.1, 0.3 points: mean 0.2, sd 0.1, half-width 4.302653 * 0.1 / sqrt(3) = 0.248414
    found = pair({0: 0.952, 1: 0.961, 2: 0.903}, {0: 0.950, 1: 0.960, 2: 0.900})
    low, high = found.interval
    assert found.n == 3 and found.mean == pytest.approx(0.002)
    assert (100 * low, 100 * high) == pytest.approx((0.2 - 0.248414, 0.2 + 0.248414), abs=1e-5)
    assert found.describe("distilled", "scratch") == "+0.20 [-0.05, +0.45] points, n=3: no detectable difference"


def test_an_interval_clear_of_zero_names_the_better_side():
    # d = 1.0, 1.2, 1.1, 1.3, 0.9 points: mean 1.1, sd sqrt(0.1/4) = 0.158114, half 2.776445 * 0.158114 / sqrt(5)
    a = {seed: 0.9 + d / 100 for seed, d in enumerate([1.0, 1.2, 1.1, 1.3, 0.9])}
    found = pair(a, dict.fromkeys(range(5), 0.9))
    half = 2.776445 * math.sqrt(0.1 / 4) / math.sqrt(5)
    assert [100 * x for x in found.interval] == pytest.approx([1.1 - half, 1.1 + half], abs=1e-6)
    assert found.verdict("T=4", "T=8") == "T=4 better"
    assert pair(dict.fromkeys(range(5), 0.9), a).verdict("T=4", "T=8") == "T=8 better"


def test_a_bound_clear_of_zero_that_rounds_to_it_keeps_a_third_decimal():
    # the flagship's seeds: +0.17, +0.01, +0.04, +0.17, +0.09 points: mean 0.096, sd 0.073348, half 0.091073
    paired = pair(
        {s: 0.99 + d / 100 for s, d in enumerate([0.17, 0.01, 0.04, 0.17, 0.09])}, dict.fromkeys(range(5), 0.99)
    )
    assert paired.describe("distilled", "scratch") == "+0.10 [+0.005, +0.19] points, n=5: distilled better"


def test_one_seed_has_no_interval_and_no_shared_seed_no_pair():
    assert pair({0: 0.99}, {0: 0.98}).describe() == "+1.00 points, n=1: one seed, no interval"
    assert pair({0: 0.99}, {1: 0.98}) is None


def _baseline(by_seed: dict[int, float]) -> dict:
    accs = list(by_seed.values())
    mean = sum(accs) / len(accs)
    std = math.sqrt(sum((a - mean) ** 2 for a in accs) / (len(accs) - 1))
    by_text = {str(seed): acc for seed, acc in by_seed.items()}
    return {"mean": mean, "std": std, "runs": len(accs), "seeds": list(by_seed), "by_seed": by_text}


@pytest.fixture
def sweep_with_baseline(tmp_path):
    """The 2-temperature x 3-seed grid, its jobs having found scratch runs of seeds 0, 1, 2 and 3."""
    sweep = tmp_path / "multirun" / "t"
    baseline = _baseline({0: 0.950, 1: 0.940, 2: 0.960, 3: 0.999})  # seed 3: no distilled partner
    for job, (temp, seed) in enumerate(GRID):
        overrides = [*COMMON, f"distill.temperature={temp}", f"seed={seed}"]
        record = distill_record(overrides, seed, TEST_ACC[job], 0.9, 0.1, baseline=baseline)
        write_job(sweep / str(job), overrides, record)
    return sweep


@pytest.mark.heavy
def test_every_distilled_setting_is_paired_with_the_scratch_run_of_each_seed(sweep_with_baseline):
    report = write_report(sweep_with_baseline)
    # T=2: 0.955-0.950, 0.951-0.940, 0.962-0.960 = 0.5, 1.1, 0.2 points: mean 0.6, sd 0.458258, half 1.138371
    # T=10: 0.912-0.950, 0.921-0.940, 0.905-0.960 = -3.8, -1.9, -5.5: mean -3.733333, sd 1.800926, half 4.473786
    two = "distill.temperature=2 minus from scratch, test acc: +0.60 [-0.54, +1.74] points, n=3"
    ten = "distill.temperature=10 minus from scratch, test acc: -3.73 [-8.21, +0.74] points, n=3"
    for line in (two, ten):
        assert f"- {line}: no detectable difference (seed 3 has no partner, left out)" in report.text
    assert "+0.60 [-0.54, +1.74]" in report.table and "-3.73 [-8.21, +0.74]" in report.table
    assert "vs scratch, paired (points, 95% CI)" in report.table


@pytest.mark.heavy
def test_two_named_settings_are_paired_seed_by_seed(grid_sweep):
    report = write_report(grid_sweep, compare_settings=[("distill.temperature=2", "distill.temperature=10")])
    # 4.3, 3.0, 5.7 points: mean 4.333333, sd 1.350309, half 4.302653 * 1.350309 / sqrt(3) = 3.354339
    assert (
        "- distill.temperature=2 minus distill.temperature=10, test acc: +4.33 [+0.98, +7.69] points, n=3: "
        "distill.temperature=2 better" in report.text
    )


@pytest.mark.parametrize(
    ("a", "why"),
    [("distill.losses.kd.weight=0.5", "is not swept here"), ("distill.temperature=7", "matches 0 rows")],
)
def test_a_setting_that_names_no_single_row_is_refused_before_anything_is_written(grid_sweep, a, why):
    with pytest.raises(ComparisonError, match=why) as refused:
        write_report(grid_sweep, compare_settings=[(a, "distill.temperature=10")])
    assert "distill.temperature=2; distill.temperature=10" in str(refused.value)  # the rows there are
    assert not (grid_sweep / "report.md").exists()


def _scratch_sweep(folder, accs: dict[int, float], smoke: bool = False):
    for job, (seed, acc) in enumerate(accs.items()):
        overrides = ["experiment=student_scratch_mlp", f"seed={seed}"]
        record = RunRecord(name="student_scratch_mlp", kind="supervised", status="smoke" if smoke else "ok", seed=seed,
                           metrics={"test/acc": acc, "val/acc_best": acc}, identity={"student": STUDENT_KEY},
                           overrides=overrides, smoke=["debug=fast"] if smoke else [])  # fmt: skip
        write_job(folder / str(job), overrides, record)
    return folder


@pytest.mark.heavy
def test_each_row_is_paired_with_another_sweep_of_the_same_seeds(grid_sweep, tmp_path):
    scratch = _scratch_sweep(tmp_path / "scratch", {0: 0.950, 1: 0.940, 2: 0.960})
    report = write_report(grid_sweep, against=[scratch])
    assert f"- distill.temperature=2 minus `{scratch}`, test acc: +0.60 [-0.54, +1.74] points, n=3" in report.text


def test_smoke_runs_are_paired_only_with_smoke_runs(grid_sweep, tmp_path):
    smoke_only = _scratch_sweep(tmp_path / "smoke", {0: 0.5, 1: 0.5, 2: 0.5}, smoke=True)
    with pytest.raises(ComparisonError, match="0 candidates"):
        write_report(grid_sweep, against=[smoke_only])


def test_the_run_summary_pairs_a_run_with_the_scratch_run_of_its_seed():
    baseline = _baseline({0: 0.950, 1: 0.940})
    record = distill_record(["seed=1"], 1, 0.9512, 0.9, 0.1, baseline=baseline)
    assert dict(summary_rows(record))["vs scratch, seed 1"] == "+1.12 points (scratch 94.00%)"
    record.smoke, record.status = ["debug=fast"], "smoke"
    assert "vs scratch, seed 1" not in dict(summary_rows(record))


@pytest.fixture
def zoo_sweep(tmp_path):
    """Three methods x 3 seeds, as `distill=kd,dist,nkd seed=0,1,2` numbers its jobs."""
    accs = {"kd": [0.990, 0.991, 0.989], "dist": [0.992, 0.992, 0.990], "nkd": [0.985, 0.987, 0.986]}
    sweep, job = tmp_path / "multirun" / "zoo", 0
    for method, values in accs.items():
        for seed, acc in enumerate(values):
            overrides = [*COMMON, f"distill={method}", f"seed={seed}"]
            record = distill_record(overrides, seed, acc, acc, 0.1)
            record.swept = ["distill", "seed"]
            write_job(sweep / str(job), overrides, record)
            job += 1
    return sweep


@pytest.mark.heavy
def test_a_method_table_ranks_every_row_by_its_paired_difference_to_the_reference(zoo_sweep):
    report = write_report(zoo_sweep, rank_against="distill=kd")
    # dist - kd: +0.2, +0.1, +0.1 points: mean 0.133333, sd 0.057735, half 4.302653 * 0.057735 / sqrt(3) = 0.143422
    # nkd - kd: -0.5, -0.4, -0.3: mean -0.4, sd 0.1, half 0.248414
    # test acc, dist: 99.1333 ± 4.302653 * 0.11547 / sqrt(3) = 0.286843; kd: 99.00 ± 0.248414; nkd: 98.60 ± 0.248414
    lines = report.text.splitlines()
    first = lines.index("| rank | setting | test acc % | minus `distill=kd` (points, 95% CI) | n | verdict |")
    assert lines[first + 2 : first + 5] == [
        "| 1 | distill=dist | 99.13 ± 0.29 | +0.13 [-0.01, +0.28] | 3 | no detectable difference |",
        "| 2 | distill=nkd | 98.60 ± 0.25 | -0.40 [-0.65, -0.15] | 3 | distill=kd better |",
        "| - | distill=kd (reference) | 99.00 ± 0.25 | 0 | 3 | |",
    ]


@pytest.mark.heavy
def test_a_setting_none_of_whose_jobs_finished_is_named_under_the_ranking(zoo_sweep):
    write_job(zoo_sweep / "9", [*COMMON, "distill=crd", "seed=0"], None)  # started, never wrote its record
    lines = write_report(zoo_sweep, rank_against="distill=kd").text.splitlines()
    assert lines[lines.index("| - | distill=kd (reference) | 99.00 ± 0.25 | 0 | 3 | |") + 2] == (
        "Not ranked, no job finished: distill=crd."
    )


def test_a_ranking_refuses_a_reference_that_is_no_row_and_a_row_without_its_seeds(zoo_sweep, tmp_path):
    with pytest.raises(ComparisonError, match="matches 0 rows"):
        write_report(zoo_sweep, rank_against="distill=dkd")
    overrides = [*COMMON, "distill=pkt", "seed=7"]
    record = distill_record(overrides, 7, 0.99, 0.99, 0.1)
    record.swept = ["distill", "seed"]
    write_job(zoo_sweep / "9", overrides, record)
    with pytest.raises(ComparisonError, match=r"distill=pkt shares no seed with `distill=kd` \(seeds 0, 1, 2\)"):
        write_report(zoo_sweep, rank_against="distill=kd")
    assert not (zoo_sweep / "report.md").exists()
