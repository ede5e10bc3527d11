"""Continuing a run: which checkpoint and folder a resume uses, whether the checkpoint is this run's, how to resume.

A resume continues in the folder of the run it resumes, and writes there only after every check has
passed: a refused resume leaves that run's record, config and checkpoints exactly as they were. A run
that already finished is never rewritten: resuming it is a no-op that says so.
"""

from __future__ import annotations

import logging
import shlex
import shutil
import sys
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from kdlab.checkpoints import CheckpointError, load_checkpoint, sha256_file
from kdlab.config import teacher_configs
from kdlab.identity import differences
from kdlab.record import RunRecord
from kdlab.run.folder import Claim, FolderTaken, claim

log = logging.getLogger(__name__)

CHECKPOINTS = "checkpoints"
RESUMABLE = ("interrupted.ckpt", "last.ckpt")  # where a stopped run can continue from, newest first
# What an evaluation (train=false) may change: how training went is the checkpoint's business; the
# nets, the data, the teacher (by checksum) and the code must still be the checkpoint's own.
EVALUATION_FREE_KEYS = ("trainer", "optimizer", "scheduler", "seed", "callbacks", "distill")


def run_folder_of(ckpt_path: str | Path) -> Path | None:
    """The run folder a checkpoint belongs to (`<run>/checkpoints/x.ckpt`), or None for a file elsewhere."""
    from kdlab.run.folder import holds_run

    ckpt = Path(ckpt_path).resolve()
    folder = ckpt.parent.parent
    return folder if ckpt.parent.name == CHECKPOINTS and holds_run(folder) else None


def latest_checkpoint(folder: Path) -> Path | None:
    """The newest checkpoint a stopped run in `folder` left to continue from, if any."""
    found = [folder / CHECKPOINTS / name for name in RESUMABLE if (folder / CHECKPOINTS / name).is_file()]
    return max(found, key=lambda p: p.stat().st_mtime_ns) if found else None


def _without(config: dict[str, Any] | None, keys: tuple[str, ...]) -> dict[str, Any] | None:
    return None if config is None else {k: v for k, v in config.items() if k not in keys}


def check_resume(
    ckpt_path: str | Path, identity: dict[str, Any], parts: tuple[str, ...], evaluation: bool = False
) -> None:
    """Refuse to resume (or test) from a checkpoint of another run: another recipe, data or teacher.

    `parts` are the entries of `identity` to compare now ("config", "data", "code"; "teacher" once
    the teacher is known). Resuming with a longer `trainer.max_epochs` is refused here too: the
    one-cycle schedule was laid over the original length, so the continuation would be another run.
    """
    checkpoint = load_checkpoint(ckpt_path)
    saved = checkpoint.get("kdlab", {}).get("identity") if isinstance(checkpoint, dict) else None
    if saved is None:
        raise CheckpointError(
            f"{ckpt_path} holds no kdlab run identity, so kdlab cannot tell which run it belongs to (it was "
            "made by other code or an older kdlab). Resume only from checkpoints this kdlab wrote; to reuse "
            "weights, give them as teacher.ckpt_path or load them into a new run's model."
        )
    if evaluation:  # only what the tested weights and their teacher depend on must match
        saved = {**saved, "config": _without(saved.get("config"), EVALUATION_FREE_KEYS)}
        identity = {**identity, "config": _without(identity.get("config"), EVALUATION_FREE_KEYS)}
    found = [d for part in parts for d in differences({part: saved.get(part)}, {part: identity.get(part)})]
    if found:
        shown = "; ".join(found[:12]) + (f"; and {len(found) - 12} more" if len(found) > 12 else "")
        raise CheckpointError(
            f"{ckpt_path} belongs to another run than this one (checkpoint -> now: {shown}). Resuming or "
            "testing it here would mix two experiments into one record. Run with the checkpoint's own "
            "overrides (see its run folder's .hydra/overrides.yaml); to train longer or differently, start a "
            "new run."
        )


def resume_command(overrides: list[str], checkpoint: Path | None) -> str:
    """The command that continues this run: its own overrides, plus the checkpoint when there is one.

    Without a checkpoint (stopped while its teacher trained) the same command resumes: provisioning
    continues the teacher's training from the checkpoint it left in its staging folder.
    """
    kept = [o for o in overrides if o.split("=", 1)[0].lstrip("+~") not in ("ckpt_path", "hydra.run.dir")]
    script = Path(sys.argv[0]).name if sys.argv and sys.argv[0].endswith(".py") else "train.py"
    args = [*kept, *([f"ckpt_path={checkpoint}"] if checkpoint is not None else [])]
    return f"python {script} " + " ".join(shlex.quote(a) for a in args)


class Finished(Exception):  # noqa: N818 - a signal between two functions, not an error
    """The run to continue has already finished: nothing to do."""

    def __init__(self, record: RunRecord) -> None:
        super().__init__(record.output_dir)
        self.record = record


def resume_source(cfg: DictConfig, owned: Claim | None, identity: dict, setup: str) -> tuple[Path | None, Path | None]:
    """(checkpoint to continue from, the run folder to continue in when not this one), checked to be this run's.

    An explicit `ckpt_path`, or the earlier run in this very folder (a requeued or re-run sweep job).
    Raises Finished when that run already ended: it is left exactly as it is.
    """
    if cfg.ckpt_path:
        ckpt = Path(cfg.ckpt_path).resolve()
        check_resume(ckpt, identity, ("config", "data", "code"), evaluation=not cfg.train)
        target = run_folder_of(ckpt) if cfg.train else None
        previous = read_record(target) if target is not None else None
        if previous is not None and previous.finished and previous.mode == "train":
            check_given_teachers(cfg, previous, ckpt)
            raise Finished(previous)
        return ckpt, target if target is not None and target != (owned.folder if owned else None) else None
    if owned is None or owned.fresh:
        return None, None
    earlier = owned.previous
    if earlier is not None and earlier.identity.get("setup") != setup:
        raise FolderTaken(
            f"{owned.folder} holds another run ({earlier.name}, seed {earlier.seed}, status {earlier.status}): its "
            "config, data or code differ from this run's. A run never writes into another run's folder: give this "
            "one its own (drop hydra.run.dir, or choose a new hydra.sweep.dir)."
        )
    if earlier is not None and earlier.finished:
        raise Finished(earlier)
    ckpt = latest_checkpoint(owned.folder)
    if ckpt is None:
        raise FolderTaken(
            f"{owned.folder} holds a run that stopped before its first checkpoint (status "
            f"{earlier.status if earlier else 'unknown'}), so there is nothing to continue. Move that folder away or "
            "give this run another (drop hydra.run.dir, or choose a new hydra.sweep.dir)."
        )
    check_resume(ckpt, identity, ("config", "data", "code"))
    log.info("Continuing the run in %s from %s.", owned.folder, ckpt.name)
    return ckpt, None  # already in its folder


def check_given_teachers(cfg: DictConfig, previous: RunRecord, ckpt: Path) -> None:
    """A teacher file given now must be the one the finished run distilled from (cached ones: the config says)."""
    then = [ref.sha256 for ref in previous.members or [previous.teacher] if ref is not None]
    for (name, teacher), sha in zip(teacher_configs(cfg), then, strict=False):
        if teacher.get("ckpt_path") and Path(teacher.ckpt_path).is_file() and sha256_file(teacher.ckpt_path) != sha:
            raise CheckpointError(
                f"{ckpt} belongs to a run distilled from another teacher than {name}.ckpt_path={teacher.ckpt_path} "
                f"(sha256 {sha[:12]}... then). Resuming it would mix two experiments; start a new run."
            )


def read_record(folder: Path) -> RunRecord | None:
    try:
        return RunRecord.read(folder)
    except Exception:
        return None


def move_into(target: Path, folder: Path, owned: Claim | None) -> tuple[Path, Claim | None]:
    """Leave this process's fresh folder for the resumed run's own, once every check has passed."""
    taken = claim(target)  # FolderTaken while that run is still going
    for handler in logging.getLogger().handlers:  # Hydra's run.log follows the run into its folder
        if isinstance(handler, logging.FileHandler) and Path(handler.baseFilename).parent == folder:
            handler.close()
            handler.baseFilename = str(target / Path(handler.baseFilename).name)
    if owned is not None and owned.fresh:
        owned.release()
        shutil.rmtree(folder, ignore_errors=True)  # held only Hydra's start-up files and our claim
    log.info("Resuming in %s (checks passed).", target)
    return target, taken


def continued(record: RunRecord, previous: RunRecord | None) -> RunRecord:
    """This attempt's record as the continuation of `previous`: what the run was stays what it was."""
    if previous is None:  # its first attempt died before writing a record
        return record
    resumed_at = record.started_at
    for key in ("overrides", "swept", "fixed", "started_at", "wall_time_s"):
        setattr(record, key, getattr(previous, key))
    record.resumed = [*previous.resumed, resumed_at]
    record.stages = {name: round(previous.stages.get(name, 0.0) + record.stages.get(name, 0.0), 2)
                     for name in dict.fromkeys([*previous.stages, *record.stages])}  # fmt: skip
    return record
