"""Memorization metrics of Jang et al. (2022), "Knowledge Unlearning for Mitigating Privacy
Risks in Language Models".

A sample is a list of token ids x of length T (already tokenized and truncated, BOS included
when the tokenizer adds one). Targets are the positions t = 1..T-1: token x_t predicted from
the prefix x_<t.

* Memorization accuracy, teacher-forced, one forward pass per batch:
  MA = (1/(T-1)) * sum_{t=1}^{T-1} 1[argmax p(.|x_<t) = x_t]

* Extraction likelihood:
  EL_n = (1/(T-n)) * sum_{t=1}^{T-1} overlap_n(g_t, x_{t..T-1})
  where g_t is the greedy continuation of x_<t of exactly T-t tokens (end-of-text does not
  stop it) and overlap_n is :func:`ngram_overlap`. Prefixes whose true suffix is shorter than
  n have no n-gram and contribute nothing; T-1-n+1 = T-n prefixes do, hence the normalizer.
  When T-n <= 0 no prefix has an n-gram and EL_n is defined as 0.0.

  With a stride k only the prefixes t = 1, 1+k, 1+2k, ... are scored and the normalizer is
  the number of those that have at least one n-gram (for k = 1 that is exactly T-n).

Exact EL costs ~T^2/2 generated tokens per sample. Most of it is skipped with an exact
identity: if the greedy prediction after x_<t is x_t (known from the teacher-forced pass),
the greedy continuation of x_<t is x_t followed by the greedy continuation of x_<t+1. So
g_t = x_t..x_{m-1} + g_m, where m is the first mismatch position >= t, and only prefixes
ending at a mismatch are generated.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from unmemorize.errors import UserError
from unmemorize.metrics.decoding import (
    ProgressCallback,
    check_positive,
    choose_argmax,
    decode,
    evaluating,
    model_device,
    teacher_forced_logits,
    token_counter,
)


@dataclass
class MemorizationResult:
    """Per-sample MA and EL_n; ``el`` maps n to one value per sample (empty when EL was skipped)."""

    ma: list[float]
    el: dict[int, list[float]] = field(default_factory=dict)

    def means(self) -> dict[str, float]:
        """Mean over samples: ``{"ma": ..., "el_10": ...}``; NaN when there are no samples."""
        means = {"ma": _mean(self.ma)}
        for n in sorted(self.el):
            means[f"el_{n}"] = _mean(self.el[n])
        return means

    def per_sample(self) -> list[dict[str, float]]:
        """One ``{"ma": ..., "el_10": ...}`` dict per sample, in input order."""
        rows = []
        for i, ma in enumerate(self.ma):
            row = {"ma": ma}
            for n in sorted(self.el):
                row[f"el_{n}"] = self.el[n][i]
            rows.append(row)
        return rows

    def to_json(self) -> dict:
        return {"mean": self.means(), "samples": self.per_sample()}


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else math.nan


def ngram_overlap(generated: Sequence[int], reference: Sequence[int], n: int) -> float | None:
    """Fraction of the reference's n-grams matched by the generated text.

    Counts the n-grams of ``generated``, with multiplicity, that occur anywhere among the
    n-grams of ``reference``, divided by the number of n-grams of ``reference``. Returns None
    when ``reference`` has no n-gram (fewer than n tokens). With equal lengths, as in EL, the
    value lies in [0, 1].
    """
    _check_ns((n,))
    reference_count = len(reference) - n + 1
    if reference_count <= 0:
        return None
    reference_ngrams = {tuple(reference[i : i + n]) for i in range(reference_count)}
    generated = list(generated)
    hits = sum(
        1 for i in range(len(generated) - n + 1) if tuple(generated[i : i + n]) in reference_ngrams
    )
    return hits / reference_count


def token_accuracy(
    model: torch.nn.Module,
    sequences: Sequence[Sequence[int]],
    *,
    batch_size: int = 8,
    pad_token_id: int = 0,
    device: torch.device | str | None = None,
) -> list[float]:
    """Memorization accuracy (MA) per sample: share of positions whose argmax is the true token."""
    sequences = _check_sequences(sequences)
    check_positive("batch_size", batch_size)
    with evaluating(model):
        predictions = _teacher_forced_predictions(
            model, sequences, batch_size=batch_size, pad_token_id=pad_token_id, device=device
        )
    return [_accuracy(seq, pred) for seq, pred in zip(sequences, predictions)]


def extraction_likelihood(
    model: torch.nn.Module,
    sequences: Sequence[Sequence[int]],
    *,
    ns: Sequence[int] = (10,),
    stride: int = 1,
    batch_size: int = 32,
    pad_token_id: int = 0,
    progress: ProgressCallback | None = None,
) -> dict[int, list[float]]:
    """EL_n per sample for every n in ``ns`` (one generation serves all n); see the module doc.

    ``batch_size`` is the number of prefixes generated together. ``progress(done, total)`` is
    called as generated tokens accumulate.
    """
    sequences = _check_sequences(sequences)
    ns = _check_ns(ns)
    check_positive("EL stride", stride)
    check_positive("batch_size", batch_size)
    with evaluating(model):
        # The teacher-forced pass holds batch x T x vocab logits; a generation-sized batch of a
        # 262k-vocabulary model would need gigabytes, so it uses smaller batches.
        predictions = _teacher_forced_predictions(
            model, sequences, batch_size=min(batch_size, 8), pad_token_id=pad_token_id
        )
        return _extraction_likelihood(
            model, sequences, predictions, ns=ns, stride=stride, batch_size=batch_size,
            pad_token_id=pad_token_id, progress=progress,
        )


def memorization(
    model: torch.nn.Module,
    sequences: Sequence[Sequence[int]],
    *,
    ns: Sequence[int] = (10,),
    el_stride: int = 1,
    batch_size: int = 8,
    pad_token_id: int = 0,
    compute_el: bool = True,
    progress: ProgressCallback | None = None,
    el_batch_size: int = 32,
) -> MemorizationResult:
    """MA and (unless ``compute_el`` is False) EL_n for every n in ``ns``.

    One teacher-forced pass (``batch_size`` samples at a time) gives MA and the greedy
    predictions EL reuses; generation then runs ``el_batch_size`` prefixes at a time, since
    per-token decoding on CPU is much cheaper in larger batches.
    """
    sequences = _check_sequences(sequences)
    ns = _check_ns(ns) if compute_el else ()
    check_positive("EL stride", el_stride)
    check_positive("batch_size", batch_size)
    check_positive("el_batch_size", el_batch_size)
    with evaluating(model):
        predictions = _teacher_forced_predictions(
            model, sequences, batch_size=batch_size, pad_token_id=pad_token_id
        )
        el: dict[int, list[float]] = {}
        if compute_el:
            el = _extraction_likelihood(
                model, sequences, predictions, ns=ns, stride=el_stride, batch_size=el_batch_size,
                pad_token_id=pad_token_id, progress=progress,
            )
    ma = [_accuracy(seq, pred) for seq, pred in zip(sequences, predictions)]
    return MemorizationResult(ma=ma, el=el)


# --- validation ---------------------------------------------------------------------------


def _check_sequences(sequences: Sequence[Sequence[int]]) -> list[list[int]]:
    checked = []
    for index, seq in enumerate(sequences):
        seq = [int(token) for token in seq]
        if len(seq) < 2:
            raise UserError(
                f"sequence {index} has {len(seq)} token(s); memorization metrics need at least 2 "
                "(a prefix and a token to predict). Drop or lengthen it."
            )
        checked.append(seq)
    return checked


def _check_ns(ns: Sequence[int]) -> tuple[int, ...]:
    if isinstance(ns, int):
        ns = (ns,)
    if len(ns) == 0:
        raise UserError("EL needs at least one n-gram size n (for example 10)")
    for n in ns:
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise UserError(f"EL n-gram size must be an integer >= 1, got {n!r}")
    return tuple(sorted(set(ns)))


# --- model plumbing -----------------------------------------------------------------------


def _teacher_forced_predictions(
    model: torch.nn.Module,
    sequences: list[list[int]],
    *,
    batch_size: int,
    pad_token_id: int,
    device: torch.device | str | None = None,
) -> list[list[int]]:
    """For each sample, argmax p(.|x_<t) for t = 1..T-1 (a list of T-1 token ids)."""
    device = torch.device(device) if device is not None else model_device(model)
    predictions: list[list[int]] = [[] for _ in sequences]
    # Similar lengths share a batch, so little compute goes to padding.
    order = sorted(range(len(sequences)), key=lambda i: len(sequences[i]))
    for start in range(0, len(order), batch_size):
        rows = order[start : start + batch_size]
        logits = teacher_forced_logits(
            model, [sequences[i] for i in rows], pad_token_id=pad_token_id, device=device
        )
        # Reduce to argmax at once: batch x T x vocab logits are large for big vocabularies.
        argmax = logits.argmax(dim=-1).cpu()
        del logits
        for row, i in enumerate(rows):
            predictions[i] = argmax[row, : len(sequences[i]) - 1].tolist()
    return predictions


def _accuracy(sequence: list[int], predictions: list[int]) -> float:
    matches = sum(1 for t in range(1, len(sequence)) if predictions[t - 1] == sequence[t])
    return matches / (len(sequence) - 1)


def _extraction_likelihood(
    model: torch.nn.Module,
    sequences: list[list[int]],
    predictions: list[list[int]],
    *,
    ns: tuple[int, ...],
    stride: int,
    batch_size: int,
    pad_token_id: int,
    progress: ProgressCallback | None,
) -> dict[int, list[float]]:
    smallest_n = min(ns)
    # Per sample: scored prefixes t, and for each the first mismatch position m >= t (None if
    # the model predicts every remaining token).
    scored: list[list[tuple[int, int | None]]] = []
    # Generation jobs (sample, m); g_m starts with the known prediction at m, so each job feeds
    # x_<m plus that token and needs T-m-1 more.
    jobs: list[tuple[int, int]] = []
    for i, seq in enumerate(sequences):
        T = len(seq)
        first_mismatch: list[int | None] = [None] * (T + 1)
        for t in range(T - 1, 0, -1):
            first_mismatch[t] = t if predictions[i][t - 1] != seq[t] else first_mismatch[t + 1]
        # Prefixes whose suffix is shorter than every n contribute to no EL_n.
        prefixes = [(t, first_mismatch[t]) for t in range(1, T, stride) if T - t >= smallest_n]
        scored.append(prefixes)
        jobs.extend((i, m) for m in sorted({m for _, m in prefixes if m is not None}))

    def tokens_needed(job: tuple[int, int]) -> int:
        return len(sequences[job[0]]) - job[1] - 1

    continuations: dict[tuple[int, int], list[int]] = {}
    to_generate = [job for job in jobs if tokens_needed(job) > 0]
    for job in jobs:
        if tokens_needed(job) == 0:
            continuations[job] = [predictions[job[0]][job[1] - 1]]
    # Longest first, then by prefix length: rows of a batch need similar numbers of new tokens
    # (the costly part) and similar padding.
    to_generate.sort(key=lambda job: (tokens_needed(job), job[1]), reverse=True)
    on_tokens = token_counter(progress, sum(tokens_needed(job) for job in to_generate))
    for start in range(0, len(to_generate), batch_size):
        batch = to_generate[start : start + batch_size]
        prefixes = [sequences[i][:m] + [predictions[i][m - 1]] for i, m in batch]
        # Greedy: argmax picks every token and end-of-text does not stop it.
        generated = decode(
            model, prefixes, [tokens_needed(job) for job in batch], choose_argmax,
            pad_token_id=pad_token_id, on_tokens=on_tokens,
        )
        for (i, m), tokens in zip(batch, generated):
            continuations[(i, m)] = [predictions[i][m - 1]] + tokens

    el: dict[int, list[float]] = {n: [] for n in ns}
    for i, seq in enumerate(sequences):
        sums = dict.fromkeys(ns, 0.0)
        counts = dict.fromkeys(ns, 0)
        for t, m in scored[i]:
            # The identity: matched tokens up to the first mismatch, then what m generates.
            greedy = seq[t:] if m is None else seq[t:m] + continuations[(i, m)]
            for n in ns:
                overlap = ngram_overlap(greedy, seq[t:], n)
                if overlap is not None:
                    sums[n] += overlap
                    counts[n] += 1
        for n in ns:
            # No prefix with an n-gram (T-n <= 0): EL_n is 0.0 by definition.
            el[n].append(sums[n] / counts[n] if counts[n] else 0.0)
    return el
