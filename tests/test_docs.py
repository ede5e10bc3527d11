"""Every `python train.py ...` command in the README and docs composes: a newcomer can paste it."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from kdlab.config import compose_config

pytestmark = pytest.mark.unit
REPO = Path(__file__).resolve().parents[1]
PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]


def commands(page: Path) -> list[str]:
    """The `python train.py` commands in the page's code blocks, continuation lines joined, comments dropped."""
    found, blocks = [], re.findall(r"```bash\n(.*?)```", page.read_text(), flags=re.S)
    for block in blocks:
        for command in block.replace("\\\n", " ").splitlines():
            command = command.split(" # ")[0].strip()
            if command.startswith("python train.py"):
                found.append(command)
    return found


ALL = [(page.name, command) for page in PAGES for command in commands(page)]


def test_the_pages_hold_commands_to_check():
    assert len(ALL) >= 8 and {name for name, _ in ALL} >= {"README.md", "reliability.md"}


def one_job(args: list[str]) -> list[str]:
    """A multirun's first job: each swept key at its first value (what `-m` would run first)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parser, job = OverridesParser.create(), []
    for arg in args:
        override = parser.parse_overrides([arg])[0]
        first = next(override.sweep_string_iterator()) if override.is_sweep_override() else None
        job.append(arg if first is None else f"{override.get_key_element()}={first}")
    return job


@pytest.mark.heavy
@pytest.mark.parametrize(("page", "command"), ALL, ids=[f"{name}:{i}" for i, (name, _) in enumerate(ALL)])
def test_every_train_command_in_the_docs_composes(page, command):
    command = re.sub(r"<time>", "2026-01-01_00-00-00-000000", command)  # what a reader types for the placeholder
    args = [arg for arg in shlex.split(command)[2:] if arg not in ("-m", "--multirun")]
    cfg = compose_config(one_job(args))
    assert cfg.name  # composed, every override applied
