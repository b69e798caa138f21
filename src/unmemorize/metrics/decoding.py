"""Model plumbing shared by the metrics: one KV-cached decoding loop, the teacher-forced forward
over right-padded sequences, top-p nucleus selection, and small helpers.

:func:`decode` is written by hand rather than calling ``model.generate``: generate merges the
model's saved generation config (sampling flags, top-k, repetition penalties, and an unset
eos_token_id falls back to the default and stops at end-of-text), any of which silently changes
the decoding a metric is defined by. Here only the caller's ``choose_next`` picks a token, and
end-of-text is an ordinary token unless the caller passes a stop condition.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch

from unmemorize.errors import UserError

ProgressCallback = Callable[[int, int], None]
# (last-position logits [rows, V], step) -> next token per row [rows].
ChooseNext = Callable[[torch.Tensor, int], torch.Tensor]
# Next token per row [rows] -> whether the row stops there [rows] (the token is not kept).
StopCondition = Callable[[torch.Tensor], torch.Tensor]


# --- small helpers ------------------------------------------------------------------------


@contextmanager
def evaluating(model: torch.nn.Module) -> Iterator[None]:
    """Eval mode (no dropout) and no autograd, restoring the caller's training flag after."""
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            yield
    finally:
        model.train(was_training)


def model_device(model: torch.nn.Module) -> torch.device:
    """Where the model's parameters live (the CPU for a model without any)."""
    try:
        return next(model.parameters()).device
    except StopIteration:
        return torch.device("cpu")


def accepts_kwarg(model: torch.nn.Module, name: str) -> bool:
    """Whether the model's forward names ``name`` explicitly (looking through a PEFT wrapper,
    whose own forward only has **kwargs)."""
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    try:
        return name in inspect.signature(inner.forward).parameters
    except (TypeError, ValueError):
        return False


def returned_cache(outputs: Any) -> tuple[str, Any] | None:
    """The KV cache a forward returned and the keyword that feeds it back. Transformers 5
    calls both ``cache``; earlier versions ``past_key_values``. None: the model keeps no cache."""
    for name in ("cache", "past_key_values"):
        cache = getattr(outputs, name, None)
        if cache is not None:
            return name, cache
    return None


def at_least_float32(tensor: torch.Tensor) -> torch.Tensor:
    """Half-precision logits lose too much in softmax and log-softmax over a large vocabulary;
    float32 and float64 (tests) stay as they are."""
    return tensor if tensor.dtype in (torch.float32, torch.float64) else tensor.float()


def check_positive(name: str, value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise UserError(f"{name} must be an integer >= 1, got {value!r}")


def token_counter(progress: ProgressCallback | None, total: int) -> Callable[[int], None]:
    """Report ``progress(0, total)`` now; the returned callback adds a count of new tokens and
    reports the running sum."""
    done = 0
    if progress is not None:
        progress(0, total)

    def on_tokens(count: int) -> None:
        nonlocal done
        done += count
        if progress is not None:
            progress(done, total)

    return on_tokens


# --- teacher forcing ----------------------------------------------------------------------


def right_padded(
    sequences: Sequence[Sequence[int]], pad_token_id: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """(input_ids, attention_mask) on the CPU, each sequence from column 0, padded after."""
    width = max(len(seq) for seq in sequences)
    input_ids = torch.full((len(sequences), width), pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for row, seq in enumerate(sequences):
        input_ids[row, : len(seq)] = torch.tensor(seq, dtype=torch.long)
        attention_mask[row, : len(seq)] = 1
    return input_ids, attention_mask


def teacher_forced_logits(
    model: torch.nn.Module,
    sequences: Sequence[Sequence[int]],
    *,
    pad_token_id: int,
    device: torch.device,
    **kwargs: Any,
) -> torch.Tensor:
    """Logits of one forward pass over the right-padded sequences, without a KV cache.

    Right padding: causal attention never lets a real token see the pads after it, and
    positions stay 0..n-1, so a sequence scores the same in any batch. ``kwargs`` go to the
    model (e.g. ``logits_to_keep``).
    """
    input_ids, attention_mask = right_padded(sequences, pad_token_id)
    position_ids = torch.arange(input_ids.shape[1]).expand_as(input_ids)
    return model(
        input_ids=input_ids.to(device),
        attention_mask=attention_mask.to(device),
        position_ids=position_ids.to(device),
        use_cache=False,
        **kwargs,
    ).logits


# --- decoding -----------------------------------------------------------------------------


def choose_argmax(last_logits: torch.Tensor, _step: int) -> torch.Tensor:
    """``choose_next`` for greedy decoding: the argmax of each row."""
    return last_logits.argmax(dim=-1)


def nucleus_mask(sorted_probs: torch.Tensor, top_p: float) -> torch.Tensor:
    """Which tokens of each row, sorted most likely first ([rows, k] probabilities), belong to
    the top-p nucleus: the smallest set of most likely tokens whose probability reaches
    ``top_p``. A token is in while the mass ranked above it is still short of ``top_p``; the
    top token always is, so ``top_p`` -> 0 is greedy."""
    mass_above = sorted_probs.cumsum(dim=-1) - sorted_probs
    in_nucleus = mass_above < top_p
    in_nucleus[:, 0] = True
    return in_nucleus


# Rows are searched among their top k tokens first; only flat rows widen k (see nucleus_sample).
NUCLEUS_FIRST_K = 256


def nucleus_sample(probs: torch.Tensor, top_p: float, uniforms: torch.Tensor) -> torch.Tensor:
    """Sample one token per row from the smallest set of most likely tokens whose mass reaches
    ``top_p``, by inverting its cumulative distribution at ``uniforms``.

    Each row is looked at among its top ``NUCLEUS_FIRST_K`` tokens first; only rows whose
    nucleus is wider (flat distributions) are searched again with a 4x larger k, so peaked rows
    never pay for sorting the whole vocabulary.
    """
    vocab = probs.shape[-1]
    if top_p >= 1.0:
        return invert_cdf(probs, uniforms)
    choice = torch.empty(probs.shape[0], dtype=torch.long, device=probs.device)
    pending = torch.arange(probs.shape[0], device=probs.device)
    k = min(NUCLEUS_FIRST_K, vocab)
    while pending.numel():
        top_probs, top_ids = probs[pending].topk(k, dim=-1)
        # The nucleus lies in the top k once the row's top-k mass reaches top_p.
        if k < vocab:
            settled = top_probs.sum(dim=-1) >= top_p
        else:
            settled = torch.ones_like(pending, dtype=torch.bool)
        if bool(settled.any()):
            kept = top_probs[settled]
            picked = invert_cdf(kept * nucleus_mask(kept, top_p), uniforms[pending[settled]])
            choice[pending[settled]] = top_ids[settled].gather(-1, picked[:, None]).squeeze(-1)
        pending = pending[~settled]
        k = min(vocab, k * 4)
    return choice


def invert_cdf(weights: torch.Tensor, uniforms: torch.Tensor) -> torch.Tensor:
    """Index whose cumulative weight first reaches uniform x total, per row. Zero-weight
    entries never win: searchsorted returns the first index whose cdf is >= the target."""
    cdf = weights.cumsum(dim=-1)
    targets = (uniforms.to(cdf.dtype) * cdf[:, -1])[:, None]
    return torch.searchsorted(cdf, targets).clamp(max=cdf.shape[-1] - 1).squeeze(-1)


def decode(
    model: torch.nn.Module,
    prefixes: Sequence[Sequence[int]],
    lengths: Sequence[int],
    choose_next: ChooseNext,
    *,
    pad_token_id: int,
    stop: StopCondition | None = None,
    on_tokens: Callable[[int], None] | None = None,
) -> list[list[int]]:
    """Continue each prefix by up to ``lengths[row]`` tokens, all rows in one batch.

    At step s, ``choose_next(logits, s)`` gets the [rows, V] logits of the last position and
    returns the next token of every row. With ``stop``, a row ends before the first token for
    which ``stop`` is true; from then on it is fed ``pad_token_id`` (its output is not used) and
    decoding ends once every row has stopped. Returns each row's new tokens (the prefix left
    out). ``on_tokens(count)`` is called after every step with the number of rows that still
    needed a token then.

    Prefixes are left padded, with an attention mask and position ids counted from the mask,
    which keeps each row identical to decoding it alone. The KV cache the model returns is fed
    back (only the new token goes in); a model that returns none gets the whole sequence each
    step. Only the last position's logits are requested when the model accepts
    ``logits_to_keep``.
    """
    device = model_device(model)
    lengths = list(lengths)
    rows, width, steps = len(prefixes), max(len(p) for p in prefixes), max(lengths)
    input_ids = torch.full((rows, width), pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros((rows, width), dtype=torch.long)
    for row, prefix in enumerate(prefixes):
        input_ids[row, width - len(prefix) :] = torch.tensor(prefix, dtype=torch.long)
        attention_mask[row, width - len(prefix) :] = 1
    input_ids, attention_mask = input_ids.to(device), attention_mask.to(device)
    # Positions count real tokens only, so a left-padded row sees the positions it would alone.
    position_ids = (attention_mask.cumsum(dim=-1) - 1).clamp(min=0)
    # Only the last position's logits are needed; a full-vocabulary row per prefix token is not.
    extra = {"logits_to_keep": 1} if accepts_kwarg(model, "logits_to_keep") else {}

    generated = torch.full((rows, steps), pad_token_id, dtype=torch.long, device=device)
    # Per row, the step at which it stopped (``steps`` while it runs).
    stopped_at = torch.full((rows,), steps, dtype=torch.long, device=device)
    lengths_tensor = torch.tensor(lengths, device=device)
    step_ids, step_positions = input_ids, position_ids
    cache: tuple[str, Any] | None = None
    for step in range(steps):
        kwargs = dict(extra)
        if cache is not None:
            kwargs[cache[0]] = cache[1]
        outputs = model(
            input_ids=step_ids,
            attention_mask=attention_mask,
            position_ids=step_positions,
            use_cache=True,
            **kwargs,
        )
        next_tokens = choose_next(outputs.logits[:, -1, :], step)
        cache = returned_cache(outputs)
        del outputs
        if stop is None:
            if on_tokens is not None:
                on_tokens(sum(1 for length in lengths if length > step))
        else:
            running = stopped_at == steps
            if on_tokens is not None:
                on_tokens(int((running & (lengths_tensor > step)).sum()))
            # A stopped row is fed padding from then on; its output is not used.
            pad = torch.full_like(next_tokens, pad_token_id)
            next_tokens = torch.where(running, next_tokens, pad)
            stopped_at = torch.where(running & stop(next_tokens), step, stopped_at)
        generated[:, step] = next_tokens
        if stop is not None and bool((stopped_at < steps).all()):
            break
        next_positions = position_ids[:, -1:] + 1
        input_ids = torch.cat([input_ids, next_tokens[:, None]], dim=-1)
        position_ids = torch.cat([position_ids, next_positions], dim=-1)
        attention_mask = torch.cat([attention_mask, torch.ones_like(next_positions)], dim=-1)
        if cache is not None:
            step_ids, step_positions = next_tokens[:, None], next_positions
        else:  # a model without a KV cache sees the whole sequence again
            step_ids, step_positions = input_ids, position_ids
    ends = stopped_at.cpu().tolist()
    generated_rows = generated.cpu().tolist()
    return [generated_rows[row][: min(lengths[row], ends[row])] for row in range(rows)]
