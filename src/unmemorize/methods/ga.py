"""Gradient ascent (Jang et al. 2022, "Knowledge Unlearning for Mitigating Privacy Risks in
Language Models"): maximize the forget set's negative log-likelihood.

loss = −Σ_t w_t·ℓ_t / Σ_t w_t with ℓ_t = −log p(x_t | x_<t): the negated weighted mean NLL of
the step's real target tokens (padding and position 0 have w_t = 0; a focus sets or re-weights
w_t exactly as for ``di``). Unbounded below, so it is stopped by the memorization rule
(``--stop-ma auto``) or the step budget; a retain set (``--retain``) adds an NLL term."""

from __future__ import annotations

from dataclasses import dataclass

from .base import UnlearningMethod, register
from .likelihood import SoftTarget


@register
@dataclass
class GradientAscent(UnlearningMethod):
    name = "ga"
    learning_rates = (2e-4, 2e-5)  # measured with LoRA: benchmarks/paired_comparison.yaml

    def token_target(self, targets, teacher_logits=None, overwrite=False):
        return SoftTarget(sign=-1.0)  # log p(x) = −CE(onehot(x), q); Σ w·log p = −(weighted NLL): ascent
