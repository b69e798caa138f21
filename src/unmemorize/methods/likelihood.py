"""Per-token log-likelihoods shared by the likelihood-based methods (ga, gd, kl, npo, simnpo,
task-vector) and by the default retain term.

Position t's prediction comes from the logits at t−1, so every helper returns [B, T−1] values
aligned with ``batch["loss_weights"][:, 1:]`` (0 at padding)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..metrics.decoding import at_least_float32


def token_log_probs(logits: torch.Tensor, input_ids: torch.Tensor) -> torch.Tensor:
    """log p(x_t | x_<t) for t = 1..T−1, shape [B, T−1]."""
    log_probs = at_least_float32(logits[:, :-1]).log_softmax(-1)
    return log_probs.gather(-1, input_ids[:, 1:].unsqueeze(-1)).squeeze(-1)


def weighted_nll_sum(logits: torch.Tensor, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Σ_t w_t·(−log p(x_t | x_<t)) over the batch: the sum behind a weighted mean NLL."""
    nll = -token_log_probs(logits, batch["input_ids"])
    return (nll * batch["loss_weights"][:, 1:]).sum()


def sequence_log_likelihoods(logits: torch.Tensor, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """log π(y_i) = Σ_t w_t·log p(x_t | x_<t) per sequence, shape [B]. With uniform focus w_t is
    1 on every real target token, so this is the sequence's log-likelihood; a focus restricts or
    re-weights the tokens that count."""
    return (token_log_probs(logits, batch["input_ids"]) * batch["loss_weights"][:, 1:]).sum(-1)


def sequences_with_targets(batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Which sequences have any target weight ([B] bool): the others enter no sequence loss."""
    return batch["loss_weights"][:, 1:].sum(-1) > 0


def token_kl(reference_logits: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """KL(p_ref ‖ p) at every predicting position, shape [B, T−1] (prediction of token t)."""
    reference = at_least_float32(reference_logits[:, :-1]).log_softmax(-1)
    student = at_least_float32(logits[:, :-1]).log_softmax(-1)
    return F.kl_div(student, reference, log_target=True, reduction="none").sum(-1)
