"""The feature presets tap the teacher preset's own penultimate layer: `neck` of a CNN, `features.1` of an MLP.

Before, every preset named `features.1`, a CNN teacher's second conv block: relation terms between an MLP
student's hidden layer and a 4-D feature map, and the zoo could not run one preset list on both pairs.
"""

import pytest

from kdlab.config import compose_config
from kdlab.run.validation import validate_config

pytestmark = pytest.mark.unit
PRESETS = {"fitnets": ["hint"], "rkd": ["rkd_distance", "rkd_angle"], "sp": ["sp"], "pkt": ["pkt"], "crd": ["crd"]}


@pytest.mark.parametrize("preset", sorted(PRESETS))
@pytest.mark.parametrize(("experiment", "layer"), [("distill_mlp", "features.1"), ("distill_cnn_mlp", "neck"),
                                                   ("distill_ensemble_mlp", "neck")])  # fmt: skip
@pytest.mark.heavy
def test_each_feature_preset_taps_the_teachers_own_feature_layer(preset, experiment, layer):
    cfg = compose_config([f"experiment={experiment}", f"distill={preset}", "paths.root_dir=/r"])
    for term in PRESETS[preset]:
        assert cfg.distill.losses[term].teacher_layer == layer
        assert cfg.distill.losses[term].student_layer == "features.1"


@pytest.mark.heavy
def test_a_teacher_layer_given_on_the_command_line_wins():
    cfg = compose_config(["experiment=distill_cnn_mlp", "distill=sp", "distill.losses.sp.teacher_layer=features.0",
                          "paths.root_dir=/r"])  # fmt: skip
    assert cfg.distill.losses.sp.teacher_layer == "features.0"


@pytest.mark.heavy
def test_both_method_tables_sweep_the_same_presets_and_each_builds_on_its_pair(make_cfg):
    """zoo_mlp and zoo_cnn_mlp rank the same methods (else their tables cannot be read side by side), and every
    preset passes the start-of-run checks on both pairs, where a layer-reading term is dry-built on the nets."""
    swept = {}
    for name in ("zoo_mlp", "zoo_cnn_mlp"):
        swept[name] = compose_config([f"experiment={name}", "paths.root_dir=/r"], return_hydra_config=True).hydra
    swept = {name: hydra.sweeper.params for name, hydra in swept.items()}
    assert swept["zoo_mlp"] == swept["zoo_cnn_mlp"]
    presets = swept["zoo_mlp"]["distill"].split(",")
    assert {*PRESETS, "kd", "dkd"} <= set(presets)
    for experiment in swept:
        for preset in presets:
            validate_config(make_cfg(f"experiment={experiment}", f"distill={preset}"))
