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
ending at a mismatch are generated. Their prefixes are never recomputed either: the
teacher-forced pass keeps each sample's keys and values, and every continuation starts from the
first m positions of them (:func:`unmemorize.metrics.decoding.decode_from_states`); continuations
of all samples share decoding batches.

Membership scores, the extraction attack and the sampled paper-code EL can come from the same
teacher-forced pass and continuations: see :func:`unmemorize.metrics.privacy.memorization_report`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
import torch

from unmemorize.errors import UserError
from unmemorize.metrics.decoding import (
    ModelParts,
    PrefixState,
    ProgressCallback,
    check_positive,
    choose_argmax,
    decode,
    decode_from_states,
    evaluating,
    forward_hidden,
    greedy_tokens,
    model_device,
    split_model,
    teacher_forced_logits,
    token_counter,
)

# Positions per output-layer call in teacher-forced passes: bounds the [positions, V] logits
# (128 x 262k floats = 134 MB for Gemma-3). A shorter tail is merged into the previous slice: a
# product of very few rows takes another CPU kernel, whose rounding differs.
_LOGIT_POSITIONS = 128
_GREEDY_POSITIONS = 256
_MIN_POSITIONS = 32


@dataclass
class MemorizationResult:
    """Per-sample MA and EL_n; ``el`` maps n to one value per sample (empty when EL was skipped).

    Filled only by :func:`unmemorize.metrics.privacy.memorization_report`: ``membership`` (score
    name -> one value per sample), ``extraction`` (an ``extractable`` report) and ``undial_el``
    (per sample scored, the score of each cut). ``means``, ``per_sample`` and ``to_json`` report MA and EL.
    """

    ma: list[float]
    el: dict[int, list[float]] = field(default_factory=dict)
    membership: dict[str, list[float]] | None = None
    extraction: dict | None = None
    undial_el: list[list[float]] | None = None
    # The greedy teacher-forced predictions argmax p(.|x_<t), t = 1..T-1, per sample.
    predictions: list[list[int]] | None = None

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
        if device is not None and torch.device(device) != model_device(model):
            predictions = _teacher_forced_predictions(
                model, sequences, batch_size=batch_size, pad_token_id=pad_token_id, device=device
            )
        else:
            predictions = teacher_forced_pass(
                model, sequences, batch_size=batch_size, pad_token_id=pad_token_id
            ).predictions
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
    return memorization(
        model, sequences, ns=ns, el_stride=stride, batch_size=min(batch_size, 8),
        el_batch_size=batch_size, pad_token_id=pad_token_id, progress=progress,
    ).el


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

    One teacher-forced pass (``batch_size`` samples at a time) gives MA, the greedy predictions
    EL reuses and each sample's keys and values; generation then runs ``el_batch_size``
    continuations at a time, since per-token decoding on CPU is much cheaper in larger batches.
    """
    sequences = _check_sequences(sequences)
    ns = _check_ns(ns) if compute_el else ()
    check_positive("EL stride", el_stride)
    check_positive("batch_size", batch_size)
    check_positive("el_batch_size", el_batch_size)
    with evaluating(model):
        prepared = teacher_forced_pass(
            model, sequences, batch_size=batch_size, pad_token_id=pad_token_id, keep_states=compute_el
        )
        result = MemorizationResult(ma=[_accuracy(s, p) for s, p in zip(sequences, prepared.predictions)])
        if compute_el:
            first = first_mismatches(sequences, prepared.predictions)
            requests: dict[tuple[int, int], int] = {}
            scored = el_requests(sequences, first, ns, el_stride, requests)
            continuations = greedy_continuations(
                model, sequences, prepared, requests, batch_size=el_batch_size,
                pad_token_id=pad_token_id, on_tokens=token_counter(progress, requested_tokens(requests)),
            )
            result.el = el_values(sequences, scored, continuations, ns)
    return result


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


# --- the teacher-forced pass --------------------------------------------------------------


# (logits [P, V], targets [P]) -> per-position statistics, each a tensor of P values.
Statistics = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, ...]]


@dataclass
class TeacherForced:
    """What one teacher-forced pass over samples gives, per sample: the greedy predictions
    argmax p(.|x_<t) for t = 1..T-1, its keys and values (``states``, when kept and the model
    splits; see :func:`unmemorize.metrics.decoding.forward_hidden`) and the statistics asked
    for (one tuple of T-1-value tensors)."""

    predictions: list[list[int]]
    states: list[PrefixState] | None = None
    statistics: list[tuple[torch.Tensor, ...]] | None = None
    parts: ModelParts | None = None


def teacher_forced_pass(
    model: torch.nn.Module,
    sequences: list[list[int]],
    *,
    batch_size: int,
    pad_token_id: int,
    keep_states: bool = False,
    statistics: Statistics | None = None,
) -> TeacherForced:
    """One pass per batch of ``batch_size`` samples (similar lengths together, right padded).

    The output layer runs on the samples' real positions only, a slice at a time, so no batch x
    T x vocabulary logits are held. With ``statistics``, full fp32 logits feed it (targets: the
    true next tokens) and their argmax gives the predictions; without, :func:`greedy_tokens`
    gives the same argmax more cheaply. A model :func:`split_model` does not know takes the
    whole model's logits."""
    parts = split_model(model)
    predictions: list[list[int]] = [[] for _ in sequences]
    states: list[PrefixState] | None = [[] for _ in sequences] if keep_states and parts else None
    stats: list[tuple[torch.Tensor, ...]] | None = [() for _ in sequences] if statistics else None
    order = sorted(range(len(sequences)), key=lambda i: len(sequences[i]))
    for start in range(0, len(order), batch_size):
        rows = order[start : start + batch_size]
        batch = [sequences[i] for i in rows]
        if parts is None:
            flat_predictions, flat_stats = _whole_model_pass(model, batch, pad_token_id, statistics)
        else:
            hidden, batch_states = forward_hidden(
                parts, batch, pad_token_id=pad_token_id, keep_states=states is not None
            )
            # Logits at positions 0..T-2 predict targets x_1..x_{T-1}; later ones see padding.
            flat = torch.cat([hidden[row, : len(seq) - 1] for row, seq in enumerate(batch)])
            del hidden
            flat_predictions, flat_stats = _position_pass(parts, flat, batch, statistics)
        offset = 0
        for row, i in enumerate(rows):
            count = len(sequences[i]) - 1
            predictions[i] = flat_predictions[offset : offset + count].tolist()
            if stats is not None:
                stats[i] = tuple(values[offset : offset + count] for values in flat_stats)
            if states is not None:
                states[i] = batch_states[row]
            offset += count
    return TeacherForced(predictions, states, stats, parts)


def _slices(total: int, size: int) -> list[tuple[int, int]]:
    """[start, end) slices of ``size`` covering ``total``; a tail shorter than _MIN_POSITIONS
    joins the slice before it."""
    bounds = list(range(0, total, size)) + [total]
    if len(bounds) > 2 and bounds[-1] - bounds[-2] < _MIN_POSITIONS:
        del bounds[-2]
    return list(zip(bounds[:-1], bounds[1:]))


def _position_pass(
    parts: ModelParts, flat: torch.Tensor, batch: list[list[int]], statistics: Statistics | None
) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
    """Argmax (and the statistics) at every position of ``flat`` ([positions, H])."""
    if statistics is None:
        pieces = [greedy_tokens(parts, flat[a:b]) for a, b in _slices(len(flat), _GREEDY_POSITIONS)]
        return torch.cat(pieces).cpu(), ()
    targets = torch.tensor([t for seq in batch for t in seq[1:]], device=flat.device)
    argmax, collected = [], []
    for start, end in _slices(len(flat), _LOGIT_POSITIONS):
        logits = parts.logits(flat[start:end])
        argmax.append(logits.argmax(dim=-1).cpu())
        collected.append(statistics(logits, targets[start:end]))
        del logits
    return torch.cat(argmax), tuple(torch.cat(values) for values in zip(*collected))


def _whole_model_pass(
    model: torch.nn.Module, batch: list[list[int]], pad_token_id: int, statistics: Statistics | None
) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
    """:func:`_position_pass` from the whole model's logits, for models :func:`split_model`
    does not know (and stand-ins without a decoder)."""
    logits = teacher_forced_logits(
        model, batch, pad_token_id=pad_token_id, device=model_device(model)
    )
    argmax = logits.argmax(dim=-1).cpu()
    predictions = torch.cat([argmax[row, : len(seq) - 1] for row, seq in enumerate(batch)])
    if statistics is None:
        return predictions, ()
    collected = []
    for row, seq in enumerate(batch):
        targets = torch.tensor(seq[1:], device=logits.device)
        for start in range(0, len(targets), _LOGIT_POSITIONS):
            end = min(start + _LOGIT_POSITIONS, len(targets))
            collected.append(statistics(logits[row, start:end], targets[start:end]))
    return predictions, tuple(torch.cat(values) for values in zip(*collected))


def _teacher_forced_predictions(
    model: torch.nn.Module,
    sequences: list[list[int]],
    *,
    batch_size: int,
    pad_token_id: int,
    device: torch.device | str | None = None,
) -> list[list[int]]:
    """Predictions from the whole model's logits on ``device``."""
    device = torch.device(device) if device is not None else model_device(model)
    predictions: list[list[int]] = [[] for _ in sequences]
    order = sorted(range(len(sequences)), key=lambda i: len(sequences[i]))
    for start in range(0, len(order), batch_size):
        rows = order[start : start + batch_size]
        logits = teacher_forced_logits(
            model, [sequences[i] for i in rows], pad_token_id=pad_token_id, device=device
        )
        argmax = logits.argmax(dim=-1).cpu()
        del logits
        for row, i in enumerate(rows):
            predictions[i] = argmax[row, : len(sequences[i]) - 1].tolist()
    return predictions


def _accuracy(sequence: list[int], predictions: list[int], start: int = 1) -> float:
    """MA over the targets t = start..T−1 (start > 1: text after a context is scored alone)."""
    matches = sum(1 for t in range(start, len(sequence)) if predictions[t - 1] == sequence[t])
    return matches / max(len(sequence) - start, 1)


# --- continuations ------------------------------------------------------------------------


def first_mismatches(sequences: list[list[int]], predictions: list[list[int]]) -> list[list[int | None]]:
    """Per sample and t (index 0..T), the first position m >= t whose prediction is not x_m,
    or None when the model predicts every remaining token."""
    result = []
    for sequence, predicted in zip(sequences, predictions):
        first: list[int | None] = [None] * (len(sequence) + 1)
        for t in range(len(sequence) - 1, 0, -1):
            first[t] = t if predicted[t - 1] != sequence[t] else first[t + 1]
        result.append(first)
    return result


def requested_tokens(requests: dict[tuple[int, int], int]) -> int:
    """Tokens :func:`greedy_continuations` generates for ``requests`` (p_m itself is known)."""
    return sum(length - 1 for length in requests.values() if length > 1)


def greedy_continuations(
    model: torch.nn.Module,
    sequences: list[list[int]],
    prepared: TeacherForced,
    requests: dict[tuple[int, int], int],
    *,
    batch_size: int,
    pad_token_id: int,
    on_tokens=None,
) -> dict[tuple[int, int], list[int]]:
    """For each request (sample i, mismatch position m) -> length L: the first L tokens of the
    greedy continuation of x_<m, which start with the known prediction p_m.

    Longest first, then by prefix length, so rows of a batch need similar numbers of new tokens
    (the costly part) and similar padding. Continuations start from the kept keys and values
    when there are some (continuously batched, ``batch_size`` rows); otherwise each prefix is
    decoded from scratch, ``batch_size`` at a time."""
    predictions = prepared.predictions
    continuations = {job: [predictions[job[0]][job[1] - 1]] for job in requests}
    jobs = sorted((job for job in requests if requests[job] > 1),
                  key=lambda job: (requests[job], job[1]), reverse=True)
    if prepared.states is not None and jobs:
        generated = decode_from_states(
            prepared.parts, [prepared.states[i] for i, _ in jobs], [m for _, m in jobs],
            [predictions[i][m - 1] for i, m in jobs], [requests[job] - 1 for job in jobs], None,
            batch_size=batch_size, pad_token_id=pad_token_id, on_tokens=on_tokens,
        )
        for job, tokens in zip(jobs, generated):
            continuations[job].extend(tokens)
        return continuations
    for start in range(0, len(jobs), batch_size):
        batch = jobs[start : start + batch_size]
        # Greedy: argmax picks every token and end-of-text does not stop it.
        generated = decode(
            model, [sequences[i][:m] + [predictions[i][m - 1]] for i, m in batch],
            [requests[job] - 1 for job in batch], choose_argmax, pad_token_id=pad_token_id,
            on_tokens=on_tokens,
        )
        for job, tokens in zip(batch, generated):
            continuations[job].extend(tokens)
    return continuations


def el_requests(
    sequences: list[list[int]],
    first: list[list[int | None]],
    ns: tuple[int, ...],
    stride: int,
    requests: dict[tuple[int, int], int],
) -> list[list[tuple[int, int | None]]]:
    """Per sample, the EL-scored prefixes t with their first mismatch m; adds the continuations
    they need (g_m, T-m tokens) to ``requests``."""
    smallest_n = min(ns)
    scored = []
    for i, seq in enumerate(sequences):
        T = len(seq)
        # Prefixes whose suffix is shorter than every n contribute to no EL_n.
        prefixes = [(t, first[i][t]) for t in range(1, T, stride) if T - t >= smallest_n]
        scored.append(prefixes)
        for _, m in prefixes:
            if m is not None:
                requests[(i, m)] = max(requests.get((i, m), 0), T - m)
    return scored


def el_values(
    sequences: list[list[int]],
    scored: list[list[tuple[int, int | None]]],
    continuations: dict[tuple[int, int], list[int]],
    ns: tuple[int, ...],
) -> dict[int, list[float]]:
    """EL_n per sample from the scored prefixes and the continuations they need."""
    el: dict[int, list[float]] = {n: [] for n in ns}
    for i, seq in enumerate(sequences):
        sums = dict.fromkeys(ns, 0.0)
        counts = dict.fromkeys(ns, 0)
        for t, m in scored[i]:
            # The identity: matched tokens up to the first mismatch, then what m generates.
            greedy = seq[t:] if m is None else seq[t:m] + continuations[(i, m)][: len(seq) - m]
            for n in ns:
                overlap = ngram_overlap(greedy, seq[t:], n)
                if overlap is not None:
                    sums[n] += overlap
                    counts[n] += 1
        for n in ns:
            # No prefix with an n-gram (T-n <= 0): EL_n is 0.0 by definition.
            el[n].append(sums[n] / counts[n] if counts[n] else 0.0)
    return el
