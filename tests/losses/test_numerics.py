"""A term that computes nothing in float32 at its settings is refused, with the range in which it works.

The bounds asserted here are derived from float32 itself, not copied from the code. kdlab's runs flush
subnormals to zero on the CPU (torch.set_flush_denormal), so a float32 factor is exactly 0 below float32's
smallest normal number, 1.18e-38, and inf above 3.4e38: KD and DKD scale by T^2, a term by its weight.
"""

import math
import re

import pytest
import torch

from kdlab.config import ConfigError
from kdlab.losses import CE, DKD, KD, Hint
from kdlab.losses.numerics import check_numerics, degenerate, working_range

pytestmark = pytest.mark.unit

POWERS = [10.0**e for e in range(-60, 61)]


TINY = torch.finfo(torch.float32).tiny  # 1.18e-38, float32's smallest normal number


def f32(value: float) -> float:
    return float(torch.tensor(value, dtype=torch.float32))


# The powers of ten at which a float32 factor is neither 0 (flushed) nor inf: a weight, and T^2 for a temperature.
LOWEST_WEIGHT = min(p for p in POWERS if f32(p) >= TINY)  # 1e-37
HIGHEST_WEIGHT = max(p for p in POWERS if math.isfinite(f32(p)))  # 1e38: float32's largest is 3.4e38
LOWEST_T = min(p for p in POWERS if f32(p * p) >= TINY)  # 1e-18: (1e-19)^2 = 1e-38 is subnormal, flushed


def refusal(term, name="kd") -> str:
    """The refusal's message: a ConfigError, which train.py reports in one line and exits 2 for."""
    with pytest.raises(ConfigError) as err:
        check_numerics(name, term, 10, None)
    return str(err.value)


def test_the_derived_bounds_are_float32s():
    assert (LOWEST_WEIGHT, HIGHEST_WEIGHT, LOWEST_T) == (1e-37, 1e38, 1e-18)


@pytest.mark.parametrize("cls", [KD, DKD])
@pytest.mark.parametrize("temperature", [4.0, 20.0])
def test_usual_temperatures_are_accepted(cls, temperature):
    term = cls(temperature=temperature)
    assert degenerate(term, 10, None) is None
    check_numerics("kd", term, 10, None)  # raises nothing


@pytest.mark.heavy
@pytest.mark.parametrize("cls", [KD, DKD])
def test_a_vanishing_temperature_is_refused_with_the_range_that_works(cls):
    low, high = working_range(cls(temperature=4.0), "temperature", 10, None)
    assert low == LOWEST_T  # T^2 underflows below it: the term is exactly 0 whatever the teacher says
    message = refusal(cls(temperature=1e-30))
    assert message.startswith("distill.losses.kd would train on nothing: it underflows")
    assert f"distill.losses.kd.temperature=1e-30 is outside {low:.0e} .. {high:.0e}" in message
    assert "1e-18 .. " in message


@pytest.mark.heavy
@pytest.mark.parametrize("cls", [KD, DKD])
def test_the_lowest_temperature_works_and_the_next_power_below_does_not(cls):
    check_numerics("kd", cls(temperature=LOWEST_T), 10, None)
    assert "it underflows" in refusal(cls(temperature=LOWEST_T / 10))


@pytest.mark.heavy
@pytest.mark.parametrize("cls", [KD, DKD])
def test_an_overflowing_temperature_is_refused(cls):
    low, high = working_range(cls(temperature=4.0), "temperature", 10, None)
    message = refusal(cls(temperature=1e30))  # T^2 = 1e60 is inf in float32
    assert re.match(r"distill\.losses\.kd would train on nothing: it overflows", message)
    assert f"temperature=1e+30 is outside {low:.0e} .. {high:.0e}" in message
    # the top of the range is a real edge: it works there, and ten times higher it does not
    check_numerics("kd", cls(temperature=high), 10, None)
    assert "would train on nothing" in refusal(cls(temperature=10 * high))


@pytest.mark.heavy
def test_the_range_is_computed_for_the_terms_classes():
    """More classes spread the probe's logits further, so soft targets stay distinct to a higher T."""
    ten = working_range(KD(temperature=4.0), "temperature", 10, None)
    hundred = working_range(KD(temperature=4.0), "temperature", 100, None)
    assert ten[0] == hundred[0] == LOWEST_T
    assert hundred[1] > ten[1]


@pytest.mark.heavy
def test_a_vanishing_ce_weight_is_refused_with_the_weights_that_work():
    assert working_range(CE(), "weight", 10, None) == (LOWEST_WEIGHT, HIGHEST_WEIGHT)
    message = refusal(CE(weight=1e-50), "ce")
    assert message.startswith("distill.losses.ce would train on nothing: it underflows")
    assert f"distill.losses.ce.weight=1e-50 is outside {LOWEST_WEIGHT:.0e} .. {HIGHEST_WEIGHT:.0e}" in message
    # CE reads the labels: switched off by underflow, the run would learn from the teacher alone
    assert "learning from labels alone" not in message and "teacher alone" in message
    check_numerics("ce", CE(weight=LOWEST_WEIGHT), 10, None)


@pytest.mark.heavy
def test_a_kd_weight_that_underflows_is_refused_as_distillation_on_labels_alone():
    message = refusal(KD(weight=1e-50, temperature=4.0))
    assert "distill.losses.kd.weight=1e-50 is outside 1e-37 .. " in message
    assert "learning from labels alone" in message


def test_a_zero_weight_is_switched_off_not_refused():
    check_numerics("kd", KD(weight=0.0, temperature=1e-30), 10, None)


def test_a_feature_terms_weight_is_checked_alone():
    message = refusal(Hint(student_layer="a", teacher_layer="b", weight=1e-50), "hint")
    assert (
        message == "distill.losses.hint.weight=1e-50 is 0 or inf in float32: use a weight between 1.2e-38 and 3.4e+38."
    )
    for weight in (LOWEST_WEIGHT, 1.0, HIGHEST_WEIGHT):  # the range the message names is the one accepted
        check_numerics("hint", Hint(student_layer="a", teacher_layer="b", weight=weight), 10, None)
