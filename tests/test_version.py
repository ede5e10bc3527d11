"""One version source: what pyproject.toml says is what every identity, record and export carries."""

import re
from pathlib import Path

import pytest

import kdlab
from kdlab.identity import code_versions

pytestmark = pytest.mark.unit


def test_the_package_version_is_pyprojects():
    pyproject = (Path(__file__).resolve().parents[1] / "pyproject.toml").read_text()
    declared = re.search(r'^version = "([^"]+)"', pyproject, flags=re.M).group(1)  # [project]'s (tomllib: 3.11+)
    assert kdlab.__version__ == declared
    assert code_versions()["kdlab"] == declared  # stamped into every run identity and teacher key
