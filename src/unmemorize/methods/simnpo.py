"""SimNPO (Fan et al. 2024, "Simplicity Prevails: Rethinking Negative Preference Optimization
for LLM Unlearning"): NPO without the reference model, on length-normalized log-likelihoods:

    loss = −(2/β)·mean_i log σ(−(β/|y_i|)·log π_θ(y_i) − margin)

|y_i| is the number of sequence i's target tokens (their total focus weight). Defaults β = 2.5
and margin γ = 0: the authors' TOFU forget05 setting (their code's ``beta=2.5 gamma=0.0``).
Normalized by the number of sequences of the optimizer step, like ``npo``."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch.nn.functional as F

from ..errors import UserError
from .base import UnlearningMethod, register
from .likelihood import SoftTarget, sequences_with_targets, weighted_sequence_sums


@register
@dataclass
class SimNPO(UnlearningMethod):
    name = "simnpo"
    linear_in_terms = False
    beta: float = 2.5
    margin: float = 0.0

    def __post_init__(self) -> None:
        if not self.beta > 0:
            raise UserError(f"--beta must be positive, not {self.beta}")
        if not math.isfinite(self.margin):
            raise UserError(f"--margin must be a finite number, not {self.margin}")

    def normalizer(self, batch):
        return sequences_with_targets(batch).sum()

    def token_target(self, targets, teacher_logits=None, overwrite=False):
        return SoftTarget(sign=-1.0)  # log π(x_t | x_<t)

    def loss_from_terms(self, terms, batch, teacher_terms=None):
        has_targets = sequences_with_targets(batch)
        # Sequences without targets get length 1 here; they are dropped below.
        lengths = batch["loss_weights"][:, 1:].sum(-1).clamp(min=1e-12)
        average = weighted_sequence_sums(terms, batch) / lengths
        losses = -(2 / self.beta) * F.logsigmoid(-self.beta * average - self.margin)
        return losses[has_targets].sum()
