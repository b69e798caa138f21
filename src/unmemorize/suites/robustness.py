"""The robustness suite: is the forgotten text really gone, or only off the greedy path? Each
attack of `unmemorize.attacks` is applied to the model and the forget set scored again (MA,
extraction, EL_n with --robustness-el); on the first model measured (the original) the same
attacks give the "before" and the attack's effect on a model that never forgot, and on every
later model each attack's **recovery** (`metrics.robustness.recovery`): the share of what
unlearning removed that the attack brings back. Relearning runs on the later models only (the
original has nothing to recover)."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

from ..attacks.prefix import variants
from ..attacks.quantize import quantized_copy
from ..attacks.relearn import RelearnSetting, relearn_curve
from ..attacks.scoring import RECOVERED, ScoreOptions, score, subset
from ..config import EvalConfig
from ..data import load_examples, read_examples, tokenize_examples
from ..errors import UserError
from ..events import Events
from ..metrics.robustness import logit_lens_ma, recovery
from ..models import LoadedModel
from ..paths import data_path
from .base import Shared, Suite
from .memorization import text_start

DEFAULT_RELEARN_RETAIN = "reference/wikitext.csv"


def retain_source(config: EvalConfig) -> str:
    if config.relearn_retain:
        return config.relearn_retain
    path = data_path(DEFAULT_RELEARN_RETAIN)
    if path is None:
        raise UserError(f"relearning on retain text needs --relearn-retain FILE (default {DEFAULT_RELEARN_RETAIN} "
                        "under UNMEMORIZE_DATA or ../shared/data was not found)")
    return str(path)


def missing_inputs(config: EvalConfig) -> list[str]:
    if "relearn" in config.attacks and "retain" in config.relearn_data:
        try:
            retain_source(config)
        except UserError as error:
            return [str(error)]
    return []


@dataclass
class _Target:
    """The model under attack and its forget set."""

    lm: LoadedModel
    config: EvalConfig
    events: Events
    items: list
    sequences: list[list[int]]
    bos: int
    options: ScoreOptions

    def score(self, model, label: str, sequences: list[list[int]] | None = None, **where) -> dict:
        where.setdefault("text_start", self.bos)
        where.setdefault("ma_start", max(1, where["text_start"]))
        return score(model, self.sequences if sequences is None else sequences, self.options,
                     progress=self.events.progress(f"robustness: {label}"), **where)


def _quantize(target: _Target) -> dict:
    found = {}
    for scheme in target.config.quantizations:
        started = time.time()
        quantized, tensors = quantized_copy(target.lm.model, scheme)
        found[scheme] = {"scores": target.score(quantized, scheme), "tensors": tensors}
        del quantized
        found[scheme]["seconds"] = round(time.time() - started, 1)
    return found


def _relearn(target: _Target) -> dict:
    config, tokenizer = target.config, target.lm.tokenizer
    curves = {}
    for data in config.relearn_data:
        if data == "forget-half":
            train, measured = target.items[0::2], list(range(1, len(target.items), 2))
        else:
            documents = load_examples(retain_source(config), limit=config.relearn_retain_limit)
            train, measured = tokenize_examples(documents, tokenizer, config.max_length), list(range(len(target.items)))
        on = [target.sequences[i] for i in measured]
        for mode in config.relearn_modes:
            started = time.time()
            setting = RelearnSetting(lora=mode == "lora", lr=config.relearn_lr if mode == "lora" else config.relearn_full_lr,
                                     batch_size=config.relearn_batch_size, steps=tuple(sorted(config.relearn_steps)),
                                     vocabulary=config.relearn_vocabulary or None, seed=config.seed)
            name = f"{mode}/{data}"
            curve = relearn_curve(target.lm.model, train, setting, tokenizer.pad_token_id,
                                  lambda model, name=name: target.score(model, f"relearn {name}", on), target.events)
            curves[name] = {"curve": curve, "measured": measured, "lr": setting.lr,
                            "batch_size": setting.batch_size, "seconds": round(time.time() - started, 1)}
    return curves


def _prefix(target: _Target) -> dict:
    config = target.config
    found = {}
    for variant in variants(target.items, target.lm.tokenizer, bos=target.bos, prefix=config.extraction_prefix,
                            suffix=config.extraction_suffix, lengths=config.prefix_lengths,
                            shifts=config.prefix_shifts, changes=config.prefix_changes,
                            contexts=config.context_samples, context_tokens=config.context_tokens,
                            max_length=config.max_length):
        found[variant.name] = {"kind": variant.kind, **target.score(
            target.lm.model, variant.name, variant.sequences, text_start=variant.text_start,
            prefix=variant.prefix, suffix=variant.suffix)}
    return found


def _lens(target: _Target) -> dict:
    chosen = target.sequences[: target.config.lens_samples]
    layers = logit_lens_ma(target.lm.model, chosen, pad_token_id=target.lm.tokenizer.pad_token_id,
                           batch_size=target.config.batch_size)
    return {"layers": layers, "samples": len(chosen)}


ATTACK_RUNNERS: dict[str, Callable[[_Target], dict]] = {
    "quantize": _quantize, "prefix": _prefix, "logit-lens": _lens, "relearn": _relearn,
}


def run(lm: LoadedModel, config: EvalConfig, events: Events, shared: Shared) -> dict:
    """The forget set's scores as the model is, then under each attack, with their time; on a
    model after the first, each attack's recovery against the first (the original)."""
    from ..metrics.uncertainty import attach_intervals

    items = tokenize_examples(read_examples(config.forget, config), lm.tokenizer, config.max_length)
    sequences = [list(t.input_ids) for t in items]
    options = ScoreOptions(
        pad_token_id=lm.tokenizer.pad_token_id, prefix=config.extraction_prefix, suffix=config.extraction_suffix,
        el_n=config.el_n[0] if config.robustness_el else None, el_stride=config.el_stride,
        batch_size=config.batch_size, el_batch_size=config.el_batch_size)
    target = _Target(lm, config, events, items, sequences, text_start(lm.tokenizer, sequences), options)
    baseline = shared.robustness
    started = time.time()
    results: dict = {"standard": target.score(lm.model, "as it is"), "attacks": {}, "timings_s": {}}
    results["timings_s"]["standard"] = round(time.time() - started, 1)
    for attack in config.attacks:
        if attack == "relearn" and baseline is None:
            continue  # the original has nothing to recover
        started = time.time()
        results["attacks"][attack] = ATTACK_RUNNERS[attack](target)
        results["timings_s"][attack] = round(time.time() - started, 1)
    if baseline is None:
        shared.robustness = results
        results["role"] = "baseline: the before of every later model's recovery"
    else:
        results["recovery"] = recovery_rows(baseline, results)
        results["recovery_max"] = strongest(results["recovery"])
    attach_intervals(results, measurements(results))
    return results


def _row(attack: str, variant: str, step: int | None, before: dict, after: dict, attacked: dict,
         original_attacked: dict | None, net: bool = True) -> dict:
    values = {m: {"before": before.get(m), "after_unlearning": after.get(m), "after_attack": attacked.get(m),
                  "original_attacked": original_attacked.get(m) if original_attacked else None}
              for m in RECOVERED}
    return {"attack": attack, "variant": variant, "step": step, "values": values,
            "recovery": {m: recovery(v["before"], v["after_unlearning"], v["after_attack"]) for m, v in values.items()},
            "net_recovery": {m: recovery(v["before"], v["after_unlearning"], v["after_attack"], v["original_attacked"])
                             for m, v in values.items()} if original_attacked and net else None}


def recovery_rows(base: dict, own: dict) -> list[dict]:
    """One row per attack setting: before (the original), after unlearning and after the attack,
    and the recovery of MA, EL and extraction; where the original went through the same attack
    (quantization, prompts) also the recovery net of the attack's own effect. The lens's rows
    show the original's MA at the same layer beside them."""
    rows = []
    attacks, base_attacks = own["attacks"], base["attacks"]
    b, o = base["standard"], own["standard"]
    for scheme, found in attacks.get("quantize", {}).items():
        matched = base_attacks.get("quantize", {}).get(scheme, {}).get("scores")
        rows.append(_row("quantize", scheme, None, b, o, found["scores"], matched))
    for name, found in attacks.get("prefix", {}).items():
        rows.append(_row("prefix", name, None, b, o, found, base_attacks.get("prefix", {}).get(name)))
    for name, found in attacks.get("relearn", {}).items():
        b_half, o_half = subset(b["per_sample"], found["measured"]), subset(o["per_sample"], found["measured"])
        rows.extend(_row("relearn", name, point["step"], b_half, o_half, point, None) for point in found["curve"])
    lens, base_lens = attacks.get("logit-lens"), base_attacks.get("logit-lens")
    if lens and base_lens:
        # Reading layer l instead of the output is the attack: its MA against the output's. No
        # net recovery: where neither model's layer predicts the text yet (the early layers),
        # the original's layer-l level would make a gap of 0 read as everything recovered.
        last_b, last_o = {"ma": base_lens["layers"][-1]}, {"ma": lens["layers"][-1]}
        for layer, (ma_b, ma_o) in enumerate(zip(base_lens["layers"][:-1], lens["layers"][:-1]), start=1):
            rows.append(_row("logit-lens", f"layer {layer}", None, last_b, last_o, {"ma": ma_o}, {"ma": ma_b}, net=False))
    return rows


def strongest(rows: list[dict]) -> dict:
    """Per attack and over all, the largest MA recovery (net of the attack's effect on the
    original where measured): how much of the forgetting the strongest setting undoes."""
    best: dict[str, float] = {}
    for row in rows:
        value = (row["net_recovery"] or row["recovery"])["ma"]
        if not math.isnan(value):
            best[row["attack"]] = max(best.get(row["attack"], -math.inf), value)
    return {"ma": {**best, "all": max(best.values()) if best else math.nan}}


def measurements(results: dict) -> dict:
    """Per-sample MA and extraction of every scoring, for intervals and paired comparisons."""
    from ..metrics.uncertainty import Measurement

    found = {}

    def add(path: str, scores: dict) -> None:
        per = scores["per_sample"]
        found[f"{path}.ma"] = Measurement.of_mean(per["ma"])
        exact = [e for e in per["exact"] if e is not None]
        if exact:
            found[f"{path}.extractable"] = Measurement.of_proportion(exact)

    add("standard", results["standard"])
    for scheme, found_q in results["attacks"].get("quantize", {}).items():
        add(f"attacks.quantize.{scheme}.scores", found_q["scores"])
    for name, scores in results["attacks"].get("prefix", {}).items():
        add(f"attacks.prefix.{name}", scores)
    return found


SUITE = Suite("robustness", run, missing_inputs)
