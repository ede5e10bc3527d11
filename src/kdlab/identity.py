"""What makes two runs "the same": the keys behind the teacher cache, baselines and resume checks.

One rule for all of them: the whole resolved config, minus an explicit list of keys that provably
cannot change what is learnt (where files live, how progress is shown), plus the content checksums
of the data actually read and the versions of the code. A wrong cache hit corrupts results
silently; a spurious miss costs minutes. So anything not on the ignore-list counts, including keys
added later: a new key changes every key until it is judged harmless and listed here.
"""

from __future__ import annotations

import copy
import hashlib
import json
from collections.abc import Iterable, Mapping
from typing import Any

from omegaconf import DictConfig, OmegaConf, open_dict

# Bump when what a recipe produces changes in a way the config cannot show (a fixed bug, new
# defaults in code): every cached teacher and baseline of older code then misses, as it must.
IDENTITY_VERSION = 3

# Keys that say where files live or how progress is shown, never what is learnt.
IGNORED_KEYS = (
    "name",  # names the run folder
    "paths",  # every location
    "hydra",  # the launcher's own settings (present in composed test configs)
    "logger",  # which trackers (TensorBoard, CSV, MLflow, W&B): logging does not change training
    "ckpt_path",  # which checkpoint a run resumes from (the resume check compares the checkpoint itself)
    "train",  # train=false runs are evaluations; their records say so and never count as baselines
    "test",
    "optimized_metric",  # what a sweeper reads
    "runtime",  # threads and the teacher-output cache: how fast, not what (the record keeps the thread count)
    "data.data_dir",  # location; the content checksums stand in for it
    "data.mirrors",
    "data.pypi_package",
    "data.files",  # which files hold the data: their content checksums are hashed regardless
    "data.md5",  # the published checksums files were verified against, ditto
    "data.verify",
    "teacher.ckpt_path",  # location; the teacher's weight checksum stands in for it
    "teacher.members.*.ckpt_path",  # the same for each member of an ensemble (`*`: every list item)
    "module.teacher_ckpt",
    "trainer.default_root_dir",
    "trainer.enable_progress_bar",
    "trainer.enable_model_summary",
    "trainer.log_every_n_steps",
    "callbacks.progress_bar",
    "callbacks.model_summary",
    "callbacks.lr_monitor",
    "callbacks.epoch_lines",
    "callbacks.model_checkpoint.dirpath",
    "callbacks.model_checkpoint.filename",
    "callbacks.model_checkpoint.auto_insert_metric_name",
    "callbacks.model_checkpoint.verbose",
    "callbacks.model_checkpoint.save_top_k",  # how many are kept, not which is best
    "callbacks.model_checkpoint.save_last",
    "callbacks.last_checkpoint",  # last.ckpt for resuming: which epoch is *selected* is model_checkpoint's
)

# Keys added after results were cached, whose null (off) is exactly what the code did before they existed: left out
# while null, so every key of an older run (a cached teacher, a baseline) still matches; any other value counts.
ABSENT_WHEN_NULL = ("data.augment_affine",)

# Keys that distinguish a distillation run from the same student trained from scratch.
DISTILLATION_KEYS = ("module", "teacher", "distill")


def code_versions() -> dict[str, str | int]:
    import lightning
    import torch

    import kdlab

    return {
        "identity": IDENTITY_VERSION,
        "kdlab": kdlab.__version__,
        "torch": str(torch.__version__),  # TorchVersion would not load with weights_only
        "lightning": str(lightning.__version__),
    }


def config_identity(cfg: DictConfig, drop: Iterable[str] = ()) -> dict[str, Any]:
    """The resolved config as plain data, minus IGNORED_KEYS and `drop` (dotted keys).

    Keys are dropped before resolving, so a location that cannot be resolved outside a Hydra job
    (`${hydra:runtime.output_dir}`) never matters; a kept key that interpolates a dropped one fails
    loudly, which is what a location leaking into a recipe deserves.
    """
    cfg = copy.deepcopy(cfg)
    off = [key for key in ABSENT_WHEN_NULL if _is_null(cfg, key)]
    with open_dict(cfg):
        for dotted in [key for pattern in (*IGNORED_KEYS, *drop, *off) for key in _expand(cfg, pattern)]:
            parent_key, _, leaf = dotted.rpartition(".")
            parent = OmegaConf.select(cfg, parent_key) if parent_key else cfg
            if isinstance(parent, DictConfig) and leaf in parent:
                del parent[leaf]
    return OmegaConf.to_container(cfg, resolve=True)


def _is_null(cfg: DictConfig, dotted: str) -> bool:
    parent_key, _, leaf = dotted.rpartition(".")
    parent = OmegaConf.select(cfg, parent_key) if parent_key else cfg
    return isinstance(parent, DictConfig) and leaf in parent and parent[leaf] is None


def _expand(cfg: DictConfig, dotted: str) -> list[str]:
    """`a.*.b` as `a.0.b`, `a.1.b`, ... for each item of the list (or mapping) at `a`; else `dotted` itself."""
    head, star, tail = dotted.partition(".*")
    if not star:
        return [dotted]
    node = OmegaConf.select(cfg, head, default=None)
    items = range(len(node)) if OmegaConf.is_list(node) else (node.keys() if OmegaConf.is_dict(node) else ())
    return [key for item in items for key in _expand(cfg, f"{head}.{item}{tail}")]


def digest(obj: Any, length: int = 16) -> str:
    """A short, stable content hash of plain data."""
    blob = json.dumps(obj, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:length]


def run_key(cfg: DictConfig, data: Mapping[str, str], teacher_sha256: str | None = None) -> str:
    """Everything that makes this run's result: the teacher cache key, and what resume must match."""
    return digest(
        {
            "config": config_identity(cfg),
            "data": dict(data),
            "teacher": teacher_sha256,
            "code": code_versions(),
        }
    )


def student_recipe(cfg: DictConfig) -> dict[str, Any]:
    """The student's side of a run: what a from-scratch baseline must share with a distillation run.

    The seed is left out (a baseline averages over seeds) and so is everything about the teacher and
    the loss terms. A from-scratch run with label smoothing is not a plain baseline: it keeps that.
    """
    recipe = config_identity(cfg, drop=(*DISTILLATION_KEYS, "seed"))
    smoothing = OmegaConf.select(cfg, "module.label_smoothing", default=0.0)
    if smoothing:
        recipe["label_smoothing"] = smoothing
    return recipe


def student_key(cfg: DictConfig, data: Mapping[str, str]) -> str:
    return digest({"recipe": student_recipe(cfg), "data": dict(data), "code": code_versions()})


def differences(expected: Mapping[str, Any], actual: Mapping[str, Any], prefix: str = "") -> list[str]:
    """Dotted keys whose values differ, as `key: expected -> actual`, for refusal messages."""
    found = []
    for key in sorted(set(expected) | set(actual), key=str):
        dotted = f"{prefix}{key}"
        a, b = expected.get(key, "<absent>"), actual.get(key, "<absent>")
        if isinstance(a, Mapping) and isinstance(b, Mapping):
            found += differences(a, b, prefix=f"{dotted}.")
        elif a != b:
            found.append(f"{dotted}: {a!r} -> {b!r}")
    return found
