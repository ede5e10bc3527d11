"""The entry point: `train(cfg) -> (metrics, objects)` and the `@hydra.main` wrapper around it."""

import logging
import time
from pathlib import Path
from typing import Any

import hydra
import lightning as L
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig, OmegaConf

from kdlab.config import CONFIG_DIR
from kdlab.recipes import digest, recipe_of
from kdlab.summary import flat_hparams, print_summary, scratch_baseline, write_metrics
from kdlab.sweeps import sweep_job, sweep_job_ddp
from kdlab.teachers import provision_teacher

log = logging.getLogger(__name__)

STUDENT_FILE = "student.pt"


def is_distillation(cfg: DictConfig) -> bool:
    return cfg.module._target_.endswith("DistillationModule")


def check_config(cfg: DictConfig) -> None:
    """Fail on bad values in seconds, before a teacher or student trains for minutes."""
    if cfg.seed is not None and not isinstance(cfg.seed, int):
        raise ValueError(f"seed must be an integer or null, got {cfg.seed!r} (e.g. seed=0 or seed=0,1,2 with -m).")
    if not cfg.train and not cfg.ckpt_path:
        raise ValueError("train=false tests a checkpoint: give it with ckpt_path=<path to a .ckpt of this experiment>.")
    if cfg.ckpt_path and not Path(cfg.ckpt_path).is_file():
        raise FileNotFoundError(
            f"ckpt_path={cfg.ckpt_path!r} does not exist: give a checkpoint of this run to resume "
            "(e.g. outputs/<name>/runs/<time>/checkpoints/last.ckpt), or drop ckpt_path."
        )
    if is_distillation(cfg):
        if cfg.get("teacher") is None or cfg.get("distill") is None:
            raise ValueError(
                "module=distill needs a teacher and loss terms: add e.g. teacher=mlp_512_256 distill=kd, "
                "or start from experiment=distill_mlp."
            )
        for term in cfg.distill.losses.values():
            if term is not None:
                instantiate(term)  # constructors validate weights, temperatures, reductions
    instantiate(cfg.model)


def build_callbacks(cfg: DictConfig) -> list[L.Callback]:
    callbacks = []
    for name, conf in (cfg.get("callbacks") or {}).items():
        if conf is None or (name == "progress_bar" and not cfg.trainer.enable_progress_bar):
            continue
        callbacks.append(instantiate(conf))
    return callbacks


def count_params(net: torch.nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())


def train(cfg: DictConfig) -> tuple[dict[str, Any], dict[str, Any]]:
    """Fit, test the best checkpoint (selected on validation), write the run's outputs."""
    torch.set_flush_denormal(True)  # Adam's state decays into denormals on CPU: +50-70% steps/s
    check_config(cfg)
    if is_distillation(cfg):
        cfg.teacher.ckpt_path = str(provision_teacher(cfg, train))
    if cfg.seed is not None:  # after provisioning: a cached teacher and a fresh one give the same student
        L.seed_everything(cfg.seed, workers=True)

    datamodule: L.LightningDataModule = instantiate(cfg.data, _convert_="all")  # plain lists in ckpts
    module: L.LightningModule = instantiate(cfg.module)
    loggers = [instantiate(conf) for conf in (cfg.get("logger") or {}).values() if conf is not None]
    trainer: L.Trainer = instantiate(cfg.trainer, callbacks=build_callbacks(cfg), logger=loggers or False)

    started = time.perf_counter()
    best = None
    with sweep_job_ddp(trainer):
        if cfg.train:
            trainer.fit(module, datamodule=datamodule, ckpt_path=cfg.ckpt_path)
            best = (trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else "") or None
        metrics: dict[str, Any] = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/")}
        if cfg.test:
            tested = (best and "best") if cfg.train else cfg.ckpt_path  # None: the weights in memory
            trainer.test(module, datamodule=datamodule, ckpt_path=tested, verbose=False)
            metrics.update({k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("test/")})
        wall = time.perf_counter() - started

    output_dir = Path(cfg.paths.output_dir)
    metrics.update(
        {
            "name": cfg.name,
            "module": type(module).__name__,
            "seed": cfg.seed,
            "student_key": digest(recipe_of(cfg)),
            "params/student": count_params(module.net),
            "epochs": trainer.current_epoch,
            "wall_time_s": round(wall, 2),
            "output_dir": str(output_dir),
            "best_checkpoint": best,
            "overrides": list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else [],
        }
    )
    if is_distillation(cfg):
        metrics["params/teacher"] = count_params(module.teacher)
        metrics["compression"] = metrics["params/teacher"] / metrics["params/student"]
        metrics["teacher_checkpoint"] = cfg.teacher.ckpt_path
        metrics.update(scratch_baseline(cfg.paths.log_dir, metrics["student_key"]) or {})
    if trainer.is_global_zero:
        write_outputs(cfg, module, trainer, metrics, output_dir)
    return metrics, {"cfg": cfg, "datamodule": datamodule, "module": module, "trainer": trainer}


@rank_zero_only
def write_outputs(cfg: DictConfig, module, trainer: L.Trainer, metrics: dict, output_dir: Path) -> None:
    """metrics.json, the student's weights (best checkpoint, loaded by the test), hparams, summary."""
    write_metrics(output_dir, metrics)
    torch.save(module.net.state_dict(), output_dir / STUDENT_FILE)
    OmegaConf.save(cfg.model, output_dir / "student_model.yaml", resolve=True)
    shown = ("test/", "val/acc_best", "params/", "compression")  # the hparams tab's metric columns
    scalars = {f"hp/{k.replace('/', '_')}": v for k, v in metrics.items() if k.startswith(shown)}
    for logger in trainer.loggers:
        logger.log_hyperparams(flat_hparams(cfg), scalars)
    print_summary(metrics)


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="train")
@sweep_job  # in a multirun a failed job returns NaN and the sweep goes on (exiting 1 at its end)
def main(cfg: DictConfig) -> float | None:
    """Returns `optimized_metric` (a validation metric) for Hydra sweepers such as Optuna."""
    metrics, _ = train(cfg)
    value = metrics.get(cfg.optimized_metric)
    return None if value is None else float(value)
