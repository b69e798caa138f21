"""The memorization suite: how much of the forget set a model still gives away, against text it
never saw — MA and EL_n (Jang et al. 2022), EL_n as the UNDIAL paper's code samples it, the
extraction attack (Carlini et al.) and membership inference (loss, zlib, min-k%, min-k%++) —
each with a 95 % interval and the per-sample values a paired comparison needs."""

from __future__ import annotations

import math
from typing import Any

from ..config import DEFAULT_REFERENCE, EvalConfig
from ..data import load_examples, read_examples, tokenize_examples
from ..errors import UserError
from ..metrics.decoding import stop_token_ids
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


def text_start(tokenizer, sequences: list[list[int]]) -> int:
    """How many leading tokens are the tokenizer's (BOS), not the text's: 1 when every sequence
    starts with the BOS token, else 0."""
    bos = getattr(tokenizer, "bos_token_id", None)
    return int(bos is not None and bool(sequences) and all(s[0] == bos for s in sequences))


def _extraction_summary(extraction: dict) -> dict:
    samples = extraction["samples"]

    def mean(key: str) -> float:
        # Every sample may be too short for the attack: nothing scored, reported as NaN.
        return sum(s[key] for s in samples) / len(samples) if samples else math.nan

    return {
        "fraction_extractable": extraction["fraction_extractable"],
        "extracted": sum(s["exact"] for s in samples),
        "scored": len(samples),
        "skipped_short": len(extraction["skipped"]),
        "mean_longest_prefix_match": mean("longest_prefix_match"),
        "mean_longest_run": mean("longest_run"),
        "prefix_tokens": extraction["prefix_tokens"],
        "suffix_tokens": extraction["suffix_tokens"],
    }


def _undial_options(lm: LoadedModel, config: EvalConfig) -> dict | None:
    if not config.undial_el:
        return None
    tokenizer = lm.tokenizer

    def recode(tokens: list[int]) -> list[int]:
        # The authors' code decodes generations and targets (skipping special tokens) and
        # tokenizes them again with the tokenizer's defaults (BOS too, where it adds one).
        text = tokenizer.decode(tokens, skip_special_tokens=True)
        return list(tokenizer(text)["input_ids"])

    return {"n": config.el_n[0], "seed": config.seed, "limit": config.undial_el_limit,
            "stop_token_ids": stop_token_ids(lm.model, tokenizer), "recode": recode,
            "batch_size": config.el_batch_size}


def _measure(lm: LoadedModel, config: EvalConfig, events: Events) -> tuple[dict, dict]:
    """The forget set's and the reference's reports (metrics.privacy.memorization_report)."""
    from ..metrics.privacy import memorization_report

    tokenizer = lm.tokenizer
    forget = tokenize_examples(read_examples(config.forget, config), tokenizer, config.max_length)
    reference_examples = load_examples(reference_source(config), limit=config.reference_limit or len(forget))
    reference = tokenize_examples(reference_examples, tokenizer, config.max_length)
    common = dict(ns=config.el_n, el_stride=config.el_stride, compute_el=config.greedy_el,
                  batch_size=config.batch_size, el_batch_size=config.el_batch_size,
                  pad_token_id=tokenizer.pad_token_id, k_percent=config.mia_k_percent)
    reports = {}
    for name, items in (("forget", forget), ("reference", reference)):
        sequences = [t.input_ids for t in items]
        start = text_start(tokenizer, sequences)
        # zlib compresses the text of exactly the tokens scored: targets x_1..x_T-1 (truncation
        # included; x_0, BOS or not, is never a target).
        texts = [tokenizer.decode(s[1:], skip_special_tokens=True) for s in sequences]
        extras = {}
        if name == "forget":
            extras = dict(extraction=(config.extraction_prefix, config.extraction_suffix),
                          text_start=start, undial_el=_undial_options(lm, config))
        reports[name] = memorization_report(
            lm.model, sequences, texts, **common, **extras,
            progress=events.progress(f"memorization on the {name} set" if name == "forget" else
                                     "memorization on unseen text"))
    return reports, {"forget": len(forget), "reference": len(reference)}


def run(lm: LoadedModel, config: EvalConfig, events: Events, shared: Shared) -> dict:
    """MA and EL of the forget set and of unseen text, membership scores of both, and on the
    forget set the extraction attack and the UNDIAL-code EL, each set from one teacher-forced
    pass whose keys and values every continuation reuses."""
    from ..metrics.privacy import mia_summary, undial_mean
    from ..metrics.uncertainty import Measurement, attach_intervals

    reports, counts = _measure(lm, config, events)
    forget, reference = reports["forget"], reports["reference"]
    results: dict[str, Any] = {name: {**reports[name].means(), "samples": counts[name]} for name in reports}
    results["forget_samples"] = forget.per_sample()
    measurements = {f"{name}.{key}": Measurement.of_mean(values)
                    for name in reports
                    for key, values in [("ma", reports[name].ma)]
                    + [(f"el_{n}", v) for n, v in sorted(reports[name].el.items())]}
    if forget.undial_el is not None:
        key = f"el_{config.el_n[0]}_undial_code"
        results["forget"][key] = undial_mean(forget.undial_el)
        results["undial_el_pairs"] = sum(len(cuts) for cuts in forget.undial_el)
        measurements[f"forget.{key}"] = Measurement(
            "ratio", {"documents": [[sum(c), len(c)] for c in forget.undial_el if c]})
    results["extraction"] = _extraction_summary(forget.extraction)
    measurements["extraction.fraction_extractable"] = Measurement.of_proportion(
        [s["exact"] for s in forget.extraction["samples"]])
    results["mia"] = mia_summary(forget.membership, reference.membership)
    for score in results["mia"]:
        measurements[f"mia.{score}.auc"] = Measurement(
            "auc", {"member": forget.membership[score], "nonmember": reference.membership[score]})
    attach_intervals(results, measurements)
    results["forgotten"] = forgotten_verdict(results, shared)
    return results


def forgotten_verdict(results: dict, shared: Shared) -> dict:
    """Jang et al. (2022): a forget set is forgotten when its MA *and* EL_n are at or below the
    model's level on unseen text. The level is fixed from the first model measured in this
    evaluation — the original when there is one (``eval --original``) — so a method that also
    damages unseen text does not move its own goalpost. EL joins the test when it was measured.
    ``resolved`` says whether the forget set's 95 % interval lies wholly on one side."""
    own = {key: value for key, value in results["reference"].items() if key != "samples"}
    if shared.thresholds is None:
        shared.thresholds = dict(own)
    thresholds = {key: shared.thresholds[key] for key in own if key in shared.thresholds}
    checks = {}
    for key, level in thresholds.items():
        value = results["forget"].get(key)
        if value is None or math.isnan(value):
            continue
        low, high = results["intervals"].get(f"forget.{key}", [math.nan, math.nan])
        checks[key] = {"value": value, "threshold": level, "ci95": [low, high],
                       "forgotten": value <= level, "resolved": high <= level or low > level}
    return {"forgotten": bool(checks) and all(c["forgotten"] for c in checks.values()),
            "checks": checks,
            "thresholds_from": "the first model of this evaluation (the original when --original is given)"}


SUITE = Suite("memorization", run, missing_inputs)
