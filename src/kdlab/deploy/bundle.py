"""A run folder's deployable nets, each behind the normalisation it was trained with, plus its test set.

The folder is read by kdlab.runfolder (the same reader as scripts/evaluate.py). A distillation run
yields its student and, when their weights are still there, the teacher it learnt from or each
ensemble member, so all can be measured side by side; every one ships with the normalisation of the
data it was trained on, which for a teacher may differ from the student's.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from kdlab.data.datamodule import Split
from kdlab.runfolder import FolderNet, RunFolder, read_run_folder


@dataclass
class Bundle:
    run: RunFolder
    nets: list[FolderNet]  # the teacher or each ensemble member first (as far as still there), then the student
    test: Split  # raw uint8 test images and their labels, from the run's own datamodule
    source: str  # where the test set was read from
    notes: list[str] = field(default_factory=list)  # what was skipped and why, for the report

    def net(self, role: str) -> FolderNet | None:
        return next((n for n in self.nets if n.role == role), None)


def load_bundle(folder: str | os.PathLike, data_dir: str | os.PathLike | None = None) -> Bundle:
    """The folder's net(s), each with its own normalisation, and the test set of the run's data.

    A teacher whose file is gone or changed is left out with a note: the student still ships.
    """
    run = read_run_folder(folder, require_teachers=False)
    datamodule = run.datamodule(data_dir)
    source = str(datamodule.hparams.get("data_dir", run.spec.name))  # digits: no files, the name
    notes = [*run.notes, *(["the ensemble is incomplete: its combined accuracy is not reported"]
                           if run.record.members and run.combine is None else [])]  # fmt: skip
    return Bundle(run, [*run.teachers, run.student], datamodule.data_test, source, notes)
