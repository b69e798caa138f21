"""What every attack measures on the forget set: MA, EL_n (optional: greedy decoding is the slow
part on a CPU) and the extraction attack, from one teacher-forced pass
(`metrics.privacy.memorization_report`), with the per-sample values a subset needs."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from ..metrics.privacy import memorization_report

# The metrics recovery is computed for, in the order tables show them.
RECOVERED = ("ma", "el", "extractable")


@dataclass(frozen=True)
class ScoreOptions:
    pad_token_id: int
    prefix: int = 50  # extraction: prompt and suffix tokens (text tokens, BOS not counted)
    suffix: int = 50
    el_n: int | None = None  # None: no greedy EL
    el_stride: int = 1
    batch_size: int = 8
    el_batch_size: int = 128


def score(model: torch.nn.Module, sequences: Sequence[Sequence[int]], options: ScoreOptions, *,
          text_start: int = 0, prefix: int | None = None, suffix: int | None = None,
          ma_start: int = 1, progress=None) -> dict:
    """MA (targets from ``ma_start`` on), EL_n when asked, and the extraction attack with its
    prompt starting after ``text_start`` tokens, per sample and as means."""
    report = memorization_report(
        model, sequences, ns=(options.el_n,) if options.el_n else (10,), el_stride=options.el_stride,
        compute_el=options.el_n is not None, batch_size=options.batch_size,
        el_batch_size=options.el_batch_size, pad_token_id=options.pad_token_id,
        extraction=(prefix or options.prefix, suffix or options.suffix), text_start=text_start,
        ma_start=ma_start, progress=progress)
    exact = {s["index"]: bool(s["exact"]) for s in report.extraction["samples"]}
    per_sample = {"ma": list(report.ma), "el": list(report.el.get(options.el_n, [])),
                  "exact": [exact.get(i) for i in range(len(report.ma))]}
    return {**subset(per_sample, range(len(report.ma))), "per_sample": per_sample,
            "prefix_tokens": report.extraction["prefix_tokens"],
            "suffix_tokens": report.extraction["suffix_tokens"]}


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else math.nan


def subset(per_sample: dict, indices) -> dict:
    """The means of the samples at ``indices``: MA, EL (NaN when not measured) and the share of
    the scored ones (long enough for the attack) extracted exactly."""
    indices = list(indices)
    exact = [per_sample["exact"][i] for i in indices if per_sample["exact"][i] is not None]
    return {"ma": _mean([per_sample["ma"][i] for i in indices]),
            "el": _mean([per_sample["el"][i] for i in indices]) if per_sample["el"] else math.nan,
            "extractable": _mean([float(e) for e in exact]), "extracted": sum(exact),
            "scored": len(exact), "samples": len(indices)}
