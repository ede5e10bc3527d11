"""Hand-made sweep folders for the report tests: Hydra's overrides file and a RunRecord per job. No training."""

from __future__ import annotations

from pathlib import Path

import yaml

from kdlab.record import RunRecord

STUDENT_KEY = "1df3e6693a055c7c"
COMMON = ["experiment=distill_mlp", "trainer.max_epochs=1", "~callbacks.model_summary"]  # the same in every job
# 2 temperatures x 3 seeds, in the order a sweep `distill.temperature=10,2 seed=0,1,2` numbers them
GRID = [(10, 0), (10, 1), (10, 2), (2, 0), (2, 1), (2, 2)]
TEST_ACC = [0.912, 0.921, 0.905, 0.955, 0.951, 0.962]
VAL_ACC = [0.930, 0.925, 0.921, 0.960, 0.958, 0.966]
KL = [0.30, 0.32, 0.31, 0.12, 0.11, 0.13]


def distill_record(
    overrides: list[str],
    seed: int,
    test_acc: float,
    val_acc: float,
    kl: float,
    *,
    status: str = "ok",
    baseline: dict | None = None,
    message: str | None = None,
    student_key: str = STUDENT_KEY,
    fixed: list[str] = COMMON,
) -> RunRecord:
    """A distillation job's record as kdlab.run writes it (format 2)."""
    return RunRecord(
        name="distill_mlp",
        kind="distillation",
        status=status,
        seed=seed,
        metrics={
            "test/acc": test_acc,
            "val/acc_best": val_acc,
            "test/teacher_acc": 0.981,
            "test/agreement": test_acc - 0.01,
            "test/kl": kl,
        },
        params={"student": 235146, "teacher": 535818},
        identity={"student": student_key, "run": f"run-{seed}-{kl}", "data": "mnist"},
        overrides=overrides,
        swept=["distill.temperature", "seed"],
        fixed=list(fixed),
        baseline=baseline,
        wall_time_s=10.0 + seed,
        message=message,
    )


def write_job(folder: Path, overrides: list[str], record: RunRecord | None) -> Path:
    """A job folder as Hydra and kdlab.run leave it; record=None is a job that never wrote its record."""
    (folder / ".hydra").mkdir(parents=True)
    (folder / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    if record is not None:
        record.write(folder)
    return folder
