"""Test-time error analysis: per-class accuracy, confusion, calibration, student-teacher disagreements."""

from kdlab.analysis.calibration import (
    N_BINS,
    CalibrationBins,
    bin_index,
    expected_calibration_error,
    reliability_table,
    top1,
)
from kdlab.analysis.callback import TestAnalysis, log_images
from kdlab.analysis.confusion import ConfusionCounts, accuracy, per_class_accuracy
from kdlab.analysis.stats import PredictionStats, model_summary, synced_states

__all__ = [
    "N_BINS",
    "CalibrationBins",
    "ConfusionCounts",
    "PredictionStats",
    "TestAnalysis",
    "accuracy",
    "bin_index",
    "expected_calibration_error",
    "log_images",
    "model_summary",
    "per_class_accuracy",
    "reliability_table",
    "synced_states",
    "top1",
]
