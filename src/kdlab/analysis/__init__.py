"""Test-time error analysis: per-class accuracy, confusion, calibration, student-teacher disagreements.

stats.py holds the numbers a test pass accumulates, figures.py draws them, callback.py is the
`TestAnalysis` callback every `trainer.test` runs, evaluate.py re-runs it on a finished run folder and
omitted.py is Hinton's omitted-class report.
"""

from kdlab.analysis.callback import TestAnalysis

__all__ = ["TestAnalysis"]
