"""The inner-loop tier (`make test-unit`) stays seconds: what builds the exported run is never in it."""

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def collected(marks: str, path: str) -> list[str]:
    """The node ids `pytest -m <marks> <path>` would run, from a collect-only subprocess."""
    out = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider", "-m",
                          marks, path], cwd=ROOT, capture_output=True, text=True, timeout=300)  # fmt: skip
    assert out.returncode == 0, out.stdout + out.stderr
    return [line for line in out.stdout.splitlines() if "::" in line]


@pytest.mark.slow
def test_the_unit_tier_leaves_out_every_test_of_the_exported_run_and_keeps_the_rest():
    path = "tests/deploy/test_deploy_command.py"
    unit = collected("unit and not heavy", path)
    heavy = collected("heavy", path)
    # test_report_has_every_row is marked unit alone; it reads the session's exported run (seconds to build).
    assert f"{path}::test_report_has_every_row" in heavy
    assert f"{path}::test_report_has_every_row" not in unit
    assert f"{path}::test_threads_option" in unit  # a test of that module that builds nothing stays in
    assert not set(unit) & set(heavy)
