"""The training-step tally: values stay on the device, one host read per window names the first bad step."""

from __future__ import annotations

import math

import pytest
import torch

from kdlab.modules.tally import DivergenceError, StepTally

pytestmark = pytest.mark.unit


def test_the_tally_names_the_first_non_finite_step_and_term():
    tally = StepTally(["total", "ce", "kd"])
    logits, target = torch.randn(4, 10), torch.arange(4)
    tally.add(0, [torch.tensor(1.0), torch.tensor(0.5), torch.tensor(0.5)], logits, target)
    tally.add(1, [torch.tensor(math.inf), torch.tensor(0.5), torch.tensor(math.inf)], logits, target)
    tally.add(2, [torch.tensor(math.nan), torch.tensor(math.nan), torch.tensor(math.nan)], logits, target)
    with pytest.raises(DivergenceError, match=r"step 1, first in the term\(s\) kd\. .*model\. Try less\.$"):
        tally.fold(lambda: "Try less.")


def test_a_step_never_reads_a_value_back_to_the_host(monkeypatch):
    """No .item(), .tolist() or bool(tensor) in `add`: on a GPU each would stall every step."""
    tally = StepTally(["total"])

    def sync(*args, **kwargs):
        raise AssertionError("host sync in a training step")

    for name in ("item", "tolist", "__bool__", "__float__", "__int__"):
        monkeypatch.setattr(torch.Tensor, name, sync)
    for step in range(3):
        tally.add(step, [torch.tensor(0.5)], torch.randn(8, 10), torch.zeros(8, dtype=torch.long))
    monkeypatch.undo()
    tally.fold()
    means, acc, count = tally.take()
    assert float(means["total"]) == 0.5 and int(count) == 24 and 0 <= float(acc) <= 1


def test_the_epoch_means_are_weighted_by_the_images_of_each_step():
    tally = StepTally(["total"])
    # step 0: 2 images, loss 1, both right; step 1: 6 images, loss 3, none right
    right = torch.eye(10)[:2] * 5
    tally.add(0, [torch.tensor(1.0)], right, torch.arange(2))
    tally.add(1, [torch.tensor(3.0)], torch.eye(10)[:6] * 5, torch.full((6,), 9))
    tally.fold()
    means, acc, count = tally.take()
    assert float(means["total"]) == pytest.approx((2 * 1 + 6 * 3) / 8)  # 2.5, not the plain mean 2
    assert float(acc) == pytest.approx(2 / 8) and int(count) == 8
    assert tally.take() is None  # taken: the next epoch starts from nothing
