"""SIGTERM (what SLURM sends on preemption) and Ctrl+C: stop at a step boundary, save, exit non-zero.

During `trainer.fit` Lightning's own SIGTERM handler stops the loop cleanly after the current step
(raising SIGTERMException, a SystemExit with code 0 unless caught). Ctrl+C is routed through the
same path, so both end with a consistent checkpoint at the interrupt; outside fit (data download,
teacher provisioning, test) the handler raises `Interrupted` at once.
"""

from __future__ import annotations

import os
import signal
import threading
from pathlib import Path

import lightning as L
from lightning.pytorch.utilities.exceptions import SIGTERMException

INTERRUPT_CHECKPOINT = "interrupted.ckpt"


class Interrupted(BaseException):  # noqa: N818 - like KeyboardInterrupt: not caught by `except Exception`
    """The run was stopped by a signal; `exit_code` is the shell's convention (128 + signal number)."""

    def __init__(self, signum: int, checkpoint: Path | None = None) -> None:
        super().__init__(f"interrupted by {signal.Signals(signum).name}")
        self.signum = signum
        self.checkpoint = checkpoint
        self.resume: str | None = None  # the command that continues the run, when there is a checkpoint

    @property
    def exit_code(self) -> int:
        return 128 + self.signum  # 143 for SIGTERM, 130 for SIGINT


class InterruptHandler(L.Callback):
    """Installed for a whole run (a context manager) and attached to its Trainer (a callback)."""

    def __init__(self, dirpath: str | os.PathLike) -> None:
        self.dirpath = Path(dirpath)
        self.signum: int | None = None
        self.checkpoint: Path | None = None
        self.in_fit = False
        self._previous: dict[int, object] = {}

    # -- the process-wide handlers --------------------------------------------------------------------
    def __enter__(self) -> InterruptHandler:
        if threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGTERM, signal.SIGINT):
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous = {}

    def _handle(self, signum: int, frame) -> None:
        if self.signum is None:
            self.signum = signum
        if not self.in_fit:
            raise Interrupted(signum)
        if signum == signal.SIGINT:
            # Lightning stops cleanly on SIGTERM only (a KeyboardInterrupt would land mid-step).
            os.kill(os.getpid(), signal.SIGTERM)

    # -- the Trainer's side ------------------------------------------------------------------------------
    def on_fit_start(self, trainer, pl_module) -> None:
        self.in_fit = True

    def on_fit_end(self, trainer, pl_module) -> None:
        self.in_fit = False

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        self.in_fit = False
        if isinstance(exception, SIGTERMException):
            # At a step boundary: a consistent state to continue from (every rank takes part).
            self.checkpoint = self.dirpath / INTERRUPT_CHECKPOINT
            trainer.save_checkpoint(self.checkpoint)

    def interrupted(self) -> Interrupted | None:
        """The Interrupted to raise after fit stopped on a signal, or None."""
        if self.signum is None:
            return None
        return Interrupted(self.signum, self.checkpoint)
