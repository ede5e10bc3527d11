"""Loss terms for distillation; the distillation module sums weight * term(inputs) over them."""

from kdlab.losses.base import LossInputs, LossTerm, TrainingProgress, build_terms
from kdlab.losses.features import Hint
from kdlab.losses.logit_variants import DIST, NKD, LogitStandardKD
from kdlab.losses.logits import CE, DKD, KD, LogitMSE
from kdlab.losses.relations import PKT, RKDAngle, RKDDistance, SimilarityPreserving

__all__ = [
    "CE",
    "DIST",
    "DKD",
    "KD",
    "NKD",
    "PKT",
    "Hint",
    "LogitMSE",
    "LogitStandardKD",
    "LossInputs",
    "LossTerm",
    "RKDAngle",
    "RKDDistance",
    "SimilarityPreserving",
    "TrainingProgress",
    "build_terms",
]
