"""Loss terms for distillation; the distillation module sums weight * term(inputs) over them."""

from kdlab.losses.base import LossInputs, LossTerm, build_terms
from kdlab.losses.features import Hint
from kdlab.losses.logits import CE, DKD, KD, LogitMSE
from kdlab.losses.relations import PKT, RKDAngle, RKDDistance, SimilarityPreserving

__all__ = [
    "CE",
    "DKD",
    "KD",
    "PKT",
    "Hint",
    "LogitMSE",
    "LossInputs",
    "LossTerm",
    "RKDAngle",
    "RKDDistance",
    "SimilarityPreserving",
    "build_terms",
]
