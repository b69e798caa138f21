"""`unmemorize eval`: how much of the forget set a model still leaks (memorization and privacy
attacks), and how much ability it kept (NLU, generation, dialogue).

`run_eval` measures one model, or an unlearned model beside the original it came from, with the
suites of `unmemorize.suites`, and returns nested results keyed by suite, task and metric
(``memorization.forget.ma``, ``nlu.piqa.acc_norm``, ``nlg.mauve``...) with each suite's wall time."""

from __future__ import annotations

import time
from typing import Any

from ..config import EvalConfig, as_json
from ..events import Events
from ..models import default_device, load_model
from ..suites import Shared, check_inputs, get_suites


def _load(name: str, config: EvalConfig, device: str, events: Events):
    return load_model(name, device=device, allow_pickle=config.allow_pickle,
                      trust_remote_code=config.trust_remote_code, progress=events.message)


def run_eval(config: EvalConfig, events: Events | None = None, thresholds: dict | None = None,
             robustness: dict | None = None) -> dict:
    """Evaluate ``config.model`` (and ``config.original`` beside it) on the chosen suites.
    ``thresholds`` (MA/EL on unseen text, e.g. the original's from an earlier evaluation) is
    the "forgotten" level, and ``robustness`` (the original's robustness results) the before of
    every recovery; without them the first model evaluated here sets them."""
    events = events or Events()
    suites = get_suites(config.suites)
    check_inputs(config)
    started = time.time()
    device = config.device or default_device()
    labels = {"model": config.model}
    if config.original:
        labels = {"original": config.original, "unlearned": config.model}
    loaded = {label: _load(name, config, device, events) for label, name in labels.items()}
    # The judge of generation perplexity is the original model when there is one.
    judge = loaded.get("original", next(iter(loaded.values())))
    if config.judge and any(s.needs_encoder for s in suites):
        same = [label for label, name in labels.items() if name == config.judge]
        judge = loaded[same[0]] if same else _load(config.judge, config, device, events)
    shared = Shared(judge=judge, thresholds=dict(thresholds) if thresholds else None, robustness=robustness)
    if any(s.needs_encoder for s in suites):
        from ..metrics.nlg import load_encoder

        shared.encoder = load_encoder()  # a missing package fails now, not after other suites
    results: dict[str, Any] = {label: {} for label in labels}
    timings: dict[str, dict[str, float]] = {label: {} for label in labels}
    for label, lm in loaded.items():
        for suite in suites:
            events.message(f"{suite.name} suite on {labels[label]}")
            suite_started = time.time()
            results[label][suite.name] = suite.run(lm, config, events, shared)
            timings[label][suite.name] = round(time.time() - suite_started, 1)
    return {
        "config": as_json(config),
        "models": labels,
        "judge": config.judge or labels.get("original", config.model),
        "device": device,
        "results": results,
        "timings_s": timings,
        "wall_time_s": round(time.time() - started, 1),
    }
