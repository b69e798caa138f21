"""The loss of one micro-batch without a ``[B, T, V]`` tensor: the chunked path.

A method's loss is a sum of per-token terms, each a function of one position's logits (and the
teacher's, for deliberate imagination), combined by ``loss_from_terms`` (see `methods.base`). On a
262k-entry vocabulary the logits dominate memory: one float32 ``[8, 200, V]`` tensor is 1.67 GB,
and the plain path holds several (teacher logits, student logits, their softmaxes, the gradient).
Here the network runs up to its last hidden state ``h`` (``logits_to_keep=1``: its own head sees
one position), and the head ``z = h·Wᵀ`` is applied a chunk of positions at a time — only at
positions with a target weight — with each chunk's terms, their gradient with respect to ``z``,
and from it the gradients of ``h`` and ``W`` computed at once and the chunk's logits dropped
(the idea of the fused linear losses of Liger Kernel and Cut Cross-Entropy, written in plain
torch so it runs on a CPU).

The gradient needs the coefficient ``c_t = ∂loss/∂term_t`` of every term before the chunk is
dropped. For the methods whose loss is linear in the terms (di, ga, gd, kl, finetune, task-vector
and every retain term) ``c_t`` is known before anything runs; for npo and simnpo a first pass
computes the terms without gradients, ``c_t`` comes from ``loss_from_terms`` by autograd on the
small ``[B, T−1]`` tensor, and a second pass computes the gradients. Either way the loss and its
gradient equal the plain path's (tests/test_chunked_loss.py compares them in float64)."""

from __future__ import annotations

import dataclasses

from collections.abc import Callable
from dataclasses import dataclass

import torch

from ..metrics.decoding import accepts_kwarg, at_least_float32
from ..methods import UnlearningMethod
from ..methods.base import forget_targets
from ..methods.likelihood import SoftTarget

# Elements of one chunk of logits: 2^26 floats (256 MiB) is 256 positions of a 262k vocabulary,
# large enough that the head's matrix product runs near the CPU's peak, small next to the model.
CHUNK_ELEMENTS = 2**26



@dataclass
class OutputHead:
    """The output layer as a matrix: logits = softcap(h·Wᵀ + b)."""

    weight: torch.Tensor
    bias: torch.Tensor | None
    softcap: float | None
    # A softmax over these vocabulary rows only (finetune --softmax-vocabulary); None: all.
    rows: torch.Tensor | None = None

    def restricted(self, targets: torch.Tensor) -> tuple["OutputHead", torch.Tensor]:
        """The head over ``rows`` alone (its weight a differentiable gather) and the targets as
        indices into them; every target must be one of the rows."""
        if self.rows is None:
            return self, targets
        position = torch.full((self.weight.shape[0],), -1, dtype=torch.long, device=self.weight.device)
        position[self.rows] = torch.arange(len(self.rows), device=self.weight.device)
        mapped = position[targets]
        if bool((mapped < 0).any()):
            raise ValueError("a target token is outside the softmax's vocabulary rows")
        bias = self.bias[self.rows] if self.bias is not None else None
        return OutputHead(self.weight[self.rows], bias, self.softcap), mapped

    def current(self, model: torch.nn.Module) -> "OutputHead":
        """This head with the model's output-layer tensors as they are now: a sharded model's
        root unit swaps its gathered tensors in for each forward pass (training.sharding)."""
        layer = _causal_lm(model).get_output_embeddings()
        return OutputHead(layer.weight, layer.bias, self.softcap, self.rows)

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        z = at_least_float32(torch.nn.functional.linear(hidden, self.weight, self.bias))
        return z if self.softcap is None else torch.tanh(z / self.softcap) * self.softcap

    def raw_logits_into(self, out: torch.Tensor, hidden: torch.Tensor) -> torch.Tensor:
        """h·Wᵀ + b written into ``out`` ([len(hidden), V], the loss's float dtype)."""
        if hidden.dtype == out.dtype == self.weight.dtype:
            torch.mm(hidden, self.weight.t(), out=out)
        else:  # bfloat16 hidden states (autocast): the product in the weights' precision
            out.copy_(torch.nn.functional.linear(hidden.to(self.weight.dtype), self.weight))
        return out if self.bias is None else out.add_(self.bias)

    def cap_(self, z: torch.Tensor) -> torch.Tensor:
        # Gemma 2's final logit soft-capping, softcap·tanh(z / softcap), in place.
        return z if self.softcap is None else z.div_(self.softcap).tanh_().mul_(self.softcap)


def _causal_lm(model: torch.nn.Module) -> torch.nn.Module:
    """The transformers model inside a PEFT or DDP wrapper."""
    model = getattr(model, "module", model)  # DDP
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def output_head(model: torch.nn.Module) -> OutputHead | None:
    """The model's output layer as an `OutputHead`, or None when the chunked path cannot be used
    (no plain linear head, e.g. a LoRA adapter on it, or a model without ``logits_to_keep``)."""
    net = _causal_lm(model)
    head = net.get_output_embeddings() if hasattr(net, "get_output_embeddings") else None
    if type(head) is not torch.nn.Linear or not accepts_kwarg(net, "logits_to_keep"):
        return None
    return OutputHead(head.weight, head.bias, getattr(net.config, "final_logit_softcapping", None))


def over_vocabulary(head: OutputHead, texts: list[list[int]], vocabulary: int) -> OutputHead:
    """``head`` with its softmax over the training texts' own tokens and the first
    ``vocabulary`` ids only (finetune --softmax-vocabulary)."""
    rows = torch.unique(torch.tensor([i for ids in texts for i in ids]
                                     + list(range(min(vocabulary, head.weight.shape[0])))))
    return dataclasses.replace(head, rows=rows.to(head.weight.device))


def final_hidden(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """The last hidden state [B, T, H] (what the head reads) and the logits of the last position."""
    out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                output_hidden_states=True, logits_to_keep=1)
    return out.hidden_states[-1], out.logits[:, -1]


def head_matches(model: torch.nn.Module, head: OutputHead, sample: torch.Tensor) -> bool:
    """Whether ``head`` applied to the last hidden state gives the model's own logits: checked
    once per model before the chunked path is trusted with it."""
    with torch.no_grad():
        hidden, logits = final_hidden(model, {"input_ids": sample, "attention_mask": torch.ones_like(sample)})
        return bool(torch.allclose(head.logits(hidden[:, -1]), at_least_float32(logits), rtol=1e-4, atol=1e-4))


def _rows(vocab: int) -> int:
    return max(1, CHUNK_ELEMENTS // vocab)


class _Buffers:
    """[rows, V] buffers for the chunks, kept for the life of the process and reused by every
    chunk and every step: a fresh tensor this large is a new mmap, and touching its pages for the
    first time costs more than the arithmetic done in it (about 1 ms per MB on a small cloud VM).
    `release_buffers` frees them."""

    _kept: dict[tuple, torch.Tensor] = {}

    def __init__(self, head: OutputHead, dtype: torch.dtype) -> None:
        self.shape, self.dtype, self.device = (_rows(head.weight.shape[0]), head.weight.shape[0]), dtype, head.weight.device

    def __call__(self, name: str, rows: int) -> torch.Tensor:
        key = (name, self.shape, self.dtype, str(self.device))
        if key not in self._kept:
            self._kept[key] = torch.empty(self.shape, dtype=self.dtype, device=self.device)
        return self._kept[key][:rows]


def release_buffers() -> None:
    """Free the chunk buffers (after training: evaluation needs the memory more)."""
    _Buffers._kept.clear()


TargetOf = Callable[..., "SoftTarget"]  # (targets, teacher logits, overwrite) -> SoftTarget


def _chunk_terms(head: OutputHead, rows: torch.Tensor, targets: torch.Tensor, target_of: TargetOf,
                 teacher: tuple[OutputHead, torch.Tensor] | None, coefficients: torch.Tensor | None,
                 buffers: _Buffers) -> tuple[torch.Tensor, torch.Tensor | None]:
    """One chunk's terms and (with ``coefficients``) the gradient of Σ c·term with respect to
    the raw logits h·Wᵀ + b, held in a reused buffer."""
    z = head.raw_logits_into(buffers("student", len(rows)), rows)
    slope = None
    if head.softcap is not None:  # d softcap(z)/dz = 1 − tanh², kept before z is overwritten
        head.cap_(z)
        slope = buffers("slope", len(rows)).copy_(z).div_(head.softcap).square_().neg_().add_(1)
    teacher_logits = None
    if teacher is not None:
        teacher_logits = teacher[0].cap_(teacher[0].raw_logits_into(buffers("teacher", len(rows)), teacher[1]))
    target = target_of(targets, teacher_logits, True)
    scratch = buffers("scratch", len(rows)) if target.probs is not None else None
    values, grad = target.terms_and_gradient(z, targets, coefficients, scratch)
    if grad is not None and slope is not None:
        grad.mul_(slope)
    return values, grad


def _loss_dtype(hidden: torch.Tensor) -> torch.dtype:
    return torch.float64 if hidden.dtype == torch.float64 else torch.float32


def chunked_values(head: OutputHead, hidden: torch.Tensor, targets: torch.Tensor, target_of: TargetOf,
                   teacher: tuple[OutputHead, torch.Tensor] | None = None) -> torch.Tensor:
    """The term at each row of ``hidden`` [n, H] (no gradients), a chunk of rows at a time."""
    values = torch.empty(hidden.shape[0], dtype=_loss_dtype(hidden), device=hidden.device)
    buffers, step = _Buffers(head, values.dtype), _rows(head.weight.shape[0])
    with torch.no_grad(), torch.autocast(hidden.device.type, enabled=False):
        for start in range(0, hidden.shape[0], step):
            end = start + step
            part = (teacher[0], teacher[1][start:end]) if teacher is not None else None
            values[start:end] = _chunk_terms(head, hidden[start:end], targets[start:end], target_of, part, None, buffers)[0]
    return values


class _ChunkedWeightedTerms(torch.autograd.Function):
    """Σ_t c_t·term_t over the rows of ``hidden``, with the gradients of ``hidden``, ``weight``
    and ``bias`` computed chunk by chunk in the forward pass (the coefficients are constants)."""

    @staticmethod
    def forward(ctx, hidden, weight, bias, coefficients, targets, head, target_of, teacher):
        grad_hidden = torch.empty_like(hidden)
        # Written by the first chunk's product, added to by the others (no zero-filling pass).
        grad_weight = torch.empty_like(weight) if ctx.needs_input_grad[1] else None
        if grad_weight is not None and hidden.shape[0] == 0:
            grad_weight.zero_()
        grad_bias = torch.zeros_like(bias) if bias is not None and ctx.needs_input_grad[2] else None
        total = torch.zeros((), dtype=coefficients.dtype, device=hidden.device)
        buffers, step = _Buffers(head, coefficients.dtype), _rows(weight.shape[0])
        for start in range(0, hidden.shape[0], step):
            end = start + step
            rows = hidden[start:end]
            part = (teacher[0], teacher[1][start:end]) if teacher is not None else None
            values, grad = _chunk_terms(head, rows, targets[start:end], target_of, part, coefficients[start:end], buffers)
            total += (values * coefficients[start:end]).sum()
            grad = grad.to(weight.dtype)
            grad_hidden[start:end] = grad @ weight
            if grad_weight is not None:
                rows = rows.to(weight.dtype)
                torch.mm(grad.T, rows, out=grad_weight) if start == 0 else grad_weight.addmm_(grad.T, rows)
            if grad_bias is not None:
                grad_bias += grad.sum(0)
        ctx.save_for_backward(grad_hidden, grad_weight, grad_bias)
        return total

    @staticmethod
    def backward(ctx, grad_total):
        grad_hidden, grad_weight, grad_bias = ctx.saved_tensors
        scale = lambda g: None if g is None else g * grad_total.to(g.dtype)  # noqa: E731
        return scale(grad_hidden), scale(grad_weight), scale(grad_bias), None, None, None, None, None


def weighted_terms(head: OutputHead, hidden: torch.Tensor, targets: torch.Tensor, coefficients: torch.Tensor,
                   target_of: TargetOf, teacher: tuple[OutputHead, torch.Tensor] | None = None) -> torch.Tensor:
    """Σ_t c_t·term_t(head(hidden_t), target_t, teacher logits_t), differentiable in ``hidden``
    and the head's parameters, never holding more than a chunk of logits. The chunks' products
    run in the head's own precision, outside any autocast."""
    with torch.autocast(hidden.device.type, enabled=False):
        return _ChunkedWeightedTerms.apply(hidden, head.weight, head.bias, coefficients, targets, head, target_of,
                                           teacher)


@dataclass
class Objective:
    """A method's forget loss, or its retain loss, as token terms and how they combine."""

    target: TargetOf  # the method's token_target (or retain_token_target)
    combine: Callable[[torch.Tensor, dict, torch.Tensor | None], torch.Tensor]  # (terms [B, T−1], batch, teacher terms)
    linear: bool
    teacher_logits: bool  # the term reads the teacher's logits at its position
    teacher_terms: bool  # combine reads the teacher's own terms


def _weighted_sum(terms: torch.Tensor, batch: dict, teacher_terms: torch.Tensor | None = None) -> torch.Tensor:
    return (terms * batch["loss_weights"][:, 1:]).sum()


def objective(method: UnlearningMethod, retain: bool = False) -> Objective:
    if retain:
        return Objective(method.retain_token_target, _weighted_sum, True, method.retain_needs_teacher, False)
    return Objective(method.token_target, method.loss_from_terms, method.linear_in_terms,
                     method.needs_teacher and method.teacher_in_terms,
                     method.needs_teacher and not method.teacher_in_terms)


def _scatter(values: torch.Tensor, where: torch.Tensor) -> torch.Tensor:
    full = torch.zeros(where.shape, dtype=values.dtype, device=values.device)
    full[where] = values
    return full


def chunked_loss(goal: Objective, head: OutputHead, hidden: torch.Tensor, batch: dict[str, torch.Tensor],
                 scale: torch.Tensor | float = 1.0,
                 teacher: tuple[OutputHead, torch.Tensor] | None = None) -> torch.Tensor:
    """``scale × goal.combine(terms)`` for a batch whose last hidden states are ``hidden``
    [B, T, H] (and the teacher's, with its head), with the plain path's value and gradient.
    Only positions with a target weight are projected: a term where the weight is 0 never
    enters a loss (padding, position 0, tokens outside a hard focus)."""
    where = batch["loss_weights"][:, 1:] > 0
    rows = hidden[:, :-1][where]
    head, targets = head.restricted(forget_targets(batch)[:, 1:][where])
    teacher_rows = (teacher[0], teacher[1][:, :-1][where]) if teacher is not None else None
    dtype = _loss_dtype(hidden)
    teacher_terms = None
    if goal.teacher_terms:
        teacher_terms = _scatter(chunked_values(teacher_rows[0], teacher_rows[1], targets, goal.target), where)
    in_term = teacher_rows if goal.teacher_logits else None
    if goal.linear:
        probe = torch.zeros(where.shape, dtype=dtype, device=hidden.device, requires_grad=True)
        (coefficients,) = torch.autograd.grad(goal.combine(probe, batch, teacher_terms), probe)
        return weighted_terms(head, rows, targets, (coefficients * scale)[where].to(dtype), goal.target, in_term)
    values = _scatter(chunked_values(head, rows.detach(), targets, goal.target, in_term).to(dtype), where)
    values.requires_grad_()
    loss = goal.combine(values, batch, teacher_terms) * scale
    (coefficients,) = torch.autograd.grad(loss, values)
    surrogate = weighted_terms(head, rows, targets, coefficients[where], goal.target, in_term)
    return loss.detach() + surrogate - surrogate.detach()
