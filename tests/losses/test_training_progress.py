"""What a term may read besides the outputs: training progress (DKD's warm-up) and the batch's sample indices,
filled by the system for every term without the system knowing which terms read them."""

import pytest
import torch
from test_logit_terms import DKD_STUDENT, DKD_TEACHER, NCKD, TCKD, log_probs

from kdlab.losses import DKD, LossInputs, TrainingProgress
from kdlab.losses.numerics import degenerate

pytestmark = pytest.mark.unit

# At T = 1 the whole DKD term (alpha 1, beta 8) is TCKD + 8 NCKD = 0.143841 + 8 * 0.058892 = 0.614977 (by hand,
# tests/losses/test_logit_terms.py); a warm-up multiplies it by its factor.
STUDENT, TEACHER, TARGET = log_probs(DKD_STUDENT), log_probs(DKD_TEACHER), torch.tensor([0])
FULL = TCKD + 8 * NCKD


def at_epoch(epoch: int) -> LossInputs:
    progress = TrainingProgress(epoch=epoch, step=10 * epoch, max_epochs=None, total_steps=None)
    return LossInputs(STUDENT, TARGET, TEACHER, progress=progress)


@pytest.mark.parametrize(
    ("epoch", "factor"),
    # mdistiller counts epochs from 1 and multiplies by min(epoch / warmup, 1): its epoch 1 is kdlab's epoch 0
    [(0, 1 / 20), (1, 2 / 20), (18, 19 / 20), (19, 1.0), (20, 1.0), (239, 1.0)],
)
def test_dkd_warmup_is_the_authors_ramp_with_epochs_counted_from_one(epoch, factor):
    assert DKD(temperature=1.0)(at_epoch(epoch)).item() == pytest.approx(FULL, abs=1e-5)  # warmup=0: no ramp
    warmed = DKD(temperature=1.0, warmup=20)
    assert warmed.warmup_factor(at_epoch(epoch)) == pytest.approx(factor, abs=1e-12)
    assert warmed(at_epoch(epoch)).item() == pytest.approx(factor * FULL, abs=1e-5)


def test_dkd_without_warmup_reads_no_progress_and_with_one_needs_it():
    inputs = LossInputs(STUDENT, TARGET, TEACHER)  # as a term called on its own: no progress
    assert DKD()(inputs) == DKD()(at_epoch(3))  # the default (0) is the term as before: no ramp
    with pytest.raises(ValueError, match="progress is None"):
        DKD(warmup=20)(inputs)


@pytest.mark.parametrize("warmup", [-1, float("nan"), "20", True])
def test_a_warmup_that_is_no_number_of_epochs_is_refused(warmup):
    with pytest.raises(ValueError, match="warmup must be a finite number >= 0.0"):
        DKD(warmup=warmup)


def test_the_float32_probe_checks_a_warmed_up_term_at_its_first_epoch():
    assert degenerate(DKD(warmup=20), num_classes=10, members=None) is None  # probed, not refused for no progress


@pytest.mark.parametrize(
    ("step", "total", "fraction"), [(0, 100, 0.0), (25, 100, 0.25), (100, 100, 1.0), (120, 100, 1.0), (5, None, None)]
)
def test_fraction_is_the_share_of_the_fits_steps_taken(step, total, fraction):
    assert TrainingProgress(epoch=0, step=step, max_epochs=4, total_steps=total).fraction == fraction


@pytest.mark.heavy
def test_dkd_warmup_is_off_in_the_preset_and_one_override_away():
    from kdlab.config import compose_config
    from kdlab.losses import build_terms

    preset = compose_config(["experiment=distill_mlp", "distill=dkd"]).distill.losses
    assert build_terms(preset)["dkd"].warmup == 0.0  # existing DKD runs train as before
    authors = compose_config(["experiment=distill_mlp", "distill=dkd", "distill.losses.dkd.warmup=20"]).distill.losses
    assert build_terms(authors)["dkd"].warmup == 20.0
