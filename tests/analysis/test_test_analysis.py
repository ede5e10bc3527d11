"""TestAnalysis end to end on a tiny Trainer.test: numbers against a one-shot computation, PNGs, TensorBoard."""

import logging
import sys

import numpy as np
import pytest
import torch
from lightning import Trainer
from lightning.pytorch.loggers import TensorBoardLogger
from matplotlib.image import imread
from stand_in import TinyData, TinySystem
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torchmetrics.classification import MulticlassCalibrationError

from kdlab.analysis import TestAnalysis
from kdlab.analysis.callback import first_disagreements

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def run_test(tmp_path, teacher=True, logger=False, **kwargs):
    data = TinyData()
    module = TinySystem(data, teacher=teacher)
    analysis = TestAnalysis(tmp_path, **kwargs)
    trainer = Trainer(
        accelerator="cpu",
        devices=1,
        logger=logger,
        callbacks=[analysis],
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        default_root_dir=tmp_path,
    )
    trainer.test(module, datamodule=data, verbose=False)
    return analysis, module, data


def expected(module, data, key):
    """The model's numbers from one pass over all 130 images, by other code paths."""
    with torch.no_grad():
        logits = module.logits(torch.arange(len(data.data_test.x)))[key]
    y = data.data_test.y
    pred = logits.argmax(1)
    per_class = [float((pred[y == k] == k).float().mean()) for k in range(10)]
    ece = float(MulticlassCalibrationError(num_classes=10, n_bins=15, norm="l1")(logits, y))
    return logits, float((pred == y).float().mean()), per_class, ece


def test_distillation_run_numbers_files_and_tensorboard(tmp_path):
    tb = TensorBoardLogger(tmp_path, name="tensorboard", version="")
    analysis, module, data = run_test(tmp_path, logger=tb)
    results = analysis.results
    assert set(results) == {"n_test", "n_bins", "student", "teacher", "disagreements", "agreement", "files"}
    assert results["n_test"] == 130 and results["n_bins"] == 15
    for key, name in (("student_logits", "student"), ("teacher_logits", "teacher")):
        logits, acc, per_class, ece = expected(module, data, key)
        got = results[name]
        assert set(got) == {"acc", "ece", "per_class_acc", "confusion", "reliability"}
        assert got["acc"] == pytest.approx(acc)
        assert got["per_class_acc"] == pytest.approx(per_class)
        assert got["ece"] == pytest.approx(ece, abs=1e-5)
        assert sum(map(sum, got["confusion"])) == 130
        assert sum(got["reliability"]["count"]) == 130
    s_logits, t_logits = expected(module, data, "student_logits")[0], expected(module, data, "teacher_logits")[0]
    differ = int((s_logits.argmax(1) != t_logits.argmax(1)).sum())
    assert results["disagreements"] == differ and 0 < differ < 130
    assert results["agreement"] == pytest.approx(1 - differ / 130)
    assert 0.1 < results["student"]["acc"] < results["teacher"]["acc"]  # the stand-ins are partly right

    assert results["files"] == [
        "analysis/confusion_student.png",
        "analysis/reliability.png",
        "analysis/disagreements.png",
    ]
    for name in results["files"]:
        path = tmp_path / name
        assert path.read_bytes()[:8] == PNG_SIGNATURE
        height, width, _ = imread(path).shape
        assert height > 200 and width > 200
    assert (
        imread(tmp_path / "analysis/reliability.png").shape[1]
        > imread(tmp_path / "analysis/confusion_student.png").shape[1]
    )

    events = EventAccumulator(str(tmp_path / "tensorboard")).Reload()
    assert set(events.Tags()["images"]) == {
        "visuals/confusion_student",
        "visuals/reliability",
        "visuals/disagreements",
    }


def test_supervised_run_has_no_teacher_parts(tmp_path):
    analysis, module, data = run_test(tmp_path, teacher=False)
    results = analysis.results
    assert set(results) == {"n_test", "n_bins", "student", "files"}
    assert results["student"]["acc"] == pytest.approx(expected(module, data, "student_logits")[1])
    assert results["files"] == ["analysis/confusion_student.png", "analysis/reliability.png"]
    assert not (tmp_path / "analysis" / "disagreements.png").exists()


def test_without_matplotlib_numbers_stay_and_one_line_says_why(tmp_path, monkeypatch, caplog):
    for name in ("matplotlib", "matplotlib.figure", "matplotlib.backends.backend_agg"):
        monkeypatch.setitem(sys.modules, name, None)  # `import matplotlib.figure` now raises ImportError
    with caplog.at_level(logging.WARNING, logger="kdlab.analysis.callback"):
        analysis, module, data = run_test(tmp_path)
    assert analysis.results["files"] == []
    assert analysis.results["student"]["acc"] == pytest.approx(expected(module, data, "student_logits")[1])
    assert not (tmp_path / "analysis").exists()
    hints = [r.getMessage() for r in caplog.records if "kdlab[plots]" in r.getMessage()]
    assert len(hints) == 1 and "PNGs" in hints[0]


def test_first_disagreements_in_test_set_order():
    # two batches, indices out of order; student and teacher differ at positions 7, 2, 9, 4
    seen = [
        (torch.tensor([7, 8, 2]), torch.tensor([1, 1, 3]), torch.tensor([0, 1, 5]), torch.tensor([0, 1, 3])),
        (torch.tensor([9, 4, 5]), torch.tensor([6, 2, 2]), torch.tensor([4, 8, 2]), torch.tensor([6, 8, 2])),
    ]
    index, s_pred, t_pred, target = first_disagreements(seen, 3)
    assert index.tolist() == [2, 4, 7]
    assert (s_pred.tolist(), t_pred.tolist(), target.tolist()) == ([3, 2, 1], [5, 8, 0], [3, 8, 0])
    assert [len(part) for part in first_disagreements([], 3)] == [0, 0, 0, 0]


def test_grid_is_capped_and_titled(tmp_path):
    analysis, _, _ = run_test(tmp_path, max_images=5)
    assert analysis.results["disagreements"] > 5
    grid = analysis.images["disagreements"]
    full = run_test(tmp_path / "full")[0].images["disagreements"]
    assert grid.shape[0] < full.shape[0]  # 5 images: one row; all of them: several
    assert grid.dtype == np.uint8 and grid.shape[2] == 3


def test_a_test_step_without_the_dict_is_refused(tmp_path):
    class Silent(TinySystem):
        def test_step(self, index, batch_idx):
            self.logits(index)

    data = TinyData()
    trainer = Trainer(accelerator="cpu", logger=False, callbacks=[TestAnalysis(tmp_path)], enable_progress_bar=False)
    with pytest.raises(TypeError, match=r"Silent.test_step returned None.*'student_logits'"):
        trainer.test(Silent(data), datamodule=data, verbose=False)
