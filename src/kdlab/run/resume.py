"""Continuing a run: which checkpoint and folder a resume uses, whether the checkpoint is this run's, how to resume.

A resume continues in the folder of the run it resumes, and writes there only after every check has
passed: a refused resume leaves that run's record, config and checkpoints exactly as they were. A run
that already finished is never rewritten: resuming it is a no-op that says so.
"""

from __future__ import annotations

import shlex
import sys
from pathlib import Path
from typing import Any

from kdlab.checkpoints import CheckpointError, load_checkpoint
from kdlab.identity import differences

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
