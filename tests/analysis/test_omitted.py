"""Hinton's omitted-class bias fix: tuned on validation, reported on test."""

import torch

from kdlab.analysis.omitted import errors, omitted_class_report, tune_bias
from kdlab.run import train


def test_errors_and_the_bias_offset_by_hand():
    # 4 images, classes 0..2; class 2 is omitted. Logits of class 2 are 1.0 below what would win.
    logits = torch.tensor([[2.0, 0.0, 1.0], [0.0, 2.0, 1.5], [3.0, 0.0, 2.5], [0.0, 0.0, 1.0]])
    target = torch.tensor([0, 1, 2, 2])
    # image 2 (a "2") loses to class 0 by 0.5; image 3 is right already
    assert errors(logits, target, [2]) == {"errors": 1, "errors_omitted": 1, "n": 4, "n_omitted": 2}
    # +0.75 fixes image 2, and image 1 (a "1" at 2.0 vs 1.5+0.75=2.25) becomes wrong
    assert errors(logits, target, [2], 0.75) == {"errors": 1, "errors_omitted": 0, "n": 4, "n_omitted": 2}
    # +2.25: image 0 (2.0 vs 1.0+2.25) goes wrong too
    assert errors(logits, target, [2], 2.25)["errors"] == 2
    grid = torch.tensor([0.0, 0.25, 0.75, 2.25])
    assert tune_bias(logits, target, [2], grid) == 0.0  # a tie at 1 error: the smallest offset


def test_the_fix_is_chosen_on_validation_only():
    # both validation 1s need class 1's logit raised by more than 1.0: the first grid point is 1.25
    val = (torch.tensor([[1.0, 0.0], [1.0, 0.5]]), torch.tensor([1, 1]))
    test = (torch.tensor([[1.0, 0.2], [0.5, 0.0]]), torch.tensor([1, 0]))
    report = omitted_class_report(val, test, [1])
    assert report["bias_offset"] == 1.25 and report["tuned_on"] == "validation"
    assert report["test"] == {"errors": 1, "errors_omitted": 1, "n": 2, "n_omitted": 1}
    # the 1 is now right, and the 0 (0.5 vs 0.0 + 1.25) reads as a 1: the test set pays for the fix
    assert report["test_bias_fixed"] == {"errors": 1, "errors_omitted": 0, "n": 2, "n_omitted": 1}
    assert report["omitted_acc"] == 0.0 and report["omitted_acc_bias_fixed"] == 1.0


def test_an_omitted_class_run_records_the_analysis(make_cfg):
    record, objects = train(make_cfg("experiment=scratch_omit3_mlp"))
    dm = objects["datamodule"]
    assert not (dm.data_train.y == 3).any() and (dm.data_val.y == 3).any()
    omitted = record.analysis["omitted"]
    assert omitted["classes"] == [3] and omitted["test"]["n_omitted"] == int((dm.data_test.y == 3).sum())
    assert omitted["test"]["n"] == len(dm.data_test)
