"""Every option of every config group composes, and builds where this hardware allows (validation builds a Trainer).

Before, only experiment/* was iterated: trainer=fsdp|ddp_spawn|ddp_multinode|gpu, distill=dkd|fitnets,
optimizer=sgd, logger=none and debug=fast were never composed by any test.
"""

import importlib.util
from pathlib import Path

import lightning as L
import pytest
import torch
from hydra.utils import instantiate

from kdlab.config import CONFIG_DIR, ConfigError
from kdlab.losses import LossTerm, build_terms
from kdlab.models import build_net
from kdlab.run.trackers import EXTRAS
from kdlab.run.validation import validate_config

# Groups chosen with `group=option` on the command line; `loss` is added as `+loss@distill.losses.x=...`.
GROUPS = ("data", "model", "module", "teacher", "distill", "optimizer", "scheduler", "trainer", "logger")
GROUPS += ("callbacks", "paths", "experiment", "hparams_search", "debug")
OPTIONS = [(g, p.stem) for g in GROUPS for p in sorted((CONFIG_DIR / g).glob("*.yaml"))]
NEEDS_GPU = {"gpu", "fsdp", "ddp_multinode"}


@pytest.mark.parametrize(("group", "option"), OPTIONS, ids=[f"{g}={o}" for g, o in OPTIONS])
def test_every_option_composes_and_builds(group, option, tmp_path, make_cfg, mnist_dir):
    base = "experiment=distill_mlp" if group in ("module", "teacher", "distill", "hparams_search") else None
    base = base or ("experiment=student_scratch_mlp" if group != "experiment" else None)
    if (group, option) == ("distill", "at"):
        base = "experiment=distill_cifar10"  # attention maps need a CNN student and teacher (refused on an MLP)
    overrides = [o for o in (base, f"{group}={option}") if o]
    if (group, option) == ("data", "idx"):  # one's own files: the values conf/data/idx.yaml requires
        overrides += [
            f"data.data_dir={mnist_dir}",
            "data.mean=[0.5]",
            "data.std=[0.25]",
            f"data.classes={list('abcdefghij')}",
        ]
    if group == "module" and option == "distill":
        overrides.append("teacher=mlp_512_256")  # module=distill alone needs a teacher and terms
        overrides.append("distill=kd")
    cfg = make_cfg(*overrides)  # on the generated files of the option's dataset, outputs under tmp_path
    assert cfg.get(group) is not None or group in ("experiment", "hparams_search", "debug")

    shape, classes = cfg.data.input_shape, len(cfg.data.classes)  # nets are sized by the data
    net = build_net(cfg.model, shape, classes)
    optimizer = instantiate(cfg.optimizer)(params=net.parameters())
    assert isinstance(optimizer, torch.optim.Optimizer)
    if cfg.scheduler:
        instantiate(cfg.scheduler)(optimizer, **({"total_steps": 100} if "OneCycle" in cfg.scheduler._target_ else {}))
    if cfg.get("distill"):
        assert all(isinstance(t, LossTerm) for t in build_terms(cfg.distill.losses).values())
    for conf in (cfg.get("logger") or {}).values():
        if "save_dir" in conf:
            conf.save_dir = str(tmp_path)
        if (package := EXTRAS.get(conf._target_, (None,))[0]) and importlib.util.find_spec(package) is None:
            with pytest.raises(ConfigError, match=rf"pip install 'kdlab\[{package}\]'"):
                validate_config(cfg)  # a tracker whose extra is not installed: refused at the start
            return
        assert isinstance(instantiate(conf), L.pytorch.loggers.Logger)
    for name, conf in (cfg.get("callbacks") or {}).items():
        assert isinstance(instantiate(conf), L.Callback), name
    if cfg.trainer.accelerator in ("gpu", "cuda") and not torch.cuda.is_available():
        assert option in NEEDS_GPU or group != "trainer"
        return  # composes; a GPU machine runs it (scripts/gpu_smoke.sh)
    if cfg.trainer.accelerator == "auto":
        cfg.trainer.accelerator = "cpu"
    validate_config(cfg)  # every check that needs no data: datamodule, trainer, nets, terms, numerics


@pytest.mark.slow
def test_ddp_spawn_fast_dev_run_on_cpu(tmp_path, mnist_dir, tiny_cli, run_script):
    args = [*tiny_cli(tmp_path, mnist_dir), "experiment=student_scratch_mlp", "trainer=ddp_spawn"]
    run_script("train.py", *args, "trainer.accelerator=cpu", "trainer.fast_dev_run=true")
    (record,) = Path(tmp_path / "outputs" / "student_scratch_mlp" / "runs").glob("*/metrics.json")
    assert '"status": "smoke"' in record.read_text()


def test_attention_transfer_on_an_mlp_or_maps_of_two_sizes_is_refused_before_any_teacher_trains(make_cfg):
    # validate_config builds every layer-reading term on a dry pass of the untrained nets (run.validation)
    validate_config(make_cfg("experiment=distill_cifar10", "distill=at"))  # CNN student and teacher: accepted
    with pytest.raises(ConfigError, match=r"distill.losses.at: AttentionTransfer .* 4-D feature maps"):
        validate_config(make_cfg("experiment=distill_cnn_mlp", "+loss@distill.losses.at=at"))  # an MLP student
    with pytest.raises(ConfigError, match=r"'features.1' is 8x8 and the teacher's 'features.0' 16x16"):
        validate_config(
            make_cfg("experiment=distill_cifar10", "distill=at", "distill.losses.at1.teacher_layer=features.0")
        )
