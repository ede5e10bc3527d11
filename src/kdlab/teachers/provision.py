"""Find, train or load each frozen teacher of a run, before the run starts: a plain function, trained at most once.

A teacher is `teacher.ckpt_path` when given; otherwise the cache entry of its training run, keyed by
that run's whole config (its recipe experiment, its net and seed, this run's dataset), the data's
fingerprint and the code versions (kdlab.identity), so a teacher trained for 10 steps, on other data
or by other code is never served as the full recipe. A missing entry is trained here, into a staging
folder under a lock (concurrent sweep jobs wait for one training), then moved into place atomically.
A training stopped by a signal leaves its staging folder and checkpoint: the next provisioning resumes it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
from collections.abc import Callable
from pathlib import Path

from omegaconf import DictConfig, OmegaConf, open_dict

from kdlab.checkpoints import sha256_file
from kdlab.config import compose_config, plain
from kdlab.identity import run_key
from kdlab.listing import LAST_USED_FILE
from kdlab.locks import file_lock
from kdlab.record import TeacherRef
from kdlab.teachers.entry import MODEL_FILE, WEIGHTS_FILE, read_entry, spec_beside, write_entry

log = logging.getLogger(__name__)

# Data keys a teacher's recipe decides (how it trains); every other data key (which dataset, where, its
# normalisation, the train/val split) is the run's, so a teacher never trains on the images that select
# the student, and is never trained on another dataset than the one it teaches.
RECIPE_DATA_KEYS = (
    "batch_size",
    "eval_batch_size",
    "augment_shift",
    "augment_flip",
    "augment_affine",
    "exclude_classes",
    "seed",
)


class TeacherCacheError(RuntimeError):
    """A teacher could not be provisioned."""


def teacher_run_config(run: DictConfig, teacher: DictConfig) -> DictConfig:
    """The config that trains `teacher` (a teacher config: model, recipe, seed, overrides) for `run`."""
    tcfg = compose_config([f"experiment={teacher.recipe}", *teacher.get("overrides", [])])
    with open_dict(tcfg):
        recipe_data = plain(tcfg.data)
        tcfg.data = {**plain(run.data), **{k: recipe_data[k] for k in RECIPE_DATA_KEYS if k in recipe_data}}
        tcfg.model = plain(teacher.model)
        tcfg.seed = teacher.seed
        tcfg.paths = plain(run.paths)
        # One process on this run's accelerator: the ranks of a DDP student run find it cached.
        tcfg.trainer.accelerator = run.trainer.accelerator
        tcfg.trainer.devices, tcfg.trainer.num_nodes, tcfg.trainer.strategy = 1, 1, "auto"
        tcfg.trainer.enable_progress_bar = run.trainer.enable_progress_bar
        if run.trainer.get("fast_dev_run"):  # a smoke run gets a smoke teacher (its own cache entry)
            tcfg.trainer.fast_dev_run = run.trainer.fast_dev_run
        tcfg.runtime = plain(run.runtime)
        if tcfg.get("callbacks") and "epoch_lines" in tcfg.callbacks:
            tcfg.callbacks.epoch_lines.label = f"teacher {teacher.recipe} seed {teacher.seed}"
        tcfg.name, tcfg.ckpt_path, tcfg.train, tcfg.test = str(teacher.recipe), None, True, True
    return tcfg


def multi_process_launch() -> bool:
    """Started as one of several processes by torchrun or SLURM (not yet by Lightning, which starts them in fit)."""
    return any(os.environ.get(var, "1").isdigit() and int(os.environ.get(var, "1")) > 1
               for var in ("WORLD_SIZE", "SLURM_NTASKS"))  # fmt: skip


def provision_teacher(
    run: DictConfig, teacher: DictConfig, fingerprint: dict, teacher_dir: str | os.PathLike, fit: Callable,
    name: str = "teacher",
) -> TeacherRef:  # fmt: skip
    """`teacher.ckpt_path` if given; else the cached teacher of its recipe, trained first if absent.

    `fit(cfg, folder, ckpt_path) -> (record, module)` trains one run (kdlab.run.fit.fit_run). `name` is the
    teacher's config key, for messages (`teacher`, `teacher.members.1`).
    """
    if teacher.get("ckpt_path"):
        path = Path(teacher.ckpt_path).expanduser()
        if not path.is_file():
            raise FileNotFoundError(
                f"{name}.ckpt_path={teacher.ckpt_path!r} does not exist. Give the path of a TeacherModule checkpoint, "
                f"a state_dict .pt or a .safetensors file, or set {name}.ckpt_path=null to use (or train) the cached "
                f"teacher of {name}.recipe."
            )
        path = path.resolve()
        return TeacherRef(str(path), sha256_file(path), model=plain(teacher.model), data=spec_beside(path))
    tcfg = teacher_run_config(run, teacher)
    key = run_key(tcfg, fingerprint)
    root = Path(teacher_dir).expanduser().resolve()  # absolute: DDP children and reloads find it too
    final = root / key
    if (record := read_entry(final)) is None:
        if multi_process_launch():
            raise TeacherCacheError(
                f"No cached teacher for {name} (recipe {teacher.recipe}, seed {teacher.seed}), and this is one of "
                "several processes started by torchrun or SLURM, which must not each train it. Train it once first "
                "with the same overrides: `python scripts/provision.py <your overrides>`; then start this job again."
            )
        root.mkdir(parents=True, exist_ok=True)
        with file_lock(root / f"{key}.lock"):  # concurrent sweep jobs wait for one training
            if (record := read_entry(final)) is None:
                record = _train(tcfg, root, key, teacher, fit)
    with contextlib.suppress(OSError):  # a read-only cache still serves teachers
        (final / LAST_USED_FILE).touch()  # for `scripts/runs.py --teachers`
    log.info("Teacher %s: %s (recipe %s, seed %s)", name, final, teacher.recipe, teacher.seed)
    return TeacherRef(str(final / WEIGHTS_FILE), record.files["sha256"], key=key, recipe=str(teacher.recipe),
                      seed=teacher.seed, model=OmegaConf.to_container(OmegaConf.load(final / MODEL_FILE), resolve=True),
                      data=record.data)  # fmt: skip


def _train(tcfg: DictConfig, root: Path, key: str, teacher: DictConfig, fit: Callable):
    """Train the teacher in its staging folder (resuming an interrupted training there), then move it into place."""
    staging = root / f".{key}.staging"
    checkpoints = staging / "checkpoints"
    resume = next((p for p in (checkpoints / "interrupted.ckpt", checkpoints / "last.ckpt") if p.is_file()), None)
    doing = "resuming its interrupted training" if resume else "training it"
    log.warning("No cached teacher for recipe %r (seed %s, key %s): %s first, into %s", teacher.recipe,
                teacher.seed, key, doing, root / key)  # fmt: skip
    overrides = [f"experiment={teacher.recipe}", f"seed={teacher.seed}", *teacher.get("overrides", [])]
    record, module = fit(tcfg, staging, resume, overrides)
    if not record.finished:
        raise TeacherCacheError(
            f"Training the teacher ({teacher.recipe}, seed {teacher.seed}) ended with status {record.status!r}: "
            f"{record.message}. Nothing was cached; its logs are in {staging}."
        )
    record.output_dir = str(root / key)
    write_entry(staging, module.net, module.hparams.net, record)  # the best epoch on validation: test loaded it
    shutil.rmtree(staging / "checkpoints", ignore_errors=True)  # the staging folder is kdlab's own
    for leftover in ("student.pt", "student_model.yaml"):
        (staging / leftover).unlink(missing_ok=True)
    os.replace(staging, root / key)  # atomic: readers see no teacher or a complete one
    return record
