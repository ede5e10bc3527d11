"""The option list test_config_groups iterates is complete, and every loss term composes into a run."""

import pytest

from kdlab.config import CONFIG_DIR, compose_config
from kdlab.losses import LossTerm, build_terms

pytestmark = pytest.mark.unit

# Groups chosen with `group=option` on the command line, as in test_config_groups.
GROUPS = ("data", "model", "module", "teacher", "distill", "optimizer", "scheduler", "trainer", "logger")
GROUPS += ("callbacks", "paths", "experiment", "hparams_search", "debug")
OPTIONS = [(g, p.stem) for g in GROUPS for p in sorted((CONFIG_DIR / g).glob("*.yaml"))]
LOSSES = sorted(p.stem for p in (CONFIG_DIR / "loss").glob("*.yaml"))


def test_the_option_list_is_complete():
    assert {g for g, _ in OPTIONS} == set(GROUPS)
    assert {"fsdp", "ddp_spawn", "ddp_multinode", "gpu"} <= {o for g, o in OPTIONS if g == "trainer"}
    assert {"dkd", "fitnets", "dist", "logit_standard_kd", "nkd", "at", "crd"} <= {
        o for g, o in OPTIONS if g == "distill"
    }
    assert {"mnist", "fashion_mnist", "kmnist", "idx", "digits", "cifar10", "cifar100"} <= {
        o for g, o in OPTIONS if g == "data"
    }
    assert set(LOSSES) == {
        "at", "ce", "crd", "dist", "dkd", "hint", "kd", "logit_mse", "logit_standard_kd", "nkd", "pkt", "rkd_angle",
        "rkd_distance", "sp",
    }  # fmt: skip


@pytest.mark.heavy
@pytest.mark.parametrize("loss", LOSSES)
def test_every_loss_term_can_be_added_to_a_run(loss, tmp_path):
    cfg = compose_config(["experiment=distill_mlp", f"+loss@distill.losses.extra={loss}", f"paths.root_dir={tmp_path}"])
    terms = build_terms(cfg.distill.losses)
    assert isinstance(terms["extra"], LossTerm)
    assert sorted(terms) == ["ce", "extra", "kd"]
