"""Lightning's "no profiler" at no cost.

Lightning wraps every hook call in `with trainer.profiler.profile(name):`. Its default, the
PassThroughProfiler, builds a generator-based context manager and calls start/stop for each one:
~34 times a training step, ~0.1 ms of a small MLP's 3-4 ms step on CPU. NoProfiler profiles just as
little with one shared null context. A profiler the user configured (`trainer.profiler=simple`) is kept.
"""

from __future__ import annotations

import contextlib

from lightning.pytorch.profilers import PassThroughProfiler

_NOTHING = contextlib.nullcontext()


class NoProfiler(PassThroughProfiler):
    def profile(self, action_name: str) -> contextlib.AbstractContextManager:  # type: ignore[override]
        return _NOTHING


def skip_profiling(trainer) -> None:
    """Swap the trainer's default no-op profiler for the free one; any other profiler stays."""
    if type(trainer.profiler) is PassThroughProfiler:
        trainer.profiler = NoProfiler()
