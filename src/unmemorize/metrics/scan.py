"""Finding memorized windows in a corpus: every window's scores from one teacher-forced pass,
a flag threshold calibrated on unseen text at a chosen false-positive rate, and the extraction
attack on the highest-scoring candidates.

The scores are those of :mod:`unmemorize.metrics.privacy` (loss, zlib, min-k%, min-k%++; each
oriented so that higher = more likely memorized) and MA of :mod:`unmemorize.metrics.memorization`,
computed by :func:`unmemorize.metrics.privacy.memorization_report`; nothing is recomputed here.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from unmemorize.errors import UserError
from unmemorize.metrics.privacy import MIA_METRICS, memorization_report

SCORES = ("ma", *MIA_METRICS)


def window_scores(
    model: torch.nn.Module,
    sequences: Sequence[Sequence[int]],
    texts: Sequence[str],
    *,
    k_percent: float = 20.0,
    batch_size: int = 8,
    pad_token_id: int = 0,
) -> list[dict[str, float]]:
    """Per window, MA and the membership scores of
    :func:`unmemorize.metrics.privacy.membership_scores`, from one teacher-forced pass
    (:func:`unmemorize.metrics.privacy.memorization_report` without EL)."""
    result = memorization_report(model, sequences, texts, compute_el=False, batch_size=batch_size,
                                 pad_token_id=pad_token_id, k_percent=k_percent)
    return [{"ma": ma, **{name: result.membership[name][i] for name in MIA_METRICS}}
            for i, ma in enumerate(result.ma)]


def reference_threshold(reference_scores: Sequence[float], fpr: float) -> dict:
    """The flag threshold at false-positive rate ``fpr`` on scores of text the model never saw:
    with the n reference scores sorted from the highest, s_(1) >= ... >= s_(n), and
    k = floor(fpr * n), the threshold is s_(k+1) and a window is flagged when its score is
    *above* it, so at most k reference windows (a share <= fpr) would be flagged — the
    calibration of "TPR at low FPR" of Carlini et al. (2022), "Membership Inference Attacks From
    First Principles", with the reference's empirical distribution standing in for the
    non-members'. When fpr * n < 1 no reference window may lie above it: the threshold is the
    reference's maximum and the reached rate is 0 (``resolvable`` is False: the reference is too
    small to measure that rate).

    Returns ``{"threshold", "fpr", "allowed", "reference", "reference_above"}``."""
    values = [float(v) for v in reference_scores if not math.isnan(v)]
    if not values:
        raise UserError("the reference gave no score: it needs at least one window of 2 tokens or more")
    if not 0 < fpr < 1:
        raise UserError(f"--fpr must be in (0, 1), not {fpr}")
    ordered = sorted(values, reverse=True)
    allowed = math.floor(fpr * len(ordered))
    threshold = ordered[min(allowed, len(ordered) - 1)]
    return {"threshold": threshold, "fpr": fpr, "allowed": allowed, "reference": len(ordered),
            "reference_above": sum(1 for v in ordered if v > threshold), "resolvable": allowed >= 1}


def extraction_attack(
    model: torch.nn.Module,
    sequences: Sequence[Sequence[int]],
    *,
    prefix_tokens: int,
    suffix_tokens: int,
    text_start: int,
    batch_size: int = 8,
    pad_token_id: int = 0,
) -> tuple[list[dict | None], list[list[int]]]:
    """The extraction attack of :func:`unmemorize.metrics.privacy.extractable` on each window
    (None for a window shorter than prefix + suffix text tokens), and each window's greedy
    teacher-forced predictions (which tokens the model reproduces), from one pass of
    :func:`unmemorize.metrics.privacy.memorization_report`."""
    result = memorization_report(model, sequences, compute_el=False, batch_size=batch_size,
                                 pad_token_id=pad_token_id, extraction=(prefix_tokens, suffix_tokens),
                                 text_start=text_start)
    attacks: list[dict | None] = [None] * len(sequences)
    for sample in result.extraction["samples"]:
        attacks[sample["index"]] = {key: sample[key] for key in ("exact", "longest_prefix_match", "longest_run")}
    return attacks, result.predictions
