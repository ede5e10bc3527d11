"""One training run in a folder: build the datamodule, system and Trainer, fit, test the best checkpoint.

`fit_and_test` is the part every run shares; `fit_run` is the whole of a teacher's training (a plain
function with explicit arguments: its config, its folder, a checkpoint to resume), which teacher
provisioning calls before the student's run starts.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

import lightning as L
import torch
from hydra.utils import instantiate
from lightning.pytorch.callbacks import LearningRateMonitor
from lightning.pytorch.plugins.environments import SLURMEnvironment
from omegaconf import DictConfig, OmegaConf, open_dict

from kdlab.analysis import TestAnalysis
from kdlab.analysis.omitted import logits_of, omitted_class_report
from kdlab.callbacks import Interrupted, InterruptHandler, ResumeState, TensorBoardSession, TrackerMirror
from kdlab.callbacks.metric_epochs import MetricEpochs
from kdlab.checkpoints import checkpoint_epoch
from kdlab.config import is_distillation, plain
from kdlab.identity import code_versions, config_identity, digest, run_key, student_key
from kdlab.modules.tally import DivergenceError
from kdlab.record import RunRecord
from kdlab.run.provenance import code_state, smoke_reasons
from kdlab.run.summary import tensorboard_hparams
from kdlab.run.trackers import build_loggers

log = logging.getLogger(__name__)

STUDENT_FILE = "student.pt"
STUDENT_MODEL_FILE = "student_model.yaml"
CONFIG_FILE = "config.yaml"  # the resolved config: what export and evaluation rebuild the run from


@contextmanager
def stage(record: RunRecord, name: str) -> Iterator[None]:
    """Add the seconds spent in the block to `record.stages[name]`, however it ends: where a run's time went."""
    started = time.perf_counter()
    try:
        yield
    finally:
        record.stages[name] = round(record.stages.get(name, 0.0) + time.perf_counter() - started, 2)


def count_params(net: torch.nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())


def new_record(cfg: DictConfig, folder: Path, overrides: tuple[list, list, list] = ([], [], [])) -> RunRecord:
    task, swept, fixed = overrides
    return RunRecord(
        name=cfg.name,
        kind="distillation" if is_distillation(cfg) else "supervised",
        mode="train" if cfg.train else "evaluate",
        seed=cfg.seed,
        smoke=smoke_reasons(cfg),
        overrides=list(task),
        swept=list(swept),
        fixed=list(fixed),
        output_dir=str(folder),
        code=code_state(),
        started_at=datetime.now().astimezone().isoformat(timespec="seconds"),
    )


def prepare_data(cfg: DictConfig, record: RunRecord) -> tuple[L.LightningDataModule, dict[str, Any]]:
    """The datamodule, its files fetched and read; the run's identity so far (config, data, code) in `record`."""
    datamodule = instantiate(cfg.data, _convert_="all")  # plain lists in checkpoints
    datamodule.prepare_data()  # fetch and verify before anything depends on the data's checksums
    datamodule.setup("fit")
    record.data = datamodule.spec.to_dict()
    fingerprint = datamodule.spec.fingerprint
    identity = {"config": config_identity(cfg), "data": fingerprint, "code": code_versions()}
    record.identity = {"setup": digest(identity), "student": student_key(cfg, fingerprint), "data": fingerprint}
    return datamodule, identity


def build_callbacks(cfg: DictConfig) -> list[L.Callback]:
    """The configured callbacks; the Rich bar only in a terminal. The epoch lines always: on the console
    without a bar, in run.log alone beside one (kdlab.callbacks.epoch_lines)."""
    show_bar = cfg.trainer.enable_progress_bar and sys.stdout.isatty()
    callbacks = []
    for name, conf in (cfg.get("callbacks") or {}).items():
        if conf is None or (name == "progress_bar" and not show_bar):
            continue
        callbacks.append(instantiate(conf))
    return callbacks


def fit_and_test(cfg: DictConfig, folder: Path, ckpt_path: Path | None, record: RunRecord, objects: dict,
                 interrupts: InterruptHandler, datamodule, identity: dict, module_args: dict,
                 net: str | None = None) -> None:  # fmt: skip
    """Build the system and Trainer (outputs into `folder`), fit (from `ckpt_path`), test the best checkpoint.

    `net` names the trained net in the figures: by default "student" when distilling, else the run's name.
    """
    with open_dict(cfg):
        cfg.paths.output_dir = str(folder)  # checkpoints, TensorBoard, analysis: callbacks interpolate it
    record.identity["run"] = run_key(cfg, identity["data"], identity.get("teacher"))
    if cfg.seed is not None:  # after provisioning: a cached teacher and a fresh one give the same student
        L.seed_everything(cfg.seed, workers=True, verbose=False)
    spec = datamodule.spec
    module = instantiate(cfg.module, num_classes=spec.num_classes, input_shape=list(spec.input_shape), **module_args)
    record.params = {"student": count_params(module.net)}
    objects.update(datamodule=datamodule, module=module)
    if is_distillation(cfg):
        from kdlab.teachers.cache import provide_teacher_outputs

        record.params["teacher"] = count_params(module.teacher)
        refs = record.members or [record.teacher]
        with stage(record, "teacher outputs"):
            record.identity["teacher_outputs"] = provide_teacher_outputs(cfg, module, datamodule, refs,
                                                                         cfg.paths.teacher_dir)  # fmt: skip
    session = TensorBoardSession(tensorboard_hparams(cfg, record))
    mirror = TrackerMirror(tensorboard_hparams(cfg, record))  # the same keys for CSV, MLflow, W&B
    net = net or ("student" if is_distillation(cfg) else cfg.name)
    analysis = TestAnalysis(output_dir=folder, net=net)  # confusion, calibration, disagreements
    interrupts.dirpath = folder / "checkpoints"
    epochs = MetricEpochs()  # which epoch each recorded metric comes from
    loggers = build_loggers(cfg, folder)
    # Without a logger (logger=none) a learning-rate monitor has nowhere to write, and Lightning's would stop the
    # run at its first step: it goes, as the logger did.
    configured = [c for c in build_callbacks(cfg) if loggers or not isinstance(c, LearningRateMonitor)]
    callbacks = [*configured, ResumeState(identity), interrupts, session, mirror, analysis, epochs]
    show_bar = any(isinstance(c, L.pytorch.callbacks.ProgressBar) for c in callbacks)
    # Under SLURM, Lightning would requeue on SIGUSR1 and later resume from its own hpc checkpoint, past
    # kdlab's resume checks; a preempted job resumes through kdlab instead (its folder's checkpoint).
    slurm = {"plugins": [SLURMEnvironment(auto_requeue=False)]} if SLURMEnvironment.detect() else {}
    trainer: L.Trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False,
                                     enable_progress_bar=show_bar, **slurm)  # fmt: skip
    objects.update(trainer=trainer, session=session, mirror=mirror, metric_epochs=epochs)
    if cfg.train:
        with stage(record, "fit"):
            trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path, weights_only=True)
        if (stopped := interrupts.interrupted()) is not None:
            raise stopped
        if ckpt_path is not None and not metrics_of(trainer, "val/"):
            # Resumed with nothing left to train (stopped after the last validation): validate the final
            # weights again for the record, as that validation did (val/acc_best, val/acc, ...).
            trainer.validate(module, datamodule=datamodule, verbose=False)
        best = trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else ""
        record.files["best_checkpoint"] = best or ""
    record.metrics.update(metrics_of(trainer, "val/"))
    if cfg.test:
        tested = (record.files.get("best_checkpoint") or None) if cfg.train else ckpt_path
        with stage(record, "test"):  # with the test-time analysis (confusion, calibration, figures)
            trainer.test(module, datamodule=datamodule, ckpt_path=tested, verbose=False, weights_only=True)
        record.metrics.update(metrics_of(trainer, "test/"))
        # without a checkpoint callback, test ran on the weights of the last epoch trained
        epochs.tested = checkpoint_epoch(tested) if tested else (trainer.current_epoch if cfg.train else None)
        record.analysis = {k: v for k, v in analysis.results.items() if k != "files"}
        record.files.update({Path(f).stem: f for f in analysis.results.get("files", [])})
        if datamodule.exclude_classes and trainer.is_global_zero:
            record.analysis["omitted"] = omitted_analysis(module.net, datamodule)


def omitted_analysis(net: torch.nn.Module, dm) -> dict[str, Any]:
    """Hinton's omitted-class numbers for the tested (best) student: errors before and after the bias fix."""
    norm = dm.static_spec.normalization
    val = (logits_of(net, dm.data_val.x, **norm), dm.data_val.y)
    test = (logits_of(net, dm.data_test.x, **norm), dm.data_test.y)
    return omitted_class_report(val, test, dm.exclude_classes)


def metrics_of(trainer: L.Trainer, prefix: str) -> dict[str, float]:
    return {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith(prefix)}


def conclude(record: RunRecord, objects: dict, wall: float) -> None:
    """The record's final fields from the trainer (epochs, steps, last val metrics) and the wall time."""
    trainer: L.Trainer | None = objects.get("trainer")
    if trainer is not None:
        record.metrics.update({k: v for k, v in metrics_of(trainer, "val/").items() if k not in record.metrics})
        record.epochs, record.global_step = trainer.current_epoch, trainer.global_step
    if (epochs := objects.get("metric_epochs")) is not None:
        record.metric_epochs = epochs.of(record.metrics)
    record.wall_time_s = round(record.wall_time_s + wall, 2)  # a resumed run adds to its earlier time
    record.finished_at = datetime.now().astimezone().isoformat(timespec="seconds")


def save_outputs(cfg: DictConfig, record: RunRecord, objects: dict, folder: Path) -> None:
    """The record, the resolved config and, for a finished run, the student: from rank zero only."""
    module = objects.get("module")
    folder.mkdir(parents=True, exist_ok=True)
    if record.finished and module is not None:
        torch.save(module.net.state_dict(), folder / STUDENT_FILE)
        OmegaConf.save(OmegaConf.create(module.hparams.net), folder / STUDENT_MODEL_FILE)
        record.files.update(weights=STUDENT_FILE, model=STUDENT_MODEL_FILE)
    try:
        resolved = {key: plain(cfg[key]) for key in cfg if key != "hydra"}
        OmegaConf.save(OmegaConf.create(resolved), folder / CONFIG_FILE)
        record.files["config"] = CONFIG_FILE
    except Exception as err:  # an unresolvable value is no reason to lose the record
        log.warning("Could not write the resolved config: %s", err)
    record.write(folder)


def outcome(record: RunRecord, err: BaseException, interrupts: InterruptHandler) -> BaseException:
    """Set the record's status for an error that ended the run; returns what to raise."""
    if isinstance(err, DivergenceError):
        record.status, record.message = "diverged", str(err)
        return err
    stopped = err if isinstance(err, Interrupted) else interrupts.interrupted()
    if stopped is not None:
        record.status, record.message = "interrupted", f"Stopped by {stopped}."
        return stopped
    record.status, record.message = "failed", f"{type(err).__name__}: {err}"
    return err


def fit_run(cfg: DictConfig, folder: Path, ckpt_path: Path | None, overrides: list[str]) -> tuple[RunRecord, Any]:
    """Train one run (a teacher's) in `folder`, resuming from `ckpt_path`; returns (record, system).

    The record is written into `folder` however the run ends; an interrupted run leaves its checkpoint there.
    """
    started, objects = time.perf_counter(), {}
    record = new_record(cfg, folder, (overrides, [], []))
    interrupts = InterruptHandler(folder / "checkpoints")
    try:
        with interrupts:
            with stage(record, "data"):
                datamodule, identity = prepare_data(cfg, record)
            fit_and_test(cfg, folder, ckpt_path, record, objects, interrupts, datamodule, identity, {}, net="teacher")
        record.status = "smoke" if record.smoke else "ok"
    except BaseException as err:
        if (stop := outcome(record, err, interrupts)) is err:
            raise
        raise stop from None
    finally:
        conclude(record, objects, time.perf_counter() - started)
        if (session := objects.get("session")) is not None:
            session.end(success=record.finished)
        trainer = objects.get("trainer")
        if trainer is None or trainer.is_global_zero:
            save_outputs(cfg, record, objects, folder)
        if (mirror := objects.get("mirror")) is not None:
            mirror.end(record)
    return record, objects.get("module")
