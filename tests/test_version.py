"""One version source: what pyproject.toml says is what every identity, record and export carries."""

import tomllib
from pathlib import Path

import pytest

import kdlab
from kdlab.identity import code_versions

pytestmark = pytest.mark.unit


def test_the_package_version_is_pyprojects():
    declared = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())["project"]["version"]
    assert kdlab.__version__ == declared
    assert code_versions()["kdlab"] == declared  # stamped into every run identity and teacher key
