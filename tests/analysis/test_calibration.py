"""ECE with 15 bins against a hand-computed example and against torchmetrics; the bin convention."""

import math

import pytest
import torch
from torchmetrics.classification import MulticlassCalibrationError

from kdlab.analysis.stats import CalibrationBins, bin_index, expected_calibration_error, reliability_table, top1

# Six predictions. Bins are ((m-1)/15, m/15]; the 1-based bin m = ceil(15 * confidence):
#   0.95, 0.97, 0.98 -> 15*c = 14.25, 14.55, 14.7 -> bin 15 (14/15, 1]      correct: yes, no, yes
#   0.62, 0.65       -> 15*c =  9.3,   9.75       -> bin 10 (0.6, 0.667]   correct: yes, no
#   0.30             -> 15*c =  4.5               -> bin  5 (0.267, 0.333] correct: no
# bin 15: acc 2/3, conf (0.95+0.97+0.98)/3 = 0.96667, gap 0.3,   weight 3/6 -> 0.150
# bin 10: acc 1/2, conf (0.62+0.65)/2     = 0.635,   gap 0.135, weight 2/6 -> 0.045
# bin  5: acc 0,   conf 0.30,                        gap 0.3,   weight 1/6 -> 0.050
# ECE = 0.150 + 0.045 + 0.050 = 0.245
CONFIDENCE = [0.95, 0.97, 0.98, 0.62, 0.65, 0.30]
CORRECT = [True, False, True, True, False, False]
ECE = 0.245


def test_ece_hand_example():
    metric = CalibrationBins(15)
    metric.update(torch.tensor(CONFIDENCE), torch.tensor(CORRECT))
    assert expected_calibration_error(metric.count, metric.confidence_sum, metric.correct) == pytest.approx(
        ECE, abs=1e-7
    )
    assert float(metric.compute()) == pytest.approx(ECE, abs=1e-7)
    table = reliability_table(metric.count, metric.confidence_sum, metric.correct)
    assert [(m, c) for m, c in enumerate(table["count"]) if c] == [(4, 1), (9, 2), (14, 3)]  # 0-based bins
    assert table["accuracy"][14] == pytest.approx(2 / 3)
    assert table["confidence"][9] == pytest.approx(0.635)
    assert table["accuracy"][0] is None and table["confidence"][0] is None  # an empty bin


def test_ece_hand_example_from_logits():
    """The same predictions as 10-class logits: softmax of log(p) is p, class 0 on top; y=0 when correct."""
    rows = [[c] + [(1 - c) / 9] * 9 for c in CONFIDENCE]
    logits = torch.tensor(rows, dtype=torch.float64).log().float() + 3.0  # a shift changes no softmax
    target = torch.tensor([0 if ok else 1 for ok in CORRECT])
    confidence, pred = top1(logits)
    assert pred.tolist() == [0] * 6
    metric = CalibrationBins()
    metric.update(confidence, pred == target)
    assert float(metric.compute()) == pytest.approx(ECE, abs=1e-6)


@pytest.mark.parametrize(
    ("confidence", "bin"),
    [(0.0, 0), (1 / 15 - 1e-6, 0), (0.07, 1), (0.5, 7), (0.5334, 8), (0.9999, 14), (1.0, 14)],
)
def test_bins_are_right_closed_and_cover_zero_to_one(confidence, bin):
    # 0.5 * 15 = 7.5 -> ceil 8 -> bin 7 (0-based) = (7/15, 8/15] = (0.4667, 0.5333]; 0.5334 is past 8/15
    assert bin_index(torch.tensor([confidence]), 15).item() == bin


def test_ece_matches_torchmetrics_on_random_logits():
    """An independent implementation (bins [lo, hi) instead of (lo, hi]: equal off the edges)."""
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(2000, 10, generator=gen) * 3
    target = torch.randint(0, 10, (2000,), generator=gen)
    confidence, pred = top1(logits)
    ours = CalibrationBins(15)
    ours.update(confidence, pred == target)
    theirs = MulticlassCalibrationError(num_classes=10, n_bins=15, norm="l1")(logits, target)
    assert float(ours.compute()) == pytest.approx(float(theirs), abs=1e-5)
    assert float(ours.compute()) > 0.05  # random labels, confident logits: badly calibrated


def test_ece_of_nothing_is_none_and_bad_shapes_are_refused():
    metric = CalibrationBins()
    assert expected_calibration_error(metric.count, metric.confidence_sum, metric.correct) is None
    with pytest.warns(UserWarning, match="before the ``update``"):
        assert math.isnan(float(metric.compute()))
    with pytest.raises(ValueError, match=r"two \[B\] tensors"):
        metric.update(torch.rand(4, 10), torch.ones(4, dtype=torch.bool))
    with pytest.raises(ValueError, match="n_bins must be a positive integer"):
        CalibrationBins(0)
