"""scripts/runs.py lists a run whose process died without a word (kill -9) as killed, a live one as running."""

import pytest

from kdlab.listing import run_rows
from kdlab.record import RunRecord
from kdlab.run.folder import claim

pytestmark = pytest.mark.unit


def test_a_running_record_without_its_process_is_listed_as_killed(tmp_path):
    held = {name: claim(tmp_path / name / "runs" / "0") for name in ("dead", "alive")}  # as train() claims
    for name, folder in held.items():
        RunRecord(name=name, kind="supervised", status="running").write(folder.folder)
    held["dead"].release()  # what the OS does for a process killed with kill -9
    _, rows = run_rows(tmp_path)
    held["alive"].release()
    assert {row[0]: row[1] for row in rows} == {"dead": "killed", "alive": "running"}
