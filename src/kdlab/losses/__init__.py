"""Loss terms for distillation; the distillation module sums weight * term(inputs) over them."""

from kdlab.losses.attention import AttentionTransfer
from kdlab.losses.base import LossInputs, LossTerm, TrainingProgress, build_terms
from kdlab.losses.contrastive import CRD
from kdlab.losses.features import Hint
from kdlab.losses.logit_variants import DIST, NKD, LogitStandardKD
from kdlab.losses.logits import CE, DKD, KD, LogitMSE
from kdlab.losses.relations import PKT, RKDAngle, RKDDistance, SimilarityPreserving

__all__ = [
    "CE",
    "CRD",
    "DIST",
    "DKD",
    "KD",
    "NKD",
    "PKT",
    "AttentionTransfer",
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
