"""Find, train or load the frozen teacher: cached by the identity of its training run, trained at most once.

A cache entry `outputs/teachers/<key>/` holds `teacher.safetensors` (the net's weights, the best
epoch on validation), `teacher_model.yaml` (its architecture), `metrics.json` (the RunRecord of its
training, with the weights' checksum), `config.yaml` and its TensorBoard events. The key is the
teacher's whole training config (minus locations and logging), the data's checksums and the code
versions (kdlab.identity), so a teacher trained for 10 steps, on other data or by other code is
never served as the full recipe.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import socket
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf, open_dict

from kdlab.checkpoints import sha256_file
from kdlab.config import compose_config, plain
from kdlab.identity import run_key
from kdlab.listing import LAST_USED_FILE
from kdlab.locks import file_lock
from kdlab.record import RECORD_FILE, RecordError, RunRecord, TeacherRef
from kdlab.summary import print_summary

log = logging.getLogger(__name__)

WEIGHTS_FILE = "teacher.safetensors"
MODEL_FILE = "teacher_model.yaml"
# The student run's data keys a teacher must share: where data is, and the train/val split, so the
# teacher never trained on the images that select the student.
SHARED_DATA_KEYS = ("data_dir", "mirrors", "pypi_package", "verify", "val_size", "split_seed")
# What torchrun / SLURM / Lightning put in the environment of one rank of a multi-process job. The
# teacher is trained by one process with devices=1, which must not see them.
DISTRIBUTED_ENV = (
    "RANK",
    "LOCAL_RANK",
    "WORLD_SIZE",
    "LOCAL_WORLD_SIZE",
    "GROUP_RANK",
    "NODE_RANK",
    "MASTER_ADDR",
    "MASTER_PORT",
    "TORCHELASTIC_RUN_ID",
    "SLURM_NTASKS",
    "SLURM_PROCID",
    "SLURM_LOCALID",
    "SLURM_NODEID",
    "SLURM_JOB_NAME",
)
POLL_SECONDS = 5.0


class TeacherCacheError(RuntimeError):
    """A teacher could not be provisioned."""


def teacher_run_config(cfg: DictConfig, spec: DictConfig | None = None) -> DictConfig:
    """The config that trains this run's teacher: its recipe experiment, its net, its own seed.

    `spec` is one teacher's config (default `cfg.teacher`; an ensemble member's is shaped alike).
    """
    spec = cfg.teacher if spec is None else spec
    tcfg = compose_config([f"experiment={spec.recipe}", *spec.get("overrides", [])])
    with open_dict(tcfg):
        tcfg.model = plain(spec.model)
        tcfg.seed = spec.seed
        tcfg.paths = plain(cfg.paths)
        for key in SHARED_DATA_KEYS:
            if key in cfg.data:
                tcfg.data[key] = cfg.data[key]
        # One process on this run's accelerator: the ranks of a DDP student run find it cached.
        tcfg.trainer.accelerator = cfg.trainer.accelerator
        tcfg.trainer.devices = 1
        tcfg.trainer.num_nodes = 1
        tcfg.trainer.strategy = "auto"
        tcfg.trainer.enable_progress_bar = cfg.trainer.enable_progress_bar
        if cfg.trainer.get("fast_dev_run"):  # a smoke run gets a smoke teacher (its own cache entry)
            tcfg.trainer.fast_dev_run = cfg.trainer.fast_dev_run
        if "runtime" in cfg:
            tcfg.runtime = plain(cfg.runtime)
        if tcfg.get("callbacks") and "epoch_lines" in tcfg.callbacks:
            tcfg.callbacks.epoch_lines.label = f"teacher {spec.recipe} seed {spec.seed}"
        tcfg.ckpt_path = None
        tcfg.train = True
        tcfg.test = True
    return tcfg


def global_rank() -> int:
    """This process's rank in a job launched by torchrun or SLURM (0 when alone)."""
    for var in ("RANK", "SLURM_PROCID"):
        if os.environ.get(var, "").isdigit():
            return int(os.environ[var])
    return 0


@contextmanager
def single_process_env() -> Iterator[None]:
    """Hide the multi-process launch variables while rank 0 trains the teacher on its own."""
    saved = {var: os.environ.pop(var) for var in DISTRIBUTED_ENV if var in os.environ}
    try:
        yield
    finally:
        os.environ.update(saved)


def read_entry(folder: Path) -> tuple[Path, RunRecord] | None:
    """A complete, intact cache entry's weights and record, or None; a damaged one is moved aside."""
    weights = folder / WEIGHTS_FILE
    if not folder.is_dir():
        return None
    try:
        record = RunRecord.read(folder / RECORD_FILE)
        expected = record.files.get("sha256")
        if not weights.is_file() or expected is None or sha256_file(weights) != expected:
            raise RecordError(f"{weights} is missing or does not match the checksum in its record")
    except RecordError as err:
        aside = folder.with_name(f".{folder.name}.bad-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}")
        log.warning(
            "The cached teacher %s is damaged (%s). Moving it aside to %s and training it again.", folder, err, aside
        )
        os.replace(folder, aside)
        return None
    return weights, record


def clean_stale_staging(root: Path) -> None:
    """Remove staging folders of teacher trainings whose process died (same host only)."""
    host = socket.gethostname()
    for staging in root.glob(".*.tmp-*"):
        owner, _, pid = staging.name.rpartition("-")
        if not owner.endswith(f"tmp-{host}") or not pid.isdigit():
            continue
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            log.info("Removing %s, left by a teacher training that did not finish", staging)
            shutil.rmtree(staging, ignore_errors=True)
        except PermissionError:
            pass  # alive, another user's


def _train_into(staging: Path, final: Path, tcfg: DictConfig, spec: DictConfig, train: Callable) -> None:
    """Train the teacher in `staging` and leave a complete entry there (weights, model, record)."""
    import torch
    from safetensors.torch import save_file

    with open_dict(tcfg):
        tcfg.paths.output_dir = str(staging)
    with single_process_env():
        record, objects = train(tcfg, announce=False)
    if not record.finished:
        raise TeacherCacheError(
            f"Training the teacher ({spec.recipe}, seed {spec.seed}) ended with status {record.status!r}: "
            f"{record.message}. Nothing was cached. See {staging} for its logs."
        )
    net = objects["module"].net  # the best epoch on validation: trainer.test loaded it
    state = {
        k: v.detach().to("cpu", torch.float32 if v.is_floating_point() else v.dtype).contiguous()
        for k, v in net.state_dict().items()
    }
    save_file(state, str(staging / WEIGHTS_FILE))
    OmegaConf.save(tcfg.model, staging / MODEL_FILE, resolve=True)
    for leftover in ("checkpoints", "student.pt", "student_model.yaml"):  # keep the entry lean, named as a teacher
        path = staging / leftover
        shutil.rmtree(path) if path.is_dir() else path.unlink(missing_ok=True)
    record.output_dir = str(final)
    record.params = {"teacher": record.params["student"]}  # in the cache, the net is a teacher
    record.files = {"weights": WEIGHTS_FILE, "model": MODEL_FILE, "config": "config.yaml"}
    record.files["sha256"] = sha256_file(staging / WEIGHTS_FILE)
    record.overrides = [f"experiment={spec.recipe}", f"seed={spec.seed}", *spec.get("overrides", [])]
    record.write(staging)


def provision_teacher(
    cfg: DictConfig, data: Mapping[str, str], train: Callable, spec: DictConfig | None = None, name: str = "teacher"
) -> TeacherRef:
    """`teacher.ckpt_path` if given; else the cached teacher of this recipe, trained first if absent.

    `train(tcfg) -> (record, objects)` trains a run (kdlab.run.train). In a multi-process job only
    global rank 0 trains; the other ranks wait for the entry to appear. `spec` (default
    `cfg.teacher`) is the teacher to provision, `name` its config key in messages.
    """
    spec = cfg.teacher if spec is None else spec
    if spec.get("ckpt_path"):
        path = Path(spec.ckpt_path).expanduser()
        if not path.is_file():
            raise FileNotFoundError(
                f"{name}.ckpt_path={spec.ckpt_path!r} does not exist. Give the path of a TeacherModule "
                f"checkpoint, a state_dict .pt or a .safetensors file, or set {name}.ckpt_path=null to use "
                f"(or train) the cached teacher of {name}.recipe."
            )
        path = path.resolve()
        return TeacherRef(checkpoint=str(path), sha256=sha256_file(path))

    tcfg = teacher_run_config(cfg, spec)
    key = run_key(tcfg, data)
    root = Path(cfg.paths.teacher_dir).resolve()  # absolute: DDP children and reloads find it too
    final = root / key

    def found(entry: tuple[Path, RunRecord], how: str) -> TeacherRef:
        weights, record = entry
        log.info("%s teacher %s (recipe %s, seed %s)", how, weights, spec.recipe, spec.seed)
        with contextlib.suppress(OSError):  # a read-only cache still serves teachers
            (weights.parent / LAST_USED_FILE).touch()
        return TeacherRef(str(weights), record.files["sha256"], key=key, recipe=spec.recipe, seed=spec.seed)

    if (entry := read_entry(final)) is not None:
        return found(entry, "Reusing cached")
    root.mkdir(parents=True, exist_ok=True)
    rank = global_rank()
    while True:
        with file_lock(root / f"{key}.lock"):  # concurrent sweep jobs wait for one training
            if (entry := read_entry(final)) is not None:
                return found(entry, "Reusing (trained meanwhile by another job)")
            if rank == 0:
                clean_stale_staging(root)
                log.warning(
                    "No cached teacher for recipe %r (seed %s, key %s): training it first, into %s",
                    spec.recipe,
                    spec.seed,
                    key,
                    final,
                )
                staging = root / f".{key}.tmp-{socket.gethostname()}-{os.getpid()}"
                shutil.rmtree(staging, ignore_errors=True)
                try:
                    _train_into(staging, final, tcfg, spec, train)
                except BaseException:
                    shutil.rmtree(staging, ignore_errors=True)
                    raise
                os.replace(staging, final)  # atomic: readers see no teacher or a complete one
                entry = read_entry(final)
                print_summary(entry[1])  # from its final place: the staging folder is gone
                return found(entry, "Cached and using the new")
        log.info("Rank %d waits for rank 0 to train the teacher %s", rank, key)
        time.sleep(POLL_SECONDS)


def provision_members(cfg: DictConfig, data: Mapping[str, str], train: Callable) -> list[TeacherRef]:
    """Each member of `teacher.members`, in order, exactly as one teacher is provisioned: its own
    `ckpt_path`, or the cache entry of its recipe (trained once, then reused by any run, ensemble
    or not, whose teacher has the same recipe, net, seed and overrides)."""
    return [
        provision_teacher(cfg, data, train, spec=member, name=f"teacher.members.{i}")
        for i, member in enumerate(cfg.teacher.members)
    ]


def ensemble_identity(members: list[TeacherRef]) -> dict[str, str]:
    """What a run's identity holds for its ensemble: every member's weights checksum, by position,
    so resuming against another member set is refused naming the member (teacher.member1: a -> b)."""
    return {f"member{i}": ref.sha256 for i, ref in enumerate(members)}


def ensemble_module_args(cfg: DictConfig, members: list[TeacherRef]) -> dict[str, Any]:
    """The DistillationModule's arguments for an ensemble, and each member's file recorded in `cfg`
    (as `teacher.ckpt_path` is for one teacher; locations are not part of a run's identity)."""
    specs = []
    for spec, ref in zip(cfg.teacher.members, members, strict=True):
        with open_dict(spec):
            spec.ckpt_path = ref.checkpoint
        specs.append({"net": plain(spec.model), "ckpt": ref.checkpoint, "sha256": ref.sha256})
    return {"teacher_net": None, "teacher_ckpt": None, "members": specs, "combine": plain(cfg.teacher.combine)}
