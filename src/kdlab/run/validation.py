"""Refuse a bad run in seconds, before a teacher or a student trains for minutes.

Everything that can be checked without data or a teacher is checked here: values the constructors
validate (data, trainer, nets, loss terms), the names feature terms tap, the numbers each term can
compute with (kdlab.losses.base.check_numerics), `runtime.*`, the launcher/strategy pair, the packages
of the selected trackers. Messages name the full key and the fix.
"""

from __future__ import annotations

import logging
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from kdlab.config import CONFIG_DIR, ConfigError, check_name, is_distillation, is_ensemble, plain
from kdlab.losses import build_terms
from kdlab.losses.base import check_term_members
from kdlab.losses.numerics import check_numerics
from kdlab.models import build_net
from kdlab.modules.ensemble import check_combination
from kdlab.modules.taps import FeatureTap
from kdlab.run.threads import check_threads
from kdlab.run.trackers import check_tracker_packages, check_tracking_servers
from kdlab.sweeps import check_launcher_strategy
from kdlab.teachers.cache import MODES, check_mode

log = logging.getLogger(__name__)


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
    """Raise ConfigError for anything that would fail later (a missing file: FileNotFoundError).

    The constructors' own checks (a datamodule's, a net's, a loss term's) raise ValueError, which Hydra
    wraps on the way: every such refusal comes out as one ConfigError with the constructor's message.
    """
    try:
        _validate(cfg)
    except (ValueError, TypeError, InstantiationException) as err:
        if isinstance(err, ConfigError):
            raise
        inner = err.__cause__ if isinstance(err, InstantiationException) and err.__cause__ is not None else err
        raise ConfigError(" ".join(str(inner).split())) from err


def _validate(cfg: DictConfig) -> None:
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
    _check_runtime(cfg)
    check_tracker_packages(cfg)  # logger=[...,mlflow] without mlflow installed
    check_tracking_servers(cfg)  # an MLflow server that does not answer, before minutes of work
    datamodule = instantiate(cfg.data, _convert_="all")  # the DataModule checks its own values; no data is read
    shape, classes = datamodule.input_shape, datamodule.num_classes
    _check_trainer(cfg)
    check_launcher_strategy(cfg)  # script-relaunching DDP cannot run inside a sweep's job
    student = _net(cfg.model, shape, classes, "model")
    if not is_distillation(cfg):
        return
    if cfg.get("teacher") is None or cfg.get("distill") is None:
        raise ConfigError(
            "module=distill needs a teacher and loss terms: add e.g. teacher=mlp_512_256 distill=kd, "
            "or start from experiment=distill_mlp."
        )
    check_mode(OmegaConf.select(cfg, "runtime.teacher_cache", default="auto"), datamodule)  # on + augment_affine
    terms = build_terms(cfg.distill.losses)
    members = _check_members(cfg, shape, classes) if is_ensemble(cfg) else None
    teacher = _net(cfg.teacher.model, shape, classes, "teacher.model") if members is None else None
    active = {name: term for name, term in terms.items() if term.weight}
    check_term_members(active, None if members is None else len(members))
    for name, term in active.items():
        check_numerics(name, term, classes, None if members is None else len(members))
        _check_layers(student, set(term.student_layers), "student", f"distill.losses.{name}")
        if term.teacher_layers:
            if term.member is None:
                _check_layers(teacher, set(term.teacher_layers), "teacher", f"distill.losses.{name}")
            else:
                role = f"teacher member {term.member}"
                _check_layers(members[term.member], set(term.teacher_layers), role, f"distill.losses.{name}")
    _check_builds(active, student, teacher if members is None else None, members, shape)


def _check_builds(terms: dict, student: Any, teacher: Any, members: list[Any] | None, shape) -> None:
    """Each term that reads layers builds on their real outputs (a 2-sample dry pass of the untrained nets, as
    the distillation module does), so a term that cannot read them (attention transfer on an MLP's flat
    features) is refused before any teacher trains, not when the module is built after it."""
    readers = {name: term for name, term in terms.items() if term.student_layers or term.teacher_layers}
    if not readers:
        return
    sources = [teacher] if members is None else members  # a single teacher's terms read it; others their member
    student_tap = FeatureTap(student, {n for t in readers.values() for n in t.student_layers}, "student")
    taps = [
        FeatureTap(net, {n for t in readers.values() if (t.member or 0) == i for n in t.teacher_layers}, "teacher")
        for i, net in enumerate(sources)
    ]
    example = torch.zeros(2, *shape)
    with torch.no_grad():
        for net in (student, *sources):
            net.eval()(example)
    student_features, teacher_features = student_tap.pop(), [tap.pop() for tap in taps]
    for name, term in readers.items():
        try:
            term.build(student_features, teacher_features[term.member or 0])
        except ValueError as err:
            raise ConfigError(f"distill.losses.{name}: {err}") from err


MEMBER_KEYS = {"model", "recipe", "seed", "overrides", "ckpt_path"}  # one teacher's keys (conf/teacher/*.yaml)
ENSEMBLE_KEYS = {"members", "combine", "nets", "feature_layer"}  # nets: architectures the members refer to


def _net(config: DictConfig, shape, classes: int, key: str):
    try:
        return build_net(plain(config), shape, classes)
    except ConfigError:
        raise
    except Exception as err:  # the net's own ValueError, wrapped by hydra
        raise ConfigError(
            f"{key} cannot be built for this data ({list(shape)} images, {classes} classes): {err}"
        ) from err


def _check_runtime(cfg: DictConfig) -> None:
    """`runtime.*` says how fast a run goes: checked here, before any teacher trains for minutes."""
    runtime = cfg.get("runtime") or {}
    if unknown := sorted(set(runtime) - {"threads", "teacher_cache"}):
        raise ConfigError(f"runtime has unknown key(s) {unknown}: it takes threads and teacher_cache.")
    try:
        check_threads(runtime.get("threads", "auto"))
    except ValueError as err:
        raise ConfigError(str(err)) from err
    if (mode := runtime.get("teacher_cache", "auto")) not in MODES:
        raise ConfigError(
            f"runtime.teacher_cache={mode!r} is not one of {', '.join(MODES)}: 'auto' reads the teacher's logits "
            "from a cache when that is exact and builds one when that costs no more than this run's live teacher, "
            "'on' always builds it, 'off' always runs the teacher."
        )


def _check_members(cfg: DictConfig, shape, classes: int) -> list[Any]:
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
        nets.append(_net(member.model, shape, classes, f"{key}.model"))
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
