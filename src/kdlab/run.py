"""The entry point: `train(cfg) -> (record, objects)` and the `@hydra.main` wrapper around it.

A run is refused before any work if its config cannot work (kdlab.validation); otherwise it ends
with a RunRecord in its folder whatever happens: ok, smoke, diverged, interrupted or failed. Only a
healthy, full run exits 0.
"""

from __future__ import annotations

import kdlab.threads  # first, before torch: it sets how idle OpenMP workers wait, read once when torch loads

# isort: split
import logging
import shlex
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import hydra
import lightning as L
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf, open_dict

from kdlab.allocator import keep_freed_memory
from kdlab.analysis import TestAnalysis
from kdlab.analysis.omitted import logits_of, omitted_class_report
from kdlab.callbacks import Interrupted, InterruptHandler, ResumeState, TensorBoardSession
from kdlab.config import CONFIG_DIR, plain
from kdlab.console import quiet_libraries
from kdlab.data import data_fingerprint
from kdlab.identity import code_versions, config_identity, run_key, student_key
from kdlab.modules.guards import DivergenceError
from kdlab.provenance import code_state, job_overrides, smoke_reasons
from kdlab.record import RECORD_FILE, RunRecord
from kdlab.summary import print_summary, scratch_baseline, tensorboard_hparams
from kdlab.sweeps import sweep_job, sweep_job_ddp
from kdlab.teacher_outputs import provide_teacher_outputs
from kdlab.teachers import ensemble_identity, ensemble_module_args, provision_members, provision_teacher
from kdlab.validation import check_resume, is_distillation, is_ensemble, validate_config

log = logging.getLogger(__name__)

STUDENT_FILE = "student.pt"
STUDENT_MODEL_FILE = "student_model.yaml"
CONFIG_FILE = "config.yaml"  # the resolved config: what export and evaluation rebuild the run from


def count_params(net: torch.nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())


def build_callbacks(cfg: DictConfig) -> list[L.Callback]:
    """The configured callbacks; without a terminal the Rich bar gives way to one line per epoch."""
    show_bar = cfg.trainer.enable_progress_bar and sys.stdout.isatty()
    callbacks = []
    for name, conf in (cfg.get("callbacks") or {}).items():
        if conf is None or (name == "progress_bar" and not show_bar) or (name == "epoch_lines" and show_bar):
            continue
        callbacks.append(instantiate(conf))
    return callbacks


def resumed_run_folder(cfg: DictConfig) -> Path | None:
    """The folder of the run a checkpoint belongs to: a resumed run continues there, not in a new one."""
    if not (cfg.train and cfg.ckpt_path):
        return None
    ckpt = Path(cfg.ckpt_path).resolve()
    folder = ckpt.parent.parent
    is_run = ckpt.parent.name == "checkpoints" and ((folder / RECORD_FILE).is_file() or (folder / ".hydra").is_dir())
    return folder if is_run else None


def resume_command(cfg: DictConfig, output_dir: Path, checkpoint: Path) -> str:
    task, _, _ = job_overrides()
    kept = [o for o in task if o.split("=", 1)[0].lstrip("+~") not in ("ckpt_path", "hydra.run.dir")]
    script = Path(sys.argv[0]).name if sys.argv and sys.argv[0].endswith(".py") else "train.py"
    args = [*kept, f"hydra.run.dir={output_dir}", f"ckpt_path={checkpoint}"]
    return f"python {script} " + " ".join(shlex.quote(a) for a in args)


def new_record(cfg: DictConfig, output_dir: Path) -> RunRecord:
    task, swept, fixed = job_overrides()
    return RunRecord(
        name=cfg.name,
        kind="distillation" if is_distillation(cfg) else "supervised",
        mode="train" if cfg.train else "evaluate",
        seed=cfg.seed,
        smoke=smoke_reasons(cfg),
        overrides=task,
        swept=swept,
        fixed=fixed,
        output_dir=str(output_dir),
        code=code_state(),
        started_at=datetime.now().astimezone().isoformat(timespec="seconds"),
    )


def train(cfg: DictConfig, announce: bool = True) -> tuple[RunRecord, dict[str, Any]]:
    """Fit, test the best checkpoint (selected on validation), and record the run, however it ends.

    `announce=False` leaves the summary to the caller (the teacher cache prints it from its final place).
    """
    started = time.perf_counter()
    quiet_libraries()
    threads = kdlab.threads.configure_threads(OmegaConf.select(cfg, "runtime.threads", default="auto"))
    memory = keep_freed_memory(OmegaConf.select(cfg, "runtime.malloc", default="tuned"))
    torch.set_flush_denormal(True)  # Adam's state decays into denormals on CPU: +50-70% steps/s
    validate_config(cfg)
    output_dir = resumed_run_folder(cfg) or Path(cfg.paths.output_dir)
    with open_dict(cfg):
        cfg.paths.output_dir = str(output_dir)
    record = new_record(cfg, output_dir)
    record.code["runtime"] = {**threads.as_record(), "memory": memory}
    objects: dict[str, Any] = {"cfg": cfg}
    interrupts = InterruptHandler(output_dir / "checkpoints")
    try:
        with interrupts:
            _train(cfg, record, objects, interrupts)
        record.status = "smoke" if record.smoke else "ok"
    except DivergenceError as err:
        record.status, record.message = "diverged", str(err)
        raise
    except BaseException as err:
        stopped = interrupts.interrupted() if not isinstance(err, Interrupted) else err
        if stopped is not None:
            record.status = "interrupted"
            record.message = f"Stopped by {stopped}."
            if stopped.checkpoint is not None:
                stopped.resume = resume_command(cfg, output_dir, stopped.checkpoint)
                record.message += f" To resume: {stopped.resume}"
            raise stopped from None
        record.status, record.message = "failed", f"{type(err).__name__}: {err}"
        raise
    finally:
        finish(cfg, record, objects, time.perf_counter() - started, announce)
    return record, objects


def _train(cfg: DictConfig, record: RunRecord, objects: dict[str, Any], interrupts: InterruptHandler) -> None:
    datamodule: L.LightningDataModule = instantiate(cfg.data, _convert_="all")  # plain lists in ckpts
    datamodule.prepare_data()  # fetch and verify before anything depends on the data's checksums
    data = data_fingerprint(datamodule.data_dir)
    identity = {"config": config_identity(cfg), "data": data, "code": code_versions()}
    if cfg.ckpt_path:  # before a teacher is trained for a run that cannot continue anyway
        check_resume(cfg.ckpt_path, identity, ("config", "data", "code"), evaluation=not cfg.train)
    module_args: dict[str, Any] = {}
    if is_ensemble(cfg):  # each member through the one-teacher cache; resume needs every member unchanged
        record.members = provision_members(cfg, data, train)
        identity["teacher"] = ensemble_identity(record.members)
        module_args.update(ensemble_module_args(cfg, record.members))
        if cfg.ckpt_path:
            check_resume(cfg.ckpt_path, identity, ("teacher",), evaluation=not cfg.train)
    elif is_distillation(cfg):
        record.teacher = provision_teacher(cfg, data, train)
        cfg.teacher.ckpt_path = record.teacher.checkpoint
        identity["teacher"] = module_args["teacher_sha256"] = record.teacher.sha256
        if cfg.ckpt_path:
            check_resume(cfg.ckpt_path, identity, ("teacher",), evaluation=not cfg.train)
    record.identity = {
        "run": run_key(cfg, data, identity.get("teacher")),
        "student": student_key(cfg, data),
        "data": data,
    }
    if cfg.seed is not None:  # after provisioning: a cached teacher and a fresh one give the same student
        L.seed_everything(cfg.seed, workers=True)

    module: L.LightningModule = instantiate(cfg.module, **module_args)
    record.params = {"student": count_params(module.net)}
    if is_distillation(cfg):
        record.params["teacher"] = count_params(module.teacher)
        teacher = record.members if record.members else record.teacher
        record.identity["teacher_outputs"] = provide_teacher_outputs(cfg, module, datamodule, data, teacher)
    session = TensorBoardSession(tensorboard_hparams(cfg, record))
    analysis = TestAnalysis(output_dir=record.output_dir)  # confusion, calibration, disagreements
    callbacks = [*build_callbacks(cfg), ResumeState(identity), interrupts, session, analysis]
    loggers = [instantiate(conf) for conf in (cfg.get("logger") or {}).values() if conf is not None]
    show_bar = any(isinstance(c, L.pytorch.callbacks.ProgressBar) for c in callbacks)
    trainer: L.Trainer = instantiate(
        cfg.trainer, callbacks=callbacks, logger=loggers or False, enable_progress_bar=show_bar
    )
    objects.update(datamodule=datamodule, module=module, trainer=trainer, session=session)

    with sweep_job_ddp(trainer):
        if cfg.train:
            trainer.fit(module, datamodule=datamodule, ckpt_path=cfg.ckpt_path, weights_only=True)
            if (stopped := interrupts.interrupted()) is not None:
                raise stopped
            best = trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else ""
            record.files["best_checkpoint"] = best or ""
        record.metrics.update(_metrics(trainer, "val/"))
        if cfg.test:
            tested = (record.files.get("best_checkpoint") or None) if cfg.train else cfg.ckpt_path
            trainer.test(module, datamodule=datamodule, ckpt_path=tested, verbose=False, weights_only=True)
            record.metrics.update(_metrics(trainer, "test/"))
            record.analysis = {k: v for k, v in analysis.results.items() if k != "files"}
            record.files.update({Path(f).stem: f for f in analysis.results.get("files", [])})
            if datamodule.exclude_classes and trainer.is_global_zero:
                record.analysis["omitted"] = omitted_analysis(module.net, datamodule)


def omitted_analysis(net: torch.nn.Module, dm) -> dict[str, Any]:
    """Hinton's omitted-class numbers for the tested (best) student: errors before and after the bias fix."""
    mean, std = dm.hparams.mean, dm.hparams.std
    val = (logits_of(net, dm.data_val.x, mean, std), dm.data_val.y)
    test = (logits_of(net, dm.data_test.x, mean, std), dm.data_test.y)
    return omitted_class_report(val, test, dm.exclude_classes)


def _metrics(trainer: L.Trainer, prefix: str) -> dict[str, float]:
    return {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith(prefix)}


def finish(cfg: DictConfig, record: RunRecord, objects: dict[str, Any], wall: float, announce: bool) -> None:
    """Write the record (and, for a finished run, the student) from rank zero, close TensorBoard, summarise."""
    trainer: L.Trainer | None = objects.get("trainer")
    module = objects.get("module")
    if trainer is not None:
        record.metrics.update({k: v for k, v in _metrics(trainer, "val/").items() if k not in record.metrics})
        record.epochs, record.global_step = trainer.current_epoch, trainer.global_step
    record.wall_time_s = round(wall, 2)
    record.finished_at = datetime.now().astimezone().isoformat(timespec="seconds")
    if record.is_distillation and record.identity.get("student"):
        record.baseline = scratch_baseline(cfg.paths.log_dir, record.identity["student"])
    if trainer is not None and not trainer.is_global_zero:
        return
    output_dir = Path(record.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    if record.finished and module is not None:
        torch.save(module.net.state_dict(), output_dir / STUDENT_FILE)
        OmegaConf.save(cfg.model, output_dir / STUDENT_MODEL_FILE, resolve=True)
        record.files.update(weights=STUDENT_FILE, model=STUDENT_MODEL_FILE)
    try:
        # `hydra` is present in composed test configs; the run folder's .hydra/ has it anyway
        resolved = {key: plain(cfg[key]) for key in cfg if key != "hydra"}
        OmegaConf.save(OmegaConf.create(resolved), output_dir / CONFIG_FILE)
        record.files["config"] = CONFIG_FILE
    except Exception as err:  # an unresolvable value is no reason to lose the record
        log.warning("Could not write the resolved config: %s", err)
    record.write(output_dir)
    if (session := objects.get("session")) is not None:
        session.end(success=record.finished)
    if announce:
        print_summary(record)


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="train")
@sweep_job  # in a multirun a failed job returns NaN and the sweep goes on (exiting 1 at its end)
def hydra_main(cfg: DictConfig) -> float | None:
    """Returns `optimized_metric` (a validation metric) for Hydra sweepers such as Optuna."""
    record, _ = train(cfg)
    return record.metric(cfg.optimized_metric)


def main() -> None:
    """`python train.py ...`: exit 130/143 when stopped by Ctrl+C/SIGTERM, as shells and schedulers expect."""
    try:
        hydra_main()
    except Interrupted as stopped:
        print(f"kdlab: {stopped}; the run's record and checkpoints are in its folder.", file=sys.stderr)
        if stopped.resume:
            print(f"To resume: {stopped.resume}", file=sys.stderr)
        sys.exit(stopped.exit_code)
