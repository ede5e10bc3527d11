"""Each analysis figure names the net it shows: a teacher's training says teacher, a distillation's says student."""

from pathlib import Path

import pytest
from lightning import Trainer
from stand_in import TinyData, TinySystem

from kdlab.analysis import TestAnalysis, figures


@pytest.fixture
def titles(monkeypatch) -> list[list[str]]:
    """The axes' titles of each figure the analysis renders, in the order it renders them."""
    seen, render = [], figures.rgb_array

    def spy(fig):
        seen.append([ax.get_title() for ax in fig.axes if ax.get_title()])
        return render(fig)

    monkeypatch.setattr(figures, "rgb_array", spy)
    return seen


def analyse(tmp_path, teacher: bool, **kwargs) -> None:
    data = TinyData()
    trainer = Trainer(accelerator="cpu", logger=False, callbacks=[TestAnalysis(tmp_path, **kwargs)],
                      enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path)  # fmt: skip
    trainer.test(TinySystem(data, teacher=teacher), datamodule=data, verbose=False)


def test_a_teachers_figures_say_teacher(tmp_path, titles):
    analyse(tmp_path, teacher=False, net="teacher")
    confusion, reliability = titles
    assert confusion[0].startswith("teacher, test acc ")
    assert reliability[0].startswith("teacher: ECE ") and len(reliability) == 1
    assert not [text for texts in titles for text in texts if "student" in text]


def test_a_distillations_figures_name_both_nets(tmp_path, titles):
    analyse(tmp_path, teacher=True)
    confusion, reliability, _ = titles  # and the disagreements, titled "student vs teacher"
    assert confusion[0].startswith("student, test acc ")
    assert [text.split(":")[0] for text in reliability] == ["student", "teacher"]


def test_a_teacher_trained_for_a_distillation_is_titled_teacher(make_cfg, titles):
    from kdlab.run.fit import fit_run

    cfg = make_cfg("experiment=train_teacher_mlp")
    fit_run(cfg, Path(cfg.paths.output_dir), None, [])  # what teacher provisioning runs
    assert titles[0][0].startswith("teacher, test acc ") and titles[1][0].startswith("teacher: ECE ")
