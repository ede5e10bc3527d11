"""A run owns its folder: claimed exclusively at the start, held while it runs, never written by another run.

The claim is a file, `.kdlab-run`, created with O_EXCL, plus a lock held for the run's whole life
(released by the OS when the process dies, kill -9 included). So:
- two runs that Hydra sends to one folder (the same second, the same `hydra.run.dir`) cannot both
  own it: the second is refused while the first lives;
- a folder whose claim exists but whose lock is free belongs to a run that ended or died: only that
  same run (same identity) may continue there, as a resume, and only after every check has passed.
Only the process that owns a run writes its files (rank zero; DDP children re-run the script and
claim nothing).
"""

from __future__ import annotations

import json
import os
import socket
import sys
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, NoReturn

from filelock import BaseFileLock, Timeout
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from kdlab.locks import file_lock
from kdlab.record import RecordError, RunRecord

CLAIM_FILE = ".kdlab-run"
LOCK_FILE = ".kdlab-run.lock"


class FolderTaken(RuntimeError):
    """The run folder belongs to a run that is still going (or to another run)."""


def owns_folders() -> bool:
    """Whether this process is the one that writes a run's files (not a DDP child or another rank)."""
    ranks = [os.environ.get(var, "0") for var in ("LOCAL_RANK", "RANK", "SLURM_PROCID")]
    return all(rank in ("", "0") for rank in ranks)


@dataclass
class Claim:
    """This process's hold on a run folder; `previous` is the record of the run that had it before, if any."""

    folder: Path
    lock: BaseFileLock
    previous: RunRecord | None = None
    fresh: bool = True  # no earlier run had this folder

    def release(self) -> None:
        self.lock.release()


def claim(folder: str | os.PathLike) -> Claim:
    """Take `folder` for this run; refuses (FolderTaken) a folder whose run is alive.

    A folder an earlier run had comes back with its record (`previous`, None if it died before writing
    one): whether this run may continue there is the caller's decision, by the runs' identities.
    """
    folder = Path(folder).resolve()
    folder.mkdir(parents=True, exist_ok=True)
    lock = file_lock(folder / LOCK_FILE)
    try:
        lock.acquire(timeout=0)
    except Timeout:
        raise FolderTaken(
            f"{folder} belongs to a run that is still going (it holds {folder / LOCK_FILE}). Two runs never share a "
            "folder: wait for it to end, or give this run another (hydra.run.dir=...). If no run is using it (a "
            f"crashed run on a file system without working locks), delete {folder / LOCK_FILE}."
        ) from None
    try:
        fresh = _create_claim(folder)
        previous = None
        if not fresh:
            try:
                previous = RunRecord.read(folder)
            except RecordError:
                previous = None  # killed before it wrote its first record
        return Claim(folder, lock, previous, fresh)
    except BaseException:
        lock.release()
        raise


def _create_claim(folder: Path) -> bool:
    """Write the claim file exclusively; False when it existed already (an earlier run had the folder)."""
    try:
        fd = os.open(folder / CLAIM_FILE, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        return False
    with os.fdopen(fd, "w") as f:
        json.dump({"pid": os.getpid(), "host": socket.gethostname(),
                   "started": datetime.now().astimezone().isoformat(timespec="seconds")}, f)  # fmt: skip
    return True


def holds_run(folder: Path) -> bool:
    """Whether `folder` is (or was) a kdlab run's folder."""
    return (folder / CLAIM_FILE).is_file() or (folder / "metrics.json").is_file()


def refuse(message: str) -> NoReturn:
    """Stop with the message and exit status 2: Hydra turns a callback's exceptions into warnings."""
    print(f"kdlab refused to run: {message}", file=sys.stderr)
    raise SystemExit(2)


class FolderGuard(Callback):
    """Hydra's callback before it writes anything: `hydra.run.dir` must not be another run's folder.

    Hydra writes `.hydra/` and starts `run.log` in the run folder before kdlab's code runs, so a run sent
    to an existing run's folder is refused here, untouched. A requeued SLURM job (SLURM_RESTART_COUNT) is
    that very run and may continue; a resume needs no `hydra.run.dir` (`ckpt_path` alone continues in the
    checkpoint's folder). A sweep folder may be run again only by the same sweep (its job folders then
    continue their runs): another sweep's overrides are refused before any job starts.
    """

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        folder = Path(str(config.hydra.run.dir)).expanduser()
        if owns_folders() and holds_run(folder) and not os.environ.get("SLURM_RESTART_COUNT", "0").strip("0"):
            refuse(
                f"hydra.run.dir={folder} is the folder of another run (it holds {CLAIM_FILE}); a run never writes "
                "into another run's folder. Drop hydra.run.dir (each run gets its own); to resume that run, give "
                f"only ckpt_path={folder}/checkpoints/<last.ckpt or interrupted.ckpt>."
            )

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        saved = Path(str(config.hydra.sweep.dir)).expanduser() / "multirun.yaml"
        if saved.is_file():
            then = list(OmegaConf.load(saved).hydra.overrides.task)
            if then != list(config.hydra.overrides.task):
                refuse(
                    f"hydra.sweep.dir={saved.parent} holds another sweep (its overrides: {' '.join(then)}). Run it "
                    "again with its own overrides to continue it, or give this sweep its own hydra.sweep.dir."
                )
