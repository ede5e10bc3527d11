"""SIGTERM (what SLURM sends on preemption) and Ctrl+C: stop at a step boundary, save, exit non-zero.

During `trainer.fit` Lightning's own SIGTERM handler stops the loop cleanly after the current step
(raising SIGTERMException, a SystemExit with code 0 unless caught). Ctrl+C is routed through the
same path, so both end with a consistent checkpoint at the interrupt; outside fit (data download,
teacher provisioning, test) the handler raises `Interrupted` at once.

A signal during validation is passed on only once that validation has ended. Lightning would stop
after the current validation batch, and a run resumed from there never finishes that validation:
the epoch's val/acc, its checkpoint and its place in val/acc_best would be missing.
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
        self._lightning_sigterm = None  # Lightning's SIGTERM handler of the fit under way
        self._validating = False
        self._held: int | None = None  # a signal that came during validation, passed on at its end

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

    def _handle_in_fit(self, signum: int, frame) -> None:
        """In front of Lightning's SIGTERM handler from the start of training: holds a signal during validation."""
        if self._validating:
            self._held = signum
        elif self._lightning_sigterm is not None:
            self._lightning_sigterm(signum, frame)
        else:
            self._handle(signum, frame)

    # -- the Trainer's side ------------------------------------------------------------------------------
    def on_fit_start(self, trainer, pl_module) -> None:
        self.in_fit = True
        self._lightning_sigterm = None

    def on_train_start(self, trainer, pl_module) -> None:
        # Lightning has installed its SIGTERM handler for this fit; it puts back the one before at the end
        handler = signal.getsignal(signal.SIGTERM)
        if threading.current_thread() is threading.main_thread() and callable(handler):
            self._lightning_sigterm = handler
            signal.signal(signal.SIGTERM, self._handle_in_fit)

    def on_validation_start(self, trainer, pl_module) -> None:
        self._validating = self._lightning_sigterm is not None and not trainer.sanity_checking

    def on_validation_end(self, trainer, pl_module) -> None:
        self._validating = False
        if (signum := self._held) is not None:
            self._held = None
            self._lightning_sigterm(signum, None)  # Lightning stops at the next step or epoch boundary

    def on_fit_end(self, trainer, pl_module) -> None:
        self.in_fit = self._validating = False

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        self.in_fit = self._validating = False
        if isinstance(exception, SIGTERMException):
            # At a step boundary: a consistent state to continue from (every rank takes part).
            self.checkpoint = self.dirpath / INTERRUPT_CHECKPOINT
            trainer.save_checkpoint(self.checkpoint)

    def interrupted(self) -> Interrupted | None:
        """The Interrupted to raise after fit stopped on a signal, or None."""
        if self.signum is None:
            return None
        return Interrupted(self.signum, self.checkpoint)
