"""scripts/results.py: the README's tables from finished sweeps, checked against values computed by hand.

No training: the sweeps are hand-made folders (tests/report/sweep_builders.py) where the script looks for them.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.append(str(REPO / "tests" / "report"))  # sweep_builders, when this file runs alone
from script_loader import script_module  # noqa: E402
from sweep_builders import COMMON, distill_record, write_job  # noqa: E402

pytestmark = pytest.mark.unit


def _results_module():
    return script_module("results")


def _sweep(folder: Path, method: str | None, accs: list[float], swept: list[str]) -> None:
    for seed, acc in enumerate(accs):
        overrides = [*COMMON, *([f"distill={method}"] if method else []), f"seed={seed}"]
        record = distill_record(overrides, seed, acc, acc, 0.1)
        record.swept = swept
        write_job(folder / f"{method or 'all'}{seed}", overrides, record)


@pytest.fixture
def results(tmp_path, monkeypatch):
    module = _results_module()
    monkeypatch.setattr(module, "results_dir", lambda: tmp_path)
    return module


def test_a_pair_table_gives_each_sweeps_interval_and_its_paired_difference_to_the_reference(results, tmp_path):
    _sweep(tmp_path / "a_scratch", None, [0.990, 0.991, 0.989], ["seed"])
    _sweep(tmp_path / "a_distill", None, [0.992, 0.992, 0.990], ["seed"])
    table = results.Table(
        "t",
        "A pair",
        (results.Sweep("a_scratch", "alone", ("x",)), results.Sweep("a_distill", "distilled", ("y",))),
        reference="a_scratch",
    )
    lines = results.render(table)
    # distilled - alone: +0.2, +0.1, +0.1 points: mean 0.133333, half 4.302653 * 0.057735 / sqrt(3) = 0.143422
    # distilled: 99.1333 ± 4.302653 * 0.11547 / sqrt(3) = 0.286843; alone: 99.00 ± 0.248414
    assert "| alone | 99.00 ± 0.25 | 3 | 98.10 | 11 s | - |" in lines
    assert "| distilled | 99.13 ± 0.29 | 3 | 98.10 | 11 s | +0.13 [-0.01, +0.28] |" in lines
    assert "python train.py -m y" in lines
    # errors of 10,000: alone 100, 90, 110: mean 100, half 4.302653 * 10 / sqrt(3) = 24.84; teacher 98.10% = 190
    paper = results.Table("p", "P", table.sweeps, reference="a_scratch", test_images=10_000, paper=("146", "74"))
    assert "| alone | 99.00 ± 0.25 | 100.0 ± 24.8 | 3 | 98.10 (190 errors) | 11 s | - | 146 |" in results.render(paper)


def test_a_rows_wall_time_is_the_median_job_not_the_mean_with_the_job_that_trained_the_teacher(results, tmp_path):
    _sweep(tmp_path / "a_scratch", None, [0.990, 0.991, 0.989], ["seed"])
    _sweep(tmp_path / "a_distill", None, [0.992, 0.992, 0.990], ["seed"])
    first = tmp_path / "a_distill" / "all0" / "metrics.json"  # seed 0 trained the teacher: 1000 s, not 10 s
    first.write_text(first.read_text().replace('"wall_time_s": 10.0', '"wall_time_s": 1000.0'))
    sweeps = (results.Sweep("a_scratch", "alone", ("x",)), results.Sweep("a_distill", "distilled", ("y",)))
    lines = results.render(results.Table("t", "A pair", sweeps, reference="a_scratch"))
    # distilled jobs: 1000, 11, 12 s: median 12 s (the mean, 341 s, is no run's cost)
    assert "| distilled | 99.13 ± 0.29 | 3 | 98.10 | 12 s | +0.13 [-0.01, +0.28] |" in lines
    assert any("median wall time per run" in line for line in lines)


def test_each_row_of_a_fast_table_is_paired_with_its_own_standard_recipe(results, tmp_path):
    for name, accs in {"t": [0.990, 0.991, 0.989], "t_fast": [0.991, 0.990, 0.990],
                       "s": [0.980, 0.982, 0.981], "s_fast": [0.978, 0.980, 0.979]}.items():  # fmt: skip
        _sweep(tmp_path / name, None, accs, ["seed"])
    sweeps = tuple(results.Sweep(name, name, ("x",)) for name in ("t", "t_fast", "s", "s_fast"))
    table = results.Table("f", "F", sweeps, against=(("t_fast", "t"), ("s_fast", "s")))
    lines = results.render(table)
    # t_fast - t: +0.1, -0.1, +0.1 points: mean 0.033333, sd 0.11547, half 4.302653 * 0.11547 / sqrt(3) = 0.286843
    assert "| t_fast | 99.03 ± 0.14 | 3 | 98.10 | 11 s | +0.03 [-0.25, +0.32] |" in lines
    # s_fast - s: -0.2 each seed: no spread, so the interval is the point
    assert "| s_fast | 97.90 ± 0.25 | 3 | 98.10 | 11 s | -0.20 [-0.20, -0.20] |" in lines
    assert "| t | 99.00 ± 0.25 | 3 | 98.10 | 11 s | - |" in lines  # a standard row is nobody's difference
    assert any("minus its standard recipe" in line for line in lines)


@pytest.mark.heavy
def test_a_method_table_is_the_reports_ranking_and_an_unfinished_sweep_writes_no_table(results, tmp_path):
    for method, accs in {"kd": [0.990, 0.991, 0.989], "nkd": [0.985, 0.987, 0.986]}.items():
        _sweep(tmp_path / "zoo", method, accs, ["distill", "seed"])
    table = results.Table(
        "z", "Zoo", (results.Sweep("zoo", "zoo", ("experiment=zoo_mlp",)),), rank_against="distill=kd"
    )
    assert "| 1 | distill=nkd | 98.60 ± 0.25 | -0.40 [-0.65, -0.15] | 3 | distill=kd better |" in results.render(table)
    _sweep(tmp_path / "alone", None, [0.989, 0.988, 0.989], ["seed"])
    alone = results.Sweep("alone", "student alone", ("x",))
    with_alone = results.Table("z", "Zoo", (*table.sweeps, alone), rank_against="distill=kd")
    # kd minus alone: +0.1, +0.3, +0.0 points: mean 0.133333, sd 0.152753, half 4.302653 * 0.152753 / sqrt(3) = 0.379
    # alone: 98.8667 ± 4.302653 * 0.057735 / sqrt(3) = 0.143422
    assert (
        "The student alone: 98.87 ± 0.14% (n=3); `distill=kd` minus it, paired: +0.13 [-0.25, +0.51] points."
        in results.render(with_alone)
    )
    write_job(tmp_path / "zoo" / "9", [*COMMON, "distill=crd", "seed=0"], None)  # a job that never finished
    with pytest.raises(SystemExit, match=r"jobs that did not finish \(9\)"):
        results.render(table)
    write_job(tmp_path / "a_scratch" / "9", [*COMMON, "seed=9"], None)
    _sweep(tmp_path / "a_scratch", None, [0.99], ["seed"])
    pair = results.Table("t", "T", (results.Sweep("a_scratch", "alone", ("x",)),))
    with pytest.raises(SystemExit, match="jobs that did not finish"):
        results.render(pair)


def test_the_readme_block_between_its_markers_is_replaced_and_nothing_else(results):
    text = "head\n<!-- results:zoo -->\nold\n<!-- /results:zoo -->\ntail\n"
    assert results.replace_block(text, "zoo", ["new", "lines"]) == (
        "head\n<!-- results:zoo -->\nnew\nlines\n<!-- /results:zoo -->\ntail\n"
    )
    assert results.replace_block(text, "mlp", ["x"]) == text  # no markers: untouched


def test_a_sweep_that_two_tables_show_under_their_own_labels_runs_once(results, monkeypatch):
    ran = []
    monkeypatch.setattr(results, "run_sweep", lambda sweep: ran.append(sweep.name) or 0)
    monkeypatch.setattr(results, "render", lambda table: [])
    assert results.main(["--only", "digits", "--only", "fast"]) == 0
    # the digits table's "student alone" is the fast table's "digits: student alone": one folder, one sweep
    assert ran.count("digits_scratch") == 1 and ran.count("digits_distill") == 1
    assert len(ran) == len(set(ran)) and "digits_distill_fast" in ran
