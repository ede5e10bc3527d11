"""Freed tensor memory is reused, not faulted in again at every step; the user's allocator choice stands."""

from __future__ import annotations

import subprocess
import sys

import pytest

from kdlab import allocator

# A step's worth of churn: eight 2 MiB tensors freed together, twenty times; prints the page faults it took.
CHURN = """
import resource, sys, torch
from kdlab.allocator import keep_freed_memory
print(keep_freed_memory(sys.argv[1]))
def rounds(n):
    for _ in range(n):
        blocks = [torch.ones(1 << 19) for _ in range(8)]
        del blocks
rounds(3)
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
rounds(20)
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def churn(setting: str) -> tuple[str, int]:
    env = {"PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1"}  # none of the MALLOC_* a user may have set
    done = subprocess.run([sys.executable, "-c", CHURN, setting], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    said, faults = done.stdout.strip().splitlines()
    return said, int(faults)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc")
def test_tuned_malloc_reuses_freed_blocks_where_glibc_faults_them_in_again():
    said, faults = churn("tuned")
    assert "kept for reuse" in said and faults < 20, (said, faults)
    # glibc's own: the 16 MiB go back to the OS and are faulted in again (4 KiB a fault). Not in every process:
    # where the heap's layout keeps them from its top (~1 run in 8 here), none is returned. So: the most of 3.
    runs = [churn("default") for _ in range(3)]
    most = max(faults for _, faults in runs)
    assert "default" in runs[0][0] and most > 200, runs


@pytest.mark.parametrize(
    ("variable", "value", "expected"),
    [
        ("LD_PRELOAD", "/usr/lib/x86_64-linux-gnu/libjemalloc.so.2", "jemalloc (preloaded), left alone"),
        ("MALLOC_TRIM_THRESHOLD_", "1000000", "as MALLOC_TRIM_THRESHOLD_ sets it, left alone"),
    ],
)
def test_an_allocator_chosen_in_the_environment_is_left_alone(monkeypatch, variable, value, expected):
    monkeypatch.setenv(variable, value)
    monkeypatch.setattr(allocator, "_DONE", None)
    monkeypatch.setattr(allocator.ctypes, "CDLL", lambda name: pytest.fail("mallopt called"))
    assert allocator.keep_freed_memory("tuned").endswith(expected)


def test_a_wrong_setting_is_refused_with_the_choices():
    with pytest.raises(ValueError, match=r"runtime.malloc='fast'.*`tuned`.*`default`"):
        allocator.keep_freed_memory("fast")
