"""Gradient ascent on the forget set plus KL(original ‖ student) on a retain set (the KL
baseline of TOFU): the retain text's next-token distributions are held to the original model's,
not just its observed tokens.

loss = −NLL_forget + λ·Σ_t w_t·KL(p_orig,t ‖ p_θ,t) / Σ_t w_t over the retain tokens of the step.

The original model is the teacher ``di`` uses: the same network with the LoRA adapter off, or a
frozen copy when fine-tuning every weight."""

from __future__ import annotations

from dataclasses import dataclass

from .base import register
from .ga import GradientAscent
from ..metrics.decoding import at_least_float32
from .likelihood import SoftTarget


@register
@dataclass
class KLRetain(GradientAscent):
    name = "kl"
    requires_retain = True
    retain_needs_teacher = True

    def retain_token_target(self, targets, teacher_logits=None, overwrite=False):
        if teacher_logits is None:
            raise ValueError("the kl retain term needs the original model's logits")
        # KL(p_ref ‖ q) = CE(p_ref, q) − H(p_ref)
        log_reference = at_least_float32(teacher_logits).log_softmax(-1)
        reference = log_reference.exp()
        return SoftTarget(reference, 1.0, -(reference * log_reference).sum(-1))
