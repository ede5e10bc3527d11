"""The entry point: `train(cfg) -> (record, objects)` and the `@hydra.main` wrapper around it.

The order of a run, so that nothing a researcher has is lost and a refusal comes in seconds:
1. claim the run's folder (kdlab.run.folder): a folder another live run holds is refused untouched;
2. validate the whole config (kdlab.run.validation), `runtime.*` included;
3. read the data (its spec and fingerprint) and decide what this run continues, if anything: an
   explicit `ckpt_path`, or the earlier run of this same folder (a requeued or re-run sweep job),
   checked against this run's identity; a finished run is never rewritten (a no-op that says so);
4. provision each teacher (kdlab.teachers.provision: cached, or trained now by a plain function);
5. only then move into the resumed run's folder, and fit, test and record.
Only a healthy, full run exits 0; anything else leaves a record saying why, in a folder this run owns.
"""

from __future__ import annotations

import logging
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import hydra
import torch
from omegaconf import DictConfig, OmegaConf

from kdlab.callbacks import Interrupted, InterruptHandler
from kdlab.checkpoints import CheckpointError, load_weights
from kdlab.config import CONFIG_DIR, ConfigError, teacher_configs
from kdlab.console import quiet_libraries
from kdlab.data.fetch import DataUnavailableError, ForeignDataError
from kdlab.models import build_net
from kdlab.modules.ensemble import SCORED_AT, check_combination
from kdlab.record import RunRecord
from kdlab.report.baselines import scratch_baseline
from kdlab.run.fit import conclude, fit_and_test, fit_run, new_record, outcome, prepare_data, save_outputs, stage
from kdlab.run.folder import Claim, FolderTaken, claim, owns_folders
from kdlab.run.provenance import job_overrides
from kdlab.run.resume import Finished, check_resume, continued, move_into, read_record, resume_command, resume_source
from kdlab.run.summary import print_summary
from kdlab.run.threads import apply_threads, plan_threads
from kdlab.run.validation import validate_config
from kdlab.sweeps import in_multirun, sweep_job
from kdlab.teachers import TeacherCacheError, TeacherContractError, provision_teacher, teacher_norm

log = logging.getLogger(__name__)

# What a person gets as one paragraph and exit status 2: their input cannot work, nothing has been lost.
REFUSALS = (ConfigError, CheckpointError, FolderTaken, TeacherContractError, ForeignDataError,
            DataUnavailableError, TeacherCacheError, FileNotFoundError)  # fmt: skip


def train(cfg: DictConfig, announce: bool = True) -> tuple[RunRecord, dict[str, Any]]:
    """Fit, test the best checkpoint (selected on validation), and record the run, however it ends."""
    started = time.perf_counter()
    quiet_libraries()
    folder = Path(cfg.paths.output_dir).resolve()
    owned: Claim | None = claim(folder) if owns_folders() else None  # FolderTaken: nothing written
    writable = owned is not None and owned.fresh  # a folder this run may write into; None until it may
    task, swept, fixed = job_overrides()
    record, objects = new_record(cfg, folder, (task, swept, fixed)), {"cfg": cfg}
    interrupts = InterruptHandler(folder / "checkpoints")
    try:
        with interrupts:
            validate_config(cfg)
            threads = plan_threads(OmegaConf.select(cfg, "runtime.threads", default="auto"))
            apply_threads(threads)
            torch.set_flush_denormal(True)  # Adam's state decays into denormals on CPU; flushed, every run alike
            record.code["runtime"] = threads.as_record()
            with stage(record, "data"):
                datamodule, identity = prepare_data(cfg, record)
            ckpt, target = resume_source(cfg, owned, identity, record.identity["setup"])
            if writable:
                record.write(folder)  # status "running": a run killed now is listed as killed, not missing
            module_args = provision(cfg, record, identity, datamodule.spec)
            if ckpt is not None:
                check_resume(ckpt, identity, ("teacher",), evaluation=not cfg.train)
            if target is not None:  # every check passed: continue in the resumed run's folder
                folder, owned = move_into(target, folder, owned) if owned is not None else (target, None)
                record = continued(record, read_record(target))
                record.output_dir = str(folder)
            elif ckpt is not None and owned is not None and not owned.fresh:  # a job continuing in its own folder
                record = continued(record, owned.previous)
            writable = owned is not None
            if writable:
                record.write(folder)
            fit_and_test(cfg, folder, ckpt, record, objects, interrupts, datamodule, identity, module_args)
        record.status = "smoke" if record.smoke else "ok"
    except Finished as done:
        writable = False  # never rewrite a finished run
        record, objects["finished"] = done.record, True
        if owned is not None and owned.fresh:  # it held only Hydra's start-up files and our claim
            owned.release()
            owned = None
            shutil.rmtree(folder, ignore_errors=True)
        log.info("%s has already finished (status %s): nothing to resume.", done.record.output_dir, done.record.status)
    except BaseException as err:
        stop = outcome(record, err, interrupts)
        if isinstance(stop, Interrupted):
            mine = stop.checkpoint is not None and stop.checkpoint.parent.parent == folder
            stop.resume = resume_command(record.overrides or task, stop.checkpoint if mine else None)
            record.message += f" To resume: {stop.resume}"
        if stop is err:
            raise
        raise stop from None
    finally:
        if not objects.get("finished"):
            conclude(record, objects, time.perf_counter() - started)
            if record.is_distillation and record.identity.get("student"):
                record.baseline = scratch_baseline(cfg.paths.log_dir, record.identity["student"])
            trainer = objects.get("trainer")
            if writable and (trainer is None or trainer.is_global_zero):
                save_outputs(cfg, record, objects, folder)
            if (session := objects.get("session")) is not None:
                session.end(success=record.finished)
            if (mirror := objects.get("mirror")) is not None:
                mirror.end(record)  # after save_outputs: the record's final metrics and status
        if owned is not None:
            owned.release()
        if announce and owns_folders():
            print_summary(record)
    return record, objects


def provision(cfg: DictConfig, record: RunRecord, identity: dict, spec) -> dict[str, Any]:
    """Each teacher found or trained (before the student's run starts); the distillation module's teacher arguments."""
    teachers = teacher_configs(cfg)
    if not teachers:
        return {}
    fingerprint, root = identity["data"], cfg.paths.teacher_dir
    with stage(record, "teacher"):  # read from the cache, or trained now
        refs = [provision_teacher(cfg, spec_cfg, fingerprint, root, fit_run, name) for name, spec_cfg in teachers]
    norms = [teacher_norm(ref, spec, name) for ref, (name, _) in zip(refs, teachers, strict=True)]
    for ref, (name, teacher) in zip(refs, teachers, strict=True):
        if ref.key is None:  # a file given by path: it must be the configured net's, said now, not at fit
            load_weights(build_net(teacher.model, spec.input_shape, spec.num_classes), ref.checkpoint, role=name)
    if len(teachers) == 1 and teachers[0][0] == "teacher":
        record.teacher = refs[0]
        cfg.teacher.ckpt_path = refs[0].checkpoint
        identity["teacher"] = refs[0].sha256
        return {"teacher_ckpt": refs[0].checkpoint, "teacher_sha256": refs[0].sha256, "teacher_norm": norms[0]}
    record.members = refs
    identity["teacher"] = {f"member{i}": ref.sha256 for i, ref in enumerate(refs)}
    members = []
    for (_, member), ref, norm in zip(teachers, refs, norms, strict=True):
        member.ckpt_path = ref.checkpoint  # recorded in the config as teacher.ckpt_path is for one teacher
        members.append({"net": OmegaConf.to_container(member.model, resolve=True), "ckpt": ref.checkpoint,
                        "sha256": ref.sha256, "norm": norm})  # fmt: skip
    combine = OmegaConf.to_container(cfg.teacher.combine, resolve=True) if cfg.teacher.get("combine") else {}
    record.combine = {**check_combination(combine, len(refs)), "scored_at": SCORED_AT}  # as the module reads it
    return {"teacher_net": None, "teacher_ckpt": None, "members": members, "combine": combine}


def provision_only(cfg: DictConfig) -> list:
    """The teachers `cfg` distils from, found or trained, without starting its run (scripts/provision.py)."""
    quiet_libraries()
    validate_config(cfg)
    apply_threads(plan_threads(OmegaConf.select(cfg, "runtime.threads", default="auto")))
    record = new_record(cfg, Path(cfg.paths.log_dir))
    datamodule, identity = prepare_data(cfg, record)
    provision(cfg, record, identity, datamodule.spec)
    return record.members or ([record.teacher] if record.teacher else [])


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="train")
@sweep_job  # in a multirun a failed job returns NaN and the sweep goes on (exiting 1 at its end)
def hydra_main(cfg: DictConfig) -> float | None:
    """Returns `optimized_metric` (a validation metric) for Hydra sweepers such as Optuna."""
    try:
        record, _ = train(cfg)
    except REFUSALS as err:
        if in_multirun():
            raise
        log.error("kdlab refused to run: %s", " ".join(str(err).split()))
        raise SystemExit(2) from None
    return record.metric(cfg.optimized_metric)


def main() -> None:
    """`python train.py ...`: exit 130/143 when stopped by Ctrl+C/SIGTERM, 2 when refused, as shells expect."""
    try:
        hydra_main()
    except Interrupted as stopped:
        print(f"kdlab: {stopped}; the run's record and checkpoints are in its folder.", file=sys.stderr)
        if stopped.resume:
            print(f"To resume: {stopped.resume}", file=sys.stderr)
        sys.exit(stopped.exit_code)
