"""Deliberate imagination (self-distillation with a lowered memorized token).

Teacher logits z_t at each position are shifted down by the imagination strength γ at the true
next token x_t: p'_t = softmax(z_t − γ·onehot(x_t)). The student is trained with cross-entropy
against p'_t, so the teacher's other plausible continuations keep their relative weights."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..errors import UserError
from .base import UnlearningMethod, batch_terms, register
from .likelihood import SoftTarget, softmax_
# Softmax over a 262k vocabulary in bf16 loses the small probabilities imagination creates.
from ..metrics.decoding import at_least_float32


def imagined_targets(
    teacher_logits: torch.Tensor, next_tokens: torch.Tensor, imagination_strength: float,
    overwrite: bool = False,
) -> torch.Tensor:
    """softmax(z − γ·onehot(x)) over the last dimension. Shapes: [..., V] and [...], or
    [..., K] for K tokens lowered at each position (--joint-lowering; a token repeated in a row
    is lowered once). With ``overwrite`` (float32 or float64 logits) it is computed in the
    logits' own memory."""
    shifted = teacher_logits if overwrite else at_least_float32(teacher_logits).clone()
    tokens = next_tokens if next_tokens.dim() == shifted.dim() else next_tokens.unsqueeze(-1)
    shifted.scatter_(-1, tokens, shifted.gather(-1, tokens) - imagination_strength)
    return softmax_(shifted)


def di_token_losses(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    input_ids: torch.Tensor,
    imagination_strength: float,
) -> torch.Tensor:
    """ℓ_t = −Σ_v p'_t(v) log q_t(v) for t = 1..T−1, shape [B, T−1]. Position t's prediction
    comes from the logits at t−1."""
    return batch_terms(DeliberateImagination(imagination_strength).token_terms, student_logits, input_ids,
                       teacher_logits)


@register
@dataclass
class DeliberateImagination(UnlearningMethod):
    name = "di"
    needs_teacher = True
    teacher_in_terms = True
    # γ 10: reached the unseen-text level with the smallest utility cost of the settings measured
    # on Gemma-3 270M (benchmarks/README.md); the paper's sweep is 3-30.
    imagination_strength: float = 10.0

    def __post_init__(self) -> None:
        if not self.imagination_strength >= 0:
            raise UserError(f"--strength must be >= 0, not {self.imagination_strength}")

    def token_target(self, targets, teacher_logits=None, overwrite=False):
        if teacher_logits is None:
            raise ValueError("deliberate imagination needs the teacher's logits")
        return SoftTarget(imagined_targets(teacher_logits, targets, self.imagination_strength, overwrite))
