"""Find, train or load the frozen teacher: cached by a hash of its recipe, trained at most once."""

import json
import logging
import os
import shutil
from collections.abc import Callable
from pathlib import Path

from filelock import FileLock
from omegaconf import DictConfig, OmegaConf, open_dict

from kdlab.config import compose_config, plain
from kdlab.recipes import digest, recipe_of
from kdlab.summary import METRICS_FILE, write_metrics

log = logging.getLogger(__name__)

TEACHER_FILE = "teacher.ckpt"
# The student run's data keys a teacher must share: where data is, and the train/val split, so
# the teacher never trained on the images that select the student.
SHARED_DATA_KEYS = ("data_dir", "num_workers", "mirrors", "pypi_package", "verify", "val_size", "split_seed")


def teacher_run_config(cfg: DictConfig) -> DictConfig:
    """The config that trains this run's teacher: its recipe experiment, its net, its own seed."""
    spec = cfg.teacher
    tcfg = compose_config([f"experiment={spec.recipe}", *spec.get("overrides", [])])
    with open_dict(tcfg):
        tcfg.model = plain(spec.model)
        tcfg.seed = spec.seed
        tcfg.paths = plain(cfg.paths)
        for key in SHARED_DATA_KEYS:
            if key in cfg.data:
                tcfg.data[key] = cfg.data[key]
        # One process on this run's accelerator: DDP children of the student run must find the
        # teacher already cached, never start training it themselves.
        tcfg.trainer.accelerator = cfg.trainer.accelerator
        tcfg.trainer.devices = 1
        tcfg.trainer.num_nodes = 1
        tcfg.trainer.strategy = "auto"
        tcfg.trainer.enable_progress_bar = cfg.trainer.enable_progress_bar
        tcfg.ckpt_path = None
        tcfg.test = True
    return tcfg


def teacher_key(tcfg: DictConfig) -> str:
    return digest(
        {
            **recipe_of(tcfg),
            "module": plain(tcfg.module),
            "seed": tcfg.seed,
        }
    )


def describe_cache_entry(staging: Path, final: Path, spec: DictConfig) -> None:
    """Point the teacher's metrics.json at where it will live, and at its own recipe, not the job's."""
    metrics = json.loads((staging / METRICS_FILE).read_text())
    metrics.update(
        output_dir=str(final),
        best_checkpoint=str(final / TEACHER_FILE),
        overrides=[f"experiment={spec.recipe}", f"seed={spec.seed}", *spec.get("overrides", [])],
    )
    write_metrics(staging, metrics)


def provision_teacher(cfg: DictConfig, train: Callable[[DictConfig], tuple[dict, dict]]) -> Path:
    """`teacher.ckpt_path` if given; else the cached teacher of this recipe, trained first if absent."""
    if cfg.teacher.ckpt_path:
        path = Path(cfg.teacher.ckpt_path).expanduser()
        if not path.is_file():
            raise FileNotFoundError(
                f"teacher.ckpt_path={cfg.teacher.ckpt_path!r} does not exist. Give the path of a TeacherModule "
                "checkpoint, a state_dict .pt or a .safetensors file, or set teacher.ckpt_path=null to use "
                "(or train) the cached teacher of teacher.recipe."
            )
        return path.resolve()

    tcfg = teacher_run_config(cfg)
    key = teacher_key(tcfg)
    root = Path(cfg.paths.teacher_dir).resolve()  # absolute: DDP children and reloads find it too
    final = root / key
    if (final / TEACHER_FILE).is_file():
        log.info("Reusing cached teacher %s (recipe %s)", final / TEACHER_FILE, cfg.teacher.recipe)
        return final / TEACHER_FILE

    root.mkdir(parents=True, exist_ok=True)
    with FileLock(str(root / f"{key}.lock")):  # concurrent sweep jobs wait for one training
        if (final / TEACHER_FILE).is_file():
            log.info("Reusing teacher %s, trained meanwhile by another job", final / TEACHER_FILE)
            return final / TEACHER_FILE
        log.warning(
            "No cached teacher for recipe %r (key %s, seed %s): training it first in %s",
            cfg.teacher.recipe,
            key,
            cfg.teacher.seed,
            final,
        )
        staging = root / f".{key}.tmp-{os.getpid()}"
        shutil.rmtree(staging, ignore_errors=True)
        with open_dict(tcfg):
            tcfg.paths.output_dir = str(staging)
        _, objects = train(tcfg)
        best = objects["trainer"].checkpoint_callback.best_model_path
        if not best:
            raise RuntimeError(
                f"Training the teacher in {staging} saved no checkpoint (fast_dev_run or no validation?). "
                "Give teacher.overrides that run at least one epoch with validation."
            )
        shutil.copyfile(best, staging / TEACHER_FILE)
        shutil.rmtree(staging / "checkpoints", ignore_errors=True)  # keep the cache lean: best only
        OmegaConf.save(tcfg, staging / "config.yaml", resolve=True)
        describe_cache_entry(staging, final, cfg.teacher)
        shutil.rmtree(final, ignore_errors=True)
        os.replace(staging, final)  # atomic: readers see no teacher or a complete one
    log.info("Cached teacher at %s", final / TEACHER_FILE)
    return final / TEACHER_FILE
