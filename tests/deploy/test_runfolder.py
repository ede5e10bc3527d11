"""kdlab.runfolder, the one reader of a run folder behind scripts/evaluate.py and scripts/export.py.

Hand-made folders (deploy_runs.py): an ensemble whose members learnt different normalisations, and
the refusals that say what is wrong with a folder and how to fix it.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from deploy_runs import MEAN, STD, TEACHER, TEACHER_MEAN, TEACHER_STD, data_config, teacher_ref, write_run
from omegaconf import OmegaConf
from safetensors.torch import save_file

from kdlab.data import normalize
from kdlab.deploy.bundle import load_bundle
from kdlab.models import build_net
from kdlab.modules.ensemble import combine_logits, ensemble_predictions
from kdlab.record import RunRecord
from kdlab.runfolder import RunFolderError, read_run_folder

pytestmark = pytest.mark.unit
WEIGHTED = {"mode": "weighted", "temperature": 2.0, "weights": [3.0, 1.0]}


@pytest.fixture
def ensemble_run(tmp_path: Path, nets, mnist_dir: Path) -> Path:
    """Two members with the same weights: one learnt the teacher's normalisation, the other the run's."""
    files = [tmp_path / "teachers" / f"m{i}" / "teacher.safetensors" for i in range(2)]
    for path in files:
        path.parent.mkdir(parents=True)
        save_file(nets.teacher, str(path))
    refs = [teacher_ref(files[0], nets.teacher_spec), teacher_ref(files[1], nets.spec)]
    data = data_config("mnist", mnist_dir, mean=[MEAN], std=[STD])
    return write_run(tmp_path / "run", nets.student, data, nets.spec, refs, WEIGHTED, name="distill_ensemble_mlp")


def test_each_member_reads_its_own_normalisation_and_they_combine_as_configured(ensemble_run: Path, nets):
    run = read_run_folder(ensemble_run)
    assert [n.role for n in run.nets] == ["student", "member0", "member1"]
    assert [(n.spec.mean, n.spec.std) for n in run.nets] == [
        ((MEAN,), (STD,)),
        ((TEACHER_MEAN,), (TEACHER_STD,)),
        ((MEAN,), (STD,)),
    ]
    assert run.combine == WEIGHTED
    x = run.datamodule().data_test.x[:32]
    teacher = build_net(TEACHER, (1, 28, 28), 10).eval()
    teacher.load_state_dict(nets.teacher)
    with torch.no_grad():
        own = [teacher(normalize(x, TEACHER_MEAN, TEACHER_STD)), teacher(normalize(x, MEAN, STD))]
        members = [n.net(normalize(x, n.spec.mean, n.spec.std)) for n in run.teachers]
        assert torch.equal(run.teacher_logits(members), ensemble_predictions(own, **WEIGHTED))
        # its predictions, as training's test pass scored them: the weights at T=1, not the targets' T=2
        assert torch.equal(run.teacher_logits(members), combine_logits(own, **{**WEIGHTED, "temperature": 1.0}))
        assert not torch.allclose(own[0], own[1], atol=1e-2)  # the two normalisations do differ


@pytest.mark.heavy
def test_a_missing_member_is_refused_or_left_out_with_a_note(ensemble_run: Path):
    gone = Path(RunRecord.read(ensemble_run).members[1].checkpoint)
    gone.unlink()
    with pytest.raises(RunFolderError, match=r"teacher.members.1 weights this run distilled from, .* are gone"):
        read_run_folder(ensemble_run)  # evaluate needs every member to test the ensemble
    bundle = load_bundle(ensemble_run)  # export still ships what is there
    assert [n.role for n in bundle.nets] == ["member0", "student"]
    assert bundle.run.combine is None
    assert "member1 left out" in bundle.notes[0] and "ensemble is incomplete" in bundle.notes[1]


def test_a_teacher_given_by_path_alone_reads_the_runs_inputs(tmp_path: Path, nets, mnist_dir: Path):
    """A TeacherRef without net or data (a file with no record beside it): config.yaml's net, the run's spec."""
    path = tmp_path / "teacher.safetensors"
    save_file(nets.teacher, str(path))
    ref = teacher_ref(path, None)
    ref.model = None
    data = data_config("mnist", mnist_dir, mean=[MEAN], std=[STD])
    run = read_run_folder(write_run(tmp_path / "run", nets.student, data, nets.spec, [ref]))
    (teacher,) = run.teachers
    assert teacher.spec == nets.spec and teacher.config["hidden"] == [32, 16]


def test_a_data_target_that_is_not_a_datamodule_is_never_called(distill_run: Path, tmp_path: Path):
    config = OmegaConf.load(distill_run / "config.yaml")
    config.data = {"_target_": "os.makedirs", "name": str(tmp_path / "pwned")}
    OmegaConf.save(config, distill_run / "config.yaml")
    with pytest.raises(RunFolderError, match="is not a kdlab.data.ImageDataModule"):
        load_bundle(distill_run)
    assert not (tmp_path / "pwned").exists()


def test_a_record_without_data_spec_or_files_says_so(distill_run: Path, tmp_path: Path):
    copy = Path(shutil.copytree(distill_run, tmp_path / "copy"))
    record = RunRecord.read(copy)
    record.data = {}
    record.write(copy)
    with pytest.raises(RunFolderError, match="records no data spec"):
        read_run_folder(copy)
    del record.files["model"]
    record.write(copy)
    with pytest.raises(RunFolderError, match="names no model file"):
        read_run_folder(copy)
