"""Lightning callbacks kdlab adds to every run: resume state, interrupts, progress lines, TensorBoard, trackers."""

from kdlab.callbacks.epoch_lines import EpochLines
from kdlab.callbacks.hparams import TensorBoardSession
from kdlab.callbacks.interrupts import Interrupted, InterruptHandler
from kdlab.callbacks.progress import RichBar
from kdlab.callbacks.resume import ResumeState
from kdlab.callbacks.trackers import TrackerMirror

__all__ = [
    "EpochLines",
    "InterruptHandler",
    "Interrupted",
    "ResumeState",
    "RichBar",
    "TensorBoardSession",
    "TrackerMirror",
]
