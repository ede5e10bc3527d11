"""Scheduler configs get their length from the trainer; impossible lengths fail clearly."""

from functools import partial

import pytest
import torch
from torch.optim.lr_scheduler import CosineAnnealingLR, OneCycleLR

from kdlab.modules.schedulers import bind_scheduler

pytestmark = pytest.mark.unit


def optimizer():
    return torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)


def test_onecycle_gets_total_steps_and_cosine_gets_t_max():
    onecycle = bind_scheduler(partial(OneCycleLR, max_lr=0.1, total_steps=None), optimizer(), 430)
    assert onecycle.total_steps == 430
    cosine = bind_scheduler(partial(CosineAnnealingLR, T_max=None), optimizer(), 430)
    assert cosine.T_max == 430


def test_a_length_given_in_the_config_is_kept():
    assert bind_scheduler(partial(OneCycleLR, max_lr=0.1, total_steps=99), optimizer(), 430).total_steps == 99


def test_onecycle_over_too_few_steps_says_what_to_do():
    # 0.25 * 4 steps: the warm-up phase has zero length and OneCycleLR divides by it
    with pytest.raises(ValueError, match="only 4 optimiser steps.*scheduler=cosine"):
        bind_scheduler(partial(OneCycleLR, max_lr=0.1, pct_start=0.25, total_steps=None), optimizer(), 4)


def test_a_scheduler_without_partial_is_refused():
    with pytest.raises(TypeError, match="_partial_: true"):
        bind_scheduler(CosineAnnealingLR(optimizer(), T_max=5), optimizer(), 10)
