"""Refuse a bad run in seconds, before a teacher or a student trains for minutes.

Everything that can be checked without data or a teacher is checked here: values the constructors
validate (data, trainer, nets, loss terms), the names feature terms tap, the launcher/strategy pair,
and, for a resume, whether the checkpoint belongs to this very run. Messages name the full key.
"""

from __future__ import annotations

import logging
import re
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from kdlab.checkpoints import CheckpointError, load_checkpoint
from kdlab.config import CONFIG_DIR, plain
from kdlab.identity import differences
from kdlab.losses import build_terms
from kdlab.losses.base import check_term_members
from kdlab.modules.ensemble import check_combination
from kdlab.sweeps import check_launcher_strategy

log = logging.getLogger(__name__)
SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.=,+-]*$")


class ConfigError(ValueError):
    """A config value that cannot work, found before any training."""


def check_name(name: object) -> str:
    """`name` names a folder under outputs/: one plain path component, never `..` or a path."""
    if not isinstance(name, str) or not SAFE_NAME.match(name) or ".." in name:
        raise ConfigError(
            f"name={name!r} cannot name a run folder: it must be one plain folder name (letters, digits and "
            "_ . = , + -; no '/', no '..', not starting with '.'), because run folders live under "
            "outputs/<name>/. Use e.g. name=my_experiment."
        )
    return name


def is_distillation(cfg: DictConfig) -> bool:
    return str(OmegaConf.select(cfg, "module._target_", default="")).endswith("DistillationModule")


def is_ensemble(cfg: DictConfig) -> bool:
    """A distillation run whose teacher is a list of members (teacher=ensemble)."""
    return is_distillation(cfg) and OmegaConf.select(cfg, "teacher.members", default=None) is not None


@contextmanager
def _quiet_lightning():
    """Building a Trainer to validate its arguments prints 'GPU available...' lines; not here."""
    logger = logging.getLogger("lightning.pytorch")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def _check_trainer(cfg: DictConfig) -> None:
    t = cfg.trainer
    if cfg.train and t.max_epochs == 0 and OmegaConf.select(cfg, "trainer.max_steps", default=-1) in (-1, None):
        raise ConfigError("trainer.max_epochs=0 trains nothing: give a positive number of epochs, or train=false.")
    if t.max_epochs in (-1, None) and OmegaConf.select(cfg, "trainer.max_steps", default=-1) in (-1, None):
        raise ConfigError(
            "trainer.max_epochs=-1 without trainer.max_steps trains forever and leaves the LR schedule no length: "
            "give trainer.max_epochs=<n> (or +trainer.max_steps=<n>)."
        )
    for key, low in (("accumulate_grad_batches", 1), ("check_val_every_n_epoch", 1)):
        value = t.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < low):
            raise ConfigError(f"trainer.{key} must be an integer >= {low}, got {value!r}.")
    clip = t.get("gradient_clip_val")
    if clip is not None and not clip >= 0:
        raise ConfigError(f"trainer.gradient_clip_val must be >= 0 or null, got {clip!r}.")
    try:
        with _quiet_lightning():
            instantiate(t, logger=False, enable_checkpointing=False, callbacks=[], enable_progress_bar=False)
    except Exception as err:
        raise ConfigError(
            f"The trainer config is not valid: {err} (keys under trainer.*, e.g. trainer.devices)."
        ) from err


def _check_layers(net: Any, names: set[str], role: str, key: str) -> None:
    available = {name for name, _ in net.named_modules() if name}
    if missing := sorted(names - available):
        raise ConfigError(
            f"{key} asks for {role} layer(s) {missing}, which {type(net).__name__} does not have. "
            f"Available layers: {sorted(available)}."
        )


def validate_config(cfg: DictConfig) -> None:
    """Raise ConfigError (or the constructor's own ValueError) for anything that would fail later."""
    check_name(cfg.name)
    if cfg.seed is not None and (isinstance(cfg.seed, bool) or not isinstance(cfg.seed, int)):
        raise ConfigError(f"seed must be an integer or null, got {cfg.seed!r} (e.g. seed=0, or seed=0,1,2 with -m).")
    if not cfg.train and not cfg.ckpt_path:
        raise ConfigError(
            "train=false tests a checkpoint: give it with ckpt_path=<path to a .ckpt of this experiment>."
        )
    if cfg.ckpt_path and not Path(cfg.ckpt_path).is_file():
        raise FileNotFoundError(
            f"ckpt_path={cfg.ckpt_path!r} does not exist: give a checkpoint of this run to resume "
            "(e.g. outputs/<name>/runs/<time>/checkpoints/last.ckpt), or drop ckpt_path."
        )
    instantiate(cfg.data, _convert_="all")  # the DataModule checks its own values; no data is read
    _check_trainer(cfg)
    check_launcher_strategy(cfg)  # script-relaunching DDP cannot run inside a submitit local job
    student = instantiate(cfg.model)
    if not is_distillation(cfg):
        return
    if cfg.get("teacher") is None or cfg.get("distill") is None:
        raise ConfigError(
            "module=distill needs a teacher and loss terms: add e.g. teacher=mlp_512_256 distill=kd, "
            "or start from experiment=distill_mlp."
        )
    terms = build_terms(cfg.distill.losses)
    members = _check_members(cfg) if is_ensemble(cfg) else None
    teacher = instantiate(cfg.teacher.model) if members is None else None
    active = {name: term for name, term in terms.items() if term.weight}
    check_term_members(active, None if members is None else len(members))
    for name, term in active.items():
        _check_layers(student, set(term.student_layers), "student", f"distill.losses.{name}")
        if term.teacher_layers:
            if term.member is None:
                _check_layers(teacher, set(term.teacher_layers), "teacher", f"distill.losses.{name}")
            else:
                role = f"teacher member {term.member}"
                _check_layers(members[term.member], set(term.teacher_layers), role, f"distill.losses.{name}")


MEMBER_KEYS = {"model", "recipe", "seed", "overrides", "ckpt_path"}  # one teacher's keys (conf/teacher/*.yaml)
ENSEMBLE_KEYS = {"members", "combine", "nets"}  # nets: architectures the members refer to


def _check_members(cfg: DictConfig) -> list[Any]:
    """Every member of teacher=ensemble is a whole teacher config that can work; returns their nets.

    All are checked before the first member is provisioned, so a typo in the third member never
    costs the training of the first two.
    """
    spec = cfg.teacher
    if unknown := sorted(set(spec) - ENSEMBLE_KEYS):
        raise ConfigError(
            f"teacher has key(s) {unknown} next to teacher.members: an ensemble's teachers are its members, each "
            f"with its own {', '.join(sorted(MEMBER_KEYS))}; set those under teacher.members.<i>. "
            f"The ensemble itself takes only {', '.join(sorted(ENSEMBLE_KEYS))}."
        )
    members = spec.members
    if not OmegaConf.is_list(members) or len(members) == 0:
        raise ConfigError(
            f"teacher.members must be a non-empty list of teachers, got {plain(members)!r}; "
            "see conf/teacher/ensemble.yaml."
        )
    nets, seen = [], {}
    for i, member in enumerate(members):
        key = f"teacher.members.{i}"
        if not OmegaConf.is_dict(member):
            raise ConfigError(f"{key} must be a teacher config ({', '.join(sorted(MEMBER_KEYS))}), got {member!r}.")
        if unknown := sorted(set(member) - MEMBER_KEYS):
            raise ConfigError(f"{key} has unknown key(s) {unknown}; a member takes {', '.join(sorted(MEMBER_KEYS))}.")
        if missing := sorted({"model", "recipe", "seed"} - set(member)):
            raise ConfigError(
                f"{key} lacks {missing}: a member needs its model, the recipe that trains it (an experiment name, "
                f"e.g. train_teacher_cnn) and its own seed, like conf/teacher/cnn_small.yaml."
            )
        try:
            nets.append(instantiate(member.model))
        except Exception as err:
            raise ConfigError(f"{key}.model cannot be built: {err}") from err
        seed, overrides, ckpt = member.seed, member.get("overrides", []), member.get("ckpt_path")
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
            raise ConfigError(f"{key}.seed must be an integer or null, got {seed!r}.")
        if not OmegaConf.is_list(overrides) or not all(isinstance(o, str) for o in overrides):
            raise ConfigError(
                f"{key}.overrides must be a list of overrides for its training run, e.g. "
                f'{key}.overrides=["trainer.max_epochs=5"], got {plain(overrides)!r}.'
            )
        if ckpt and not Path(ckpt).expanduser().is_file():
            raise FileNotFoundError(
                f"{key}.ckpt_path={ckpt!r} does not exist. Give the path of a TeacherModule checkpoint, a state_dict "
                f".pt or a .safetensors file, or set {key}.ckpt_path=null to use (or train) the cached teacher of "
                f"{key}.recipe."
            )
        if not ckpt and not (CONFIG_DIR / "experiment" / f"{member.recipe}.yaml").is_file():
            known = sorted(p.stem for p in (CONFIG_DIR / "experiment").glob("train_*.yaml"))
            raise ConfigError(
                f"{key}.recipe={member.recipe!r} is not an experiment in conf/experiment/: the recipe trains this "
                f"member when it has no ckpt_path. Use one of {', '.join(known)} (or give {key}.ckpt_path)."
            )
        same = repr(plain(member))
        if same in seen:
            log.warning(
                "teacher.members.%d and teacher.members.%d are the same teacher (same recipe, net, seed, overrides): "
                "the ensemble counts it twice. Give each member its own seed if that was not meant.",
                seen[same],
                i,
            )
        seen.setdefault(same, i)
    try:
        check_combination(spec.get("combine") or {}, len(nets))
    except ValueError as err:
        raise ConfigError(str(err)) from err
    return nets


# What an evaluation (train=false) may change: how training went is the checkpoint's business; the
# nets, the data, the teacher (by checksum) and the code must still be the checkpoint's own.
EVALUATION_FREE_KEYS = ("trainer", "optimizer", "scheduler", "seed", "callbacks", "distill")


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
    saved = checkpoint.get("kdlab", {}).get("identity")
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
