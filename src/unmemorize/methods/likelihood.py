"""Per-token terms shared by the methods. Every method's term is a signed cross-entropy to a
target distribution (`SoftTarget`): gradient ascent's log p(x) is −CE(onehot(x), q), deliberate
imagination's is CE(p', q), the KL retain term is CE(p_ref, q) − H(p_ref). Terms take rows of
logits ``[n, V]`` (and the next tokens ``[n]``) and give one value per row, computed in at least
float32: a softmax over a 262k vocabulary in bfloat16 loses the small probabilities these terms
depend on."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..metrics.decoding import at_least_float32


def token_log_probs(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """log p(x | context) of each row's target token, shape [n]."""
    return at_least_float32(logits).log_softmax(-1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)


def soft_cross_entropy(logits: torch.Tensor, target_probs: torch.Tensor) -> torch.Tensor:
    """−Σ_v p(v)·log q(v) per row, q = softmax(logits). Written on [n, V] rather than with
    F.cross_entropy on transposed [B, V, T] tensors: its float32 gradient is about ten times
    closer to the float64 value there."""
    return -(target_probs * at_least_float32(logits).log_softmax(-1)).sum(-1)


def sequences_with_targets(batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Which sequences have any target weight ([B] bool): the others enter no sequence loss."""
    return batch["loss_weights"][:, 1:].sum(-1) > 0


def weighted_sequence_sums(terms: torch.Tensor, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Σ_t w_t·term_t per sequence, [B]: with log-probability terms and uniform focus, the
    sequence's log-likelihood; a focus restricts or re-weights the tokens that count."""
    return (terms * batch["loss_weights"][:, 1:]).sum(-1)


def softmax_(logits: torch.Tensor) -> torch.Tensor:
    """softmax over the last dimension, computed in ``logits``' own memory (overwritten)."""
    logits.sub_(logits.amax(-1, keepdim=True)).exp_()
    return logits.div_(logits.sum(-1, keepdim=True))


@dataclass
class SoftTarget:
    """The term sign·(CE(P, q) − K) of each row: CE(P, q) = −Σ_v P(v)·log q(v), q = softmax(logits),
    P a target distribution (``probs`` [n, V]; None: the one-hot of the row's next token), K a
    per-row constant (``constant`` [n] or None). Its gradient with respect to the logits is
    sign·(q − P)."""

    probs: torch.Tensor | None = None
    sign: float = 1.0
    constant: torch.Tensor | None = None

    def terms(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """The terms by their definition (differentiable: the plain path and the reference)."""
        ce = -token_log_probs(logits, targets) if self.probs is None else soft_cross_entropy(logits, self.probs)
        if self.constant is not None:
            ce = ce - self.constant
        return self.sign * ce

    def terms_and_gradient(self, logits: torch.Tensor, targets: torch.Tensor, coefficients: torch.Tensor | None,
                           scratch: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The terms, and the gradient of Σ_t c_t·term_t with respect to the logits, computed in
        ``logits``' own memory (overwritten with the gradient; float32 or float64 only). Written
        out rather than by autograd: each step is one pass over the chunk in place, where
        autograd allocates a new [n, V] tensor per operation (an mmap and its page faults on a
        CPU, for a 262k vocabulary). ``scratch``: memory of the logits' shape to reuse."""
        if self.probs is None:
            dot = logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
        else:  # Σ_v P(v)·z_v per row (a batched dot product through bmm runs far below memory speed)
            dot = torch.mul(self.probs, logits, out=scratch if scratch is not None else torch.empty_like(logits)).sum(-1)
        top = logits.amax(-1)
        exp = logits.sub_(top.unsqueeze(-1)).exp_()
        total = exp.sum(-1)
        ce = top + total.log() - dot  # log Σ exp(z) − Σ P·z, as Σ P = 1
        if self.constant is not None:
            ce = ce - self.constant
        values = self.sign * ce
        if coefficients is None:
            return values, None
        grad = exp.div_(total.unsqueeze(-1))  # q
        if self.probs is None:
            grad[torch.arange(grad.shape[0], device=grad.device), targets] -= 1
        else:
            grad.sub_(self.probs)
        return values, grad.mul_((self.sign * coefficients).unsqueeze(-1))
