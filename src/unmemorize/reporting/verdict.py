"""The one line a reader signs off on: was the forget set forgotten, against which level, with
what uncertainty, and at what cost to the rest of the model. Read from a run's metrics (and its
evaluation, when there is one); no inference."""

from __future__ import annotations

from ..metrics.uncertainty import Measurement, bootstrap_interval
from .formatting import finite, fmt


def _interval(samples: list[dict], key: str) -> tuple[float, float] | None:
    values = [s[key] for s in samples if finite(s.get(key))]
    return bootstrap_interval(Measurement.of_mean(values)) if len(values) > 1 else None


def unlearning_verdict(metrics: dict, evaluation: dict | None = None) -> dict:
    """``{"status": "forgotten" | "not forgotten" | "not assessed", "checks": [...], "line": str}``.

    Jang et al. (2022): forgotten when the forget set's mean MA (and EL, when both sides have
    it) is at or below the level on unseen text, the level measured on the ORIGINAL model when
    the run started (``--stop-ma auto``/``--stop-el auto`` record it). ``resolved`` says whether
    the 95 % bootstrap interval of the forget set's mean lies on one side of the level."""
    after = metrics.get("after") or {}
    levels = {k: v for k, v in (metrics.get("reference_levels") or {}).items() if k in (after.get("mean") or {})
              and finite(v)}
    checks = []
    for key, level in levels.items():
        value = after["mean"][key]
        interval = _interval(after.get("samples") or [], key)
        resolved = interval is not None and (interval[1] <= level or interval[0] > level)
        checks.append({"metric": key, "value": value, "ci95": interval, "level": level,
                       "forgotten": value <= level, "resolved": resolved})
    if not checks:
        status = "not assessed"
        evidence = ("no unseen-text level was measured, so nothing says whether the forget set is "
                    "forgotten (train with --stop-ma auto, or run `unmemorize eval --original`)")
    else:
        status = "forgotten" if all(c["forgotten"] for c in checks) else "not forgotten"
        evidence = "; ".join(
            f"forget-set {c['metric'].upper().replace('_', '-')} {fmt(c['value'])}"
            + (f" [{fmt(c['ci95'][0])}, {fmt(c['ci95'][1])}]" if c["ci95"] else "")
            + (" ≤ " if c["forgotten"] else " > ") + f"{fmt(c['level'])} on unseen text"
            + ("" if c["resolved"] else " (the interval straddles the level)")
            for c in checks)
        evidence += ", the original model's level (Jang et al. 2022)"
    return {"status": status, "checks": checks,
            "line": f"{status.capitalize()}: {evidence}. Utility cost: {utility_cost(evaluation)}."}


def utility_cost(evaluation: dict | None) -> str:
    """Δ held-out perplexity and Δ NLU average from an evaluation beside the original, or "not
    measured"."""
    if not evaluation or set(evaluation.get("models") or {}) != {"original", "unlearned"}:
        return "not measured (run `unmemorize eval --model OUT --original BASE`, or `unlearn --eval`)"
    results = evaluation["results"]
    parts = []
    for suite, key, label in (("nlg", "heldout_ppl", "held-out perplexity"), ("nlu", "avg6_lm_eval", "NLU average")):
        values = [(results[m].get(suite) or {}).get(key) for m in ("original", "unlearned")]
        values = [v.get("acc") if isinstance(v, dict) else v for v in values]
        if all(finite(v) for v in values):
            parts.append(f"{label} {fmt(values[0])} → {fmt(values[1])}")
    return ", ".join(parts) if parts else "not measured (the evaluation ran neither NLU nor NLG)"
