"""Negative Preference Optimization (Zhang et al. 2024, "Negative Preference Optimization:
From Catastrophic Collapse to Effective Unlearning").

On sequence log-likelihoods relative to the original model π_ref:

    u_i = log π_θ(y_i) − log π_ref(y_i),    loss = −(2/β)·mean_i log σ(−β·u_i)

log π(y_i) sums the log-probabilities of sequence i's real target tokens (times their focus
weights: with a focus only those tokens count). The loss is bounded below by 0 and its gradient
vanishes as u_i → −∞, which is what keeps NPO from gradient ascent's collapse; as β → 0 it
becomes gradient ascent on sequence log-likelihoods. The mean is over the sequences of the whole
optimizer step (the normalizer is the number of sequences), so accumulation and multi-process
training equal one big batch. π_ref is the teacher ``di`` uses (adapter off, or a frozen copy)."""

from __future__ import annotations

from dataclasses import dataclass

import torch.nn.functional as F

from ..errors import UserError
from .base import UnlearningMethod, register
from .likelihood import SoftTarget, sequences_with_targets, weighted_sequence_sums


@register
@dataclass
class NegativePreferenceOptimization(UnlearningMethod):
    name = "npo"
    learning_rates = (5e-4, 2e-5)  # measured with LoRA: benchmarks/paired_comparison.yaml
    needs_teacher = True
    linear_in_terms = False
    beta: float = 0.1

    def __post_init__(self) -> None:
        if not self.beta > 0:
            raise UserError(f"--beta must be positive, not {self.beta}")

    def normalizer(self, batch):
        return sequences_with_targets(batch).sum()

    def token_target(self, targets, teacher_logits=None, overwrite=False):
        return SoftTarget(sign=-1.0)  # log π(x_t | x_<t)

    def loss_from_terms(self, terms, batch, teacher_terms=None):
        if teacher_terms is None:
            raise ValueError("npo needs the original model's log-likelihoods")
        ratio = weighted_sequence_sums(terms, batch) - weighted_sequence_sums(teacher_terms, batch)
        losses = -(2 / self.beta) * F.logsigmoid(-self.beta * ratio)
        return losses[sequences_with_targets(batch)].sum()
