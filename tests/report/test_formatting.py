"""How numbers read, and how point labels fan out: pure functions, no files."""

import itertools
import math

import pytest

from kdlab.report.formatting import mean_std_percent, number, percent, seeds
from kdlab.report.plots import spread


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (0.1234, "0.1234"),
        (0.001, "0.0010"),  # still two significant digits in fixed point
        (5e-05, "5.0e-05"),  # not "0.0001", not a crash
        (0.00099, "9.9e-04"),
        (-5e-05, "-5.0e-05"),
        (0.0, "0.0000"),
        (12.5, "12.5000"),
        (None, "-"),
        (math.nan, "-"),
        (math.inf, "-"),
    ],
)
def test_number(value, text):
    assert number(value) == text


def test_percentages():
    assert percent(0.98123) == "98.12"
    assert percent(None) == "-"
    assert mean_std_percent((0.956, 0.00557)) == "95.60 ± 0.56"
    assert mean_std_percent((0.9892, 0.00086)) == "98.92 ± 0.09"  # a small std reads like the mean, not 8.6e-02
    assert mean_std_percent(None) == "-"
    assert seeds([10, 2, 0, 2]) == "0, 2, 10"


@pytest.mark.parametrize("wanted", [[0.5] * 6, [0.97, 0.98, 0.99], [0.01, 0.0, 0.02, 0.5], [0.3, 0.9, 0.1]])
def test_spread_keeps_labels_apart_inside_the_axes_and_in_order(wanted):
    gap = 0.1
    heights = spread(wanted, gap)
    for a, b in itertools.combinations(heights, 2):
        assert abs(a - b) >= gap - 1e-9
    assert all(0.02 - 1e-9 <= h <= 0.98 + 1e-9 for h in heights)
    order = sorted(range(len(wanted)), key=wanted.__getitem__)
    assert [heights[i] for i in order] == sorted(heights)  # a lower point never gets a higher label


def test_spread_leaves_labels_that_fit_where_they_are():
    assert spread([0.2, 0.5, 0.8], 0.1) == [0.2, 0.5, 0.8]
