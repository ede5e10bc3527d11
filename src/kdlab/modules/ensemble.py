"""Several frozen teachers as one: how their logits combine into the ensemble's, and the net that holds them.

Every combination is expressed as logits, so every term, metric and analysis that reads "the
teacher's logits" reads the ensemble's without knowing it is one:
- mean_probs (Hinton et al. 2015): the mean of the members' distributions at temperature T, as
  t = T * log(mean_i softmax(z_i / T)); then softmax(t / T) is exactly that mean distribution.
- weighted: the same with fixed weights, t = T * log(sum_i w_i softmax(z_i / T) / sum_i w_i).
- mean_logits: t = mean_i z_i (a geometric mean of the distributions, renormalised).
Members that agree exactly give their own distribution back at every T (t = z - T * logsumexp(z / T)).

The T of mean_probs and weighted (teacher.combine.temperature, distill.temperature by default) shapes the
targets the student learns from. The ensemble's own predictions, what its accuracy, the student's agreement
with it, KL(ensemble||student) and the test analysis score, combine the members at T=1 (`predictions`):
otherwise "the ensemble's accuracy" would move when distill.temperature is swept though no member changed
(the argmax of the mean of softmax(z_i / T) depends on T).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kdlab.losses.base import finite_number

COMBINE_MODES = ("mean_probs", "mean_logits", "weighted")
SCORED_AT = 1.0  # the T at which an ensemble's own predictions are combined (a record's combine.scored_at)


def check_combination(combine: Mapping, members: int, key: str = "teacher.combine") -> dict:
    """`combine` ({mode, temperature, weights}) as plain values, or a ValueError naming the full key."""
    if unknown := sorted(set(combine) - {"mode", "temperature", "weights"}):
        raise ValueError(
            f"{key} has unknown key(s) {unknown}: it takes mode ({' | '.join(COMBINE_MODES)}), temperature "
            "(for mean_probs and weighted) and weights (for weighted: one per member)."
        )
    get = combine.get
    mode, temperature, weights = get("mode", "mean_probs"), get("temperature", 1.0), get("weights")
    if mode not in COMBINE_MODES:
        raise ValueError(
            f"{key}.mode={mode!r} is not a way to combine teachers: use mean_probs (mean of the members' "
            "probabilities at temperature T, as Hinton et al.), mean_logits, or weighted (fixed per-member "
            f"weights on the probabilities at T, set {key}.weights)."
        )
    if not finite_number(temperature) or temperature <= 0:
        raise ValueError(
            f"{key}.temperature must be a finite number > 0, got {temperature!r}: the members' logits are divided "
            "by it before their probabilities are averaged (by default it is distill.temperature, the KD term's T)."
        )
    if mode != "weighted":
        if weights is not None:
            raise ValueError(
                f"{key}.weights={list(weights)!r} is only read by {key}.mode=weighted (mode is {mode!r}): set "
                f"{key}.mode=weighted to use them, or {key}.weights=null."
            )
        return {"mode": mode, "temperature": float(temperature), "weights": None}
    weights = list(weights) if isinstance(weights, Sequence) and not isinstance(weights, str) else weights
    if not isinstance(weights, list) or len(weights) != members:
        raise ValueError(
            f"{key}.weights must be a list of one weight per member ({members} members), got {weights!r}, "
            f"e.g. {key}.weights=[{', '.join(['1.0'] * members)}]."
        )
    for i, w in enumerate(weights):
        if not finite_number(w) or w < 0:
            raise ValueError(
                f"{key}.weights.{i} must be a finite number >= 0, got {w!r}: it is member {i}'s share of the "
                "ensemble's probabilities (the weights are divided by their sum)."
            )
    if sum(weights) <= 0:
        raise ValueError(f"{key}.weights are all 0 ({weights!r}): at least one member needs a weight above 0.")
    return {"mode": mode, "temperature": float(temperature), "weights": [float(w) for w in weights]}


def combine_logits(
    logits: Sequence[Tensor], mode: str = "mean_probs", temperature: float = 1.0, weights: Sequence[float] | None = None
) -> Tensor:
    """The ensemble's logits [B, C] from the members' (each [B, C]); see the module docstring."""
    stacked = torch.stack(list(logits))  # [M, B, C]
    if mode == "mean_logits":
        return stacked.mean(0)
    if mode == "mean_probs":
        weights = [1.0] * len(stacked)
    elif mode != "weighted":
        raise ValueError(f"unknown combine mode {mode!r}; expected one of {COMBINE_MODES}")
    w = torch.tensor(weights, dtype=stacked.dtype, device=stacked.device)
    log_w = (w / w.sum()).log()  # a weight of 0 is log 0 = -inf: that member adds exp(-inf) = 0
    # T * log(sum_i w_i softmax(z_i / T)), in log space: no log(0) for a confident member.
    log_mean = torch.logsumexp(log_w[:, None, None] + F.log_softmax(stacked / temperature, dim=2), dim=0)
    return temperature * log_mean


def ensemble_predictions(
    logits: Sequence[Tensor], mode: str = "mean_probs", temperature: float = 1.0, weights: Sequence[float] | None = None
) -> Tensor:
    """The ensemble's predictions [B, C] as logits: the members combined by `mode` at T=1, whatever
    `temperature` the distillation targets use (taken, and ignored, so a `combine` dict can be passed whole)."""
    return combine_logits(logits, mode, SCORED_AT, weights)


class TeacherEnsemble(nn.Module):
    """The frozen member nets and their combination: forward(x) gives the ensemble's logits.

    The distillation module holds it as its `teacher`, so freezing, eval mode and leaving it out of
    checkpoints work as for one teacher (its state lives under `teacher.members.<i>.`).
    """

    def __init__(
        self, members: Sequence[nn.Module], mode: str = "mean_probs", temperature: float = 1.0, weights=None
    ) -> None:
        super().__init__()
        self.members = nn.ModuleList(members)
        self.mode, self.temperature, self.weights = mode, float(temperature), weights

    def combine(self, logits: Sequence[Tensor]) -> Tensor:
        """The distillation targets' logits: the members combined at the combination's T."""
        return combine_logits(logits, self.mode, self.temperature, self.weights)

    def predictions(self, logits: Sequence[Tensor]) -> Tensor:
        """What the ensemble predicts (scored as its accuracy): the members combined at T=1."""
        return ensemble_predictions(logits, self.mode, weights=self.weights)

    def forward(self, x: Tensor) -> Tensor:
        return self.combine([member(x) for member in self.members])

    def extra_repr(self) -> str:
        return f"mode={self.mode!r}, temperature={self.temperature}, weights={self.weights}"
