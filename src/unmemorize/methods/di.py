"""Deliberate imagination (self-distillation with a lowered memorized token).

Teacher logits z_t at each position are shifted down by the imagination strength γ at the true
next token x_t: p'_t = softmax(z_t − γ·onehot(x_t)). The student is trained with cross-entropy
against p'_t, so the teacher's other plausible continuations keep their relative weights."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..errors import UserError
from .base import UnlearningMethod, register
# Softmax over a 262k vocabulary in bf16 loses the small probabilities imagination creates.
from ..metrics.decoding import at_least_float32


def imagined_targets(
    teacher_logits: torch.Tensor, next_tokens: torch.Tensor, imagination_strength: float
) -> torch.Tensor:
    """softmax(z − γ·onehot(x)) over the last dimension. Shapes: [..., V] and [...]."""
    shifted = at_least_float32(teacher_logits).clone()
    shifted.scatter_add_(
        -1,
        next_tokens.unsqueeze(-1),
        torch.full_like(shifted[..., :1], -imagination_strength),
    )
    return shifted.softmax(-1)


def di_token_losses(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    input_ids: torch.Tensor,
    imagination_strength: float,
) -> torch.Tensor:
    """ℓ_t = −Σ_v p'_t(v) log q_t(v) for t = 1..T−1, shape [B, T−1]. Position t's prediction
    comes from the logits at t−1."""
    targets = imagined_targets(teacher_logits[:, :-1], input_ids[:, 1:], imagination_strength)
    student = at_least_float32(student_logits[:, :-1])
    # cross_entropy with probability targets wants the class dimension second.
    return F.cross_entropy(student.transpose(1, 2), targets.transpose(1, 2), reduction="none")


@register
@dataclass
class DeliberateImagination(UnlearningMethod):
    name = "di"
    needs_teacher = True
    imagination_strength: float = 3.0

    def __post_init__(self) -> None:
        if not self.imagination_strength >= 0:
            raise UserError(f"--strength must be >= 0, not {self.imagination_strength}")

    def loss_sum(self, logits, batch, teacher_logits=None):
        if teacher_logits is None:
            raise ValueError("deliberate imagination needs the teacher's logits")
        losses = di_token_losses(logits, teacher_logits, batch["input_ids"], self.imagination_strength)
        return (losses * batch["loss_weights"][:, 1:]).sum()
