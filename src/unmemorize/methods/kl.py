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
from .likelihood import token_kl


@register
@dataclass
class KLRetain(GradientAscent):
    name = "kl"
    requires_retain = True
    retain_needs_teacher = True

    def retain_loss_sum(self, logits, batch, teacher_logits=None):
        if teacher_logits is None:
            raise ValueError("the kl retain term needs the original model's logits")
        return (token_kl(teacher_logits, logits) * batch["loss_weights"][:, 1:]).sum()
