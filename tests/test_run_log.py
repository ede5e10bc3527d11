"""run.log holds what the run said, whether it ran in a terminal (the live bar) or not (epoch lines on the console)."""

import fcntl
import os
import pty
import re
import struct
import subprocess
import sys
import termios
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
ARGS = ["experiment=student_scratch_digits", "trainer.max_epochs=2", "~callbacks.model_summary"]  # digits: offline
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def run_in_terminal(command: list[str], env: dict[str, str]) -> str:
    """Run `command` on a pseudo-terminal of 80 columns, as typed in one; returns what the terminal received."""
    leader, follower = pty.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 80, 0, 0))
    process = subprocess.Popen(command, cwd=REPO, env=env, stdin=follower, stdout=follower, stderr=follower)
    os.close(follower)
    received = bytearray()
    while True:
        try:
            chunk = os.read(leader, 1 << 16)
        except OSError:  # EIO: the process closed the terminal
            break
        if not chunk:
            break
        received += chunk
    os.close(leader)
    assert process.wait(timeout=600) == 0, received.decode(errors="replace")[-3000:]
    return received.decode(errors="replace")


@pytest.mark.slow
@pytest.mark.parametrize("terminal", [True, False], ids=["terminal", "pipe"])
def test_run_log_is_complete_whatever_the_terminal(tmp_path, terminal):
    env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES")}
    env.update(OMP_NUM_THREADS="1", HYDRA_FULL_ERROR="1")
    command = [sys.executable, "train.py", *ARGS, f"paths.root_dir={tmp_path}"]
    if terminal:
        console = ANSI.sub("", run_in_terminal(command, env))
        assert "epoch 2/2" in console and not re.search(r"Epoch \d", console)  # the live bar, counting from 1
    else:
        done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stderr[-3000:]
    (log,) = (tmp_path / "outputs" / "student_scratch_digits" / "runs").glob("*/run.log")
    text = log.read_text()
    for said in (
        "[student_scratch_digits] training for 2 epochs (20 steps each)",  # kdlab's lines
        "[student_scratch_digits] epoch 1/2  train loss ",  # the epoch lines
        "[student_scratch_digits] epoch 2/2  train loss ",
        "`Trainer.fit` stopped: `max_epochs=2` reached.",  # Lightning's
        "kdlab: student_scratch_digits (seed 0)",  # the summary
        "│ test acc ",
    ):
        assert said in text, f"{said!r} is missing from run.log:\n{text}"
    assert text.count(" epoch 1/2 ") == 1  # once, not once per handler
