"""Everything a test pass accumulates for error analysis, and the numbers it ends with.

Per batch only tensor ops run (argmax, softmax, index_add_): no `.item()`, no host sync. At the
end every state is summed across DDP ranks once, so each test image counts exactly once when the
sampler splits the test set without repeats (kdlab's datamodules do).
"""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn
from torchmetrics import Metric

from kdlab.analysis.calibration import N_BINS, CalibrationBins, expected_calibration_error, reliability_table, top1
from kdlab.analysis.confusion import ConfusionCounts, accuracy, per_class_accuracy


def synced_states(metric: Metric, **sync: Any) -> dict[str, Tensor]:
    """The metric's states summed over all ranks (a collective: every rank must call it), local ones kept.

    `sync` goes to `Metric.sync_context` (tests pass `dist_sync_fn`/`distributed_available` to
    stand in for a process group). Unlike `compute()`, this reads a never-updated metric without a warning.
    """
    with metric.sync_context(**sync):
        return {name: state.detach().cpu().clone() for name, state in metric.metric_state.items()}


def model_summary(confusion: dict[str, Tensor], calibration: dict[str, Tensor]) -> dict[str, Any]:
    """One model's numbers, as plain JSON-ready values."""
    counts = confusion["counts"]
    bins = (calibration["count"], calibration["confidence_sum"], calibration["correct"])
    return {
        "acc": accuracy(counts),
        "ece": expected_calibration_error(*bins),
        "per_class_acc": per_class_accuracy(counts),
        "confusion": counts.tolist(),  # rows: true class, columns: predicted class
        "reliability": reliability_table(*bins),
    }


class PredictionStats(nn.Module):
    """Confusion and calibration of the student (and teacher), and how often the two disagree."""

    def __init__(self, num_classes: int, n_bins: int = N_BINS) -> None:
        super().__init__()
        self.n_bins = n_bins
        self.metrics = nn.ModuleDict(
            {
                "student_confusion": ConfusionCounts(num_classes),
                "student_calibration": CalibrationBins(n_bins),
                "teacher_confusion": ConfusionCounts(num_classes),
                "teacher_calibration": CalibrationBins(n_bins),
                "agreement": ConfusionCounts(num_classes),  # rows: teacher's prediction, columns: student's
            }
        )

    def update(self, student_logits: Tensor, target: Tensor, teacher_logits: Tensor | None = None):
        """Add one batch; returns the (student, teacher) predictions (teacher None without one)."""
        m = self.metrics
        s_conf, s_pred = top1(student_logits)
        m["student_confusion"].update(s_pred, target)
        m["student_calibration"].update(s_conf, s_pred == target)
        if teacher_logits is None:
            return s_pred, None
        t_conf, t_pred = top1(teacher_logits)
        m["teacher_confusion"].update(t_pred, target)
        m["teacher_calibration"].update(t_conf, t_pred == target)
        m["agreement"].update(s_pred, t_pred)
        return s_pred, t_pred

    def reset(self) -> None:
        for metric in self.metrics.values():
            metric.reset()

    def results(self, **sync: Any) -> dict[str, Any]:
        """The numbers over all ranks' images (a collective: call it on every rank).

        {"n_test", "n_bins", "student": {...}} plus "teacher", "disagreements" and "agreement"
        when teacher logits were seen on any rank; see `model_summary` for a model's keys.
        """
        states = {name: synced_states(metric, **sync) for name, metric in self.metrics.items()}
        out: dict[str, Any] = {
            "n_test": int(states["student_calibration"]["count"].sum()),
            "n_bins": self.n_bins,
            "student": model_summary(states["student_confusion"], states["student_calibration"]),
        }
        if int(states["teacher_calibration"]["count"].sum()):
            agreement = states["agreement"]["counts"]
            total, agreed = int(agreement.sum()), int(agreement.trace())
            out["teacher"] = model_summary(states["teacher_confusion"], states["teacher_calibration"])
            out["disagreements"] = total - agreed
            out["agreement"] = agreed / total
        return out
