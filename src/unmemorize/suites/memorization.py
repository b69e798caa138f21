"""The memorization suite: how much of the forget set a model still gives away, against text it
never saw — MA and EL_n (Jang et al. 2022), EL_n as the paper's code samples it, the extraction
attack (Carlini et al.) and membership inference (loss, zlib, min-k%, min-k%++)."""

from __future__ import annotations

import math
from typing import Any

from ..config import DEFAULT_REFERENCE, EvalConfig
from ..data import load_examples, read_examples, tokenize_examples
from ..errors import UserError
from ..events import Events
from ..models import LoadedModel
from ..paths import data_path
from .base import Shared, Suite


def reference_source(config: EvalConfig) -> str:
    if config.reference:
        return config.reference
    path = data_path(DEFAULT_REFERENCE)
    if path is None:
        raise UserError(
            f"the memorization suite needs unseen reference text: pass --reference FILE "
            f"(default {DEFAULT_REFERENCE} under UNMEMORIZE_DATA or ../shared/data was not found)"
        )
    return str(path)


def missing_inputs(config: EvalConfig) -> list[str]:
    try:
        reference_source(config)
    except UserError as error:
        return [str(error)]
    return []


def _extraction_summary(extraction: dict, config: EvalConfig) -> dict:
    samples = extraction["samples"]

    def mean(key: str) -> float:
        # Every sample may be shorter than the prefix: nothing to attack, reported as NaN.
        return sum(s[key] for s in samples) / len(samples) if samples else math.nan

    return {
        "fraction_extractable": extraction["fraction_extractable"],
        "mean_longest_prefix_match": mean("longest_prefix_match"),
        "mean_longest_run": mean("longest_run"),
        "skipped_short": len(extraction.get("skipped", [])),
        "prefix_tokens": config.extraction_prefix,
        "suffix_tokens": config.extraction_suffix,
    }


def run(lm: LoadedModel, config: EvalConfig, events: Events, shared: Shared) -> dict:
    """MA and EL of the forget set and of unseen text, membership scores of both, and on the
    forget set the extraction attack and the paper-code EL, each set from one teacher-forced pass
    whose keys and values every continuation reuses (metrics.privacy.memorization_report)."""
    from ..metrics.privacy import memorization_report, mia_summary

    forget = tokenize_examples(read_examples(config.forget, config), lm.tokenizer, config.max_length)
    reference_examples = load_examples(reference_source(config), limit=config.reference_limit or len(forget))
    reference = tokenize_examples(reference_examples, lm.tokenizer, config.max_length)
    common = dict(ns=config.el_n, el_stride=config.el_stride, compute_el=config.greedy_el,
                  batch_size=config.batch_size, el_batch_size=config.el_batch_size,
                  pad_token_id=lm.tokenizer.pad_token_id, k_percent=config.mia_k_percent)
    paper = {"n": config.el_n[0], "seed": config.seed, "limit": config.paper_el_limit} if config.paper_el else None
    measured = {
        "forget": memorization_report(
            lm.model, [t.input_ids for t in forget], [t.example.text for t in forget], **common,
            extraction=(config.extraction_prefix, config.extraction_suffix), paper_el=paper,
            progress=events.progress("memorization and attacks on the forget set")),
        "reference": memorization_report(
            lm.model, [t.input_ids for t in reference], [t.example.text for t in reference], **common,
            progress=events.progress("memorization on unseen text")),
    }
    results: dict[str, Any] = {}
    for name, items in (("forget", forget), ("reference", reference)):
        results[name] = {**measured[name].means(), "samples": len(items)}
    results["forget_samples"] = measured["forget"].per_sample()
    # Jang et al.: the reference level is what "forgotten" means; report the gap to it.
    results["forgotten"] = {key: results["forget"][key] <= results["reference"][key]
                            for key in results["forget"] if key != "samples"}
    if paper is not None:
        values = measured["forget"].paper_el
        results["forget"][f"el_{config.el_n[0]}_paper_code"] = sum(values) / len(values)
        results["paper_el_samples"] = len(values)
    results["extraction"] = _extraction_summary(measured["forget"].extraction, config)
    results["mia"] = mia_summary(measured["forget"].membership, measured["reference"].membership)
    return results


SUITE = Suite("memorization", run, missing_inputs)
