"""The one line a reader signs off on: was the forget set forgotten, against which level, with
what uncertainty, and at what cost to the rest of the model. Read from a run's metrics, an
evaluation's JSON, comparison.json or demo.json; no inference. Every report opens with it.

Each verdict is ``{"status", "line"}``; status is one of ``STATUSES`` (the report colours it)."""

from __future__ import annotations

from ..metrics.uncertainty import Measurement, bootstrap_interval
from .formatting import finite, fmt, metric_label

STATUSES = ("forgotten", "partly forgotten", "not forgotten", "not assessed", "pass", "fail")
JANG = "the original model's level (Jang et al. 2022)"


def _interval(samples: list[dict], key: str) -> tuple[float, float] | None:
    values = [s[key] for s in samples if finite(s.get(key))]
    return bootstrap_interval(Measurement.of_mean(values)) if len(values) > 1 else None


def _evidence(checks: list[dict]) -> str:
    """``forget-set MA 0.300 [0.250, 0.350] ≤ 0.400 on unseen text; ...`` from checks of
    ``{metric, value, ci95, level, forgotten, resolved}``."""
    return "; ".join(
        f"forget-set {metric_label(c['metric'])} {fmt(c['value'])}"
        + (f" [{fmt(c['ci95'][0])}, {fmt(c['ci95'][1])}]" if c["ci95"] else "")
        + (" ≤ " if c["forgotten"] else " > ") + f"{fmt(c['level'])} on unseen text"
        + ("" if c["resolved"] else " (the interval straddles the level)")
        for c in checks)


def _status(checks: list[dict]) -> str:
    return "forgotten" if all(c["forgotten"] for c in checks) else "not forgotten"


def unlearning_verdict(metrics: dict, evaluation: dict | None = None) -> dict:
    """``{"status": "forgotten" | "not forgotten" | "not assessed", "checks": [...], "line": str}``.

    Jang et al. (2022): forgotten when the forget set's mean MA (and EL, when both sides have
    it) is at or below the level on unseen text, the level measured on the ORIGINAL model when
    the run started (``--stop-ma auto``/``--stop-el auto`` record it); when the run recorded no
    level, the checks of its evaluation beside the original (``eval --original``, ``--eval``).
    ``resolved`` says whether the 95 % bootstrap interval of the forget set's mean lies on one
    side of the level."""
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
    source = JANG
    if not checks and evaluation and "original" in (evaluation.get("models") or {}):
        # No level recorded by the run, but its evaluation beside the original judged it.
        memorization = (evaluation["results"].get("unlearned") or {}).get("memorization") or {}
        checks, source = _suite_checks(memorization), f"{JANG}, measured by the evaluation"
    if not checks:
        status = "not assessed"
        evidence = ("no unseen-text level was measured, so nothing says whether the forget set is "
                    "forgotten (train with --stop-ma auto, or run `unmemorize eval --original`)")
    else:
        status = _status(checks)
        evidence = f"{_evidence(checks)}, {source}"
    return {"status": status, "checks": checks,
            "line": f"{status.capitalize()}: {evidence}. Utility cost: {utility_cost(evaluation)}."}


def _suite_checks(memorization: dict) -> list[dict]:
    """The memorization suite's ``forgotten`` checks (suites.memorization.forgotten_verdict) in
    the form ``_evidence`` reads."""
    found = (memorization.get("forgotten") or {}).get("checks") or {}
    return [{"metric": key, "value": c["value"], "level": c["threshold"],
             "ci95": c["ci95"] if all(finite(v) for v in c.get("ci95") or [None]) else None,
             "forgotten": c["forgotten"], "resolved": c["resolved"]} for key, c in found.items()]


def evaluation_verdict(report: dict) -> dict:
    """``{"status", "line"}`` of an evaluation (``unmemorize eval`` JSON). Judged against the
    ORIGINAL model's unseen-text level (Jang et al. 2022): the memorization suite of each model
    beside the original stores ``forgotten`` with its checks against the level the original
    fixed (suites.memorization.forgotten_verdict). Without an original the level would be the
    model's own, which unlearning moves too, so nothing is judged: "not assessed"."""
    labels = list(report.get("models") or {})
    judged = [label for label in labels if label != "original"]
    memorization = {label: (report["results"].get(label) or {}).get("memorization") for label in judged}
    why = None
    if "original" not in labels or not judged:
        why = ("no original model was evaluated beside this one, so there is no level the forget set "
               "could be judged against (run `unmemorize eval --model M --original BASE`)")
    elif not all(memorization.values()):
        why = "the evaluation ran no memorization suite (add memorization to --suites)"
    parts, statuses = [], []
    for label in judged if why is None else []:
        checks = _suite_checks(memorization[label])
        if not checks:
            why = "no MA or EL was measured on both the forget set and unseen text"
            break
        statuses.append(_status(checks))
        parts.append((f"{label}: " if len(judged) > 1 else "") + _evidence(checks))
    if why is not None:
        return {"status": "not assessed", "line": f"Not assessed: {why}. Utility cost: {utility_cost(report)}."}
    status = statuses[0] if len(set(statuses)) == 1 else "partly forgotten"
    return {"status": status,
            "line": f"{status.capitalize()}: {'; '.join(parts)}, {JANG}. Utility cost: {utility_cost(report)}."}


# The comparison's utility columns the verdict names (reporting.differences.metric_columns keys).
UTILITY_COLUMNS = (("heldout_ppl", "held-out perplexity"), ("nlu_avg", "NLU average"))


def comparison_verdict(comparison: dict) -> dict:
    """``{"status", "line"}`` of comparison.json: for each method row (pooled over its seeds),
    forgotten or not against the ORIGINAL model's unseen-text level (``thresholds``, fixed from
    the first row, the original: Jang et al. 2022), "unresolved" when the row's 95 % interval
    straddles the level; and its utility cost, the paired difference to the original on the
    same items of held-out perplexity and the NLU average, "≈" when its 95 % interval holds 0
    (so no gap is claimed that the numbers do not resolve)."""
    from .comparison import difference_cell
    from .differences import metric_columns

    groups = comparison.get("groups") or []
    thresholds = {k: v for k, v in (comparison.get("thresholds") or {}).items() if finite(v)}
    rows = [g for g in groups[1:] if isinstance(g, dict)]
    if not groups or not rows or not thresholds:
        why = ("no method row was judged against the original model's unseen-text level "
               "(comparison.json lacks the pooled rows or the original's level)")
        return {"status": "not assessed", "line": f"Not assessed: {why}."}
    columns = {c.key: c for c in metric_columns("el_10")}
    against = (comparison.get("differences") or {}).get(f"vs_{groups[0]['group']}") or {}
    parts, forgotten = [], []
    for row in rows:
        found = row.get("forgotten")
        forgotten.append(bool(found and found["forgotten"]))
        judged = ("not judged" if not found else ("forgotten" if found["forgotten"] else "not forgotten")
                  + ("" if found["resolved"] else " (unresolved)"))
        costs = [f"{label} {difference_cell(against[row['group']][key], columns[key])}"
                 for key, label in UTILITY_COLUMNS if key in against.get(row["group"], {})]
        parts.append(f"{row['group']} {judged}, " + (", ".join(costs) if costs else "utility cost not measured"))
    count = sum(forgotten)
    status = "forgotten" if count == len(rows) else "not forgotten" if count == 0 else "partly forgotten"
    level = ", ".join(f"{metric_label(k)} {fmt(v)}" for k, v in thresholds.items())
    return {"status": status,
            "line": f"{count} of {len(rows)} methods forgotten against the original model's unseen-text level "
                    f"({level}; Jang et al. 2022); utility cost as the paired change from the original "
                    f"(≈: not resolved at 95 %): {'; '.join(parts)}."}


def demo_verdict(demo: dict) -> dict:
    """``{"status", "line"}`` of demo.json: the verdict the demo recipe wrote (``verdict``),
    else PASS or FAIL from its ``passed``."""
    passed = demo.get("passed")
    status = "pass" if passed else "fail" if passed is not None else "not assessed"
    line = demo.get("verdict") or {"pass": "PASS", "fail": "FAIL"}.get(status, "Not assessed: demo.json has no verdict.")
    return {"status": status, "line": str(line)}


def scan_verdict(scan: dict) -> dict:
    """``{"status", "line"}`` of scan.json: how many windows of the corpus the model reproduces
    beyond unseen text at the scan's false-positive rate (or explicit threshold), and how many
    the extraction attack reproduced verbatim."""
    threshold = scan.get("threshold") or {}
    rule = (f"{scan.get('score')} above {fmt(threshold.get('threshold'))}" if threshold.get("explicit") else
            f"{scan.get('score')} beyond unseen text at a false-positive rate of {fmt(threshold.get('fpr'))}")
    flagged = scan.get("flagged") or 0
    status = "memorized text found" if flagged else "nothing flagged"
    return {"status": status, "line": (
        f"{status.capitalize()}: {flagged} of {scan.get('windows')} windows ({scan.get('documents')} documents) "
        f"flagged by {rule}; {scan.get('extracted')} reproduced verbatim by the extraction attack. "
        "Flagged windows are in forget.jsonl.")}


def utility_cost(evaluation: dict | None) -> str:
    """Δ held-out perplexity and Δ NLU average from an evaluation beside the original, or "not
    measured"; each with the paired change on the same items and its 95 % interval when the
    evaluation kept the per-item values (≈: not resolved)."""
    from .tables import evaluation_cells

    if not evaluation or set(evaluation.get("models") or {}) != {"original", "unlearned"}:
        return "not measured (run `unmemorize eval --model OUT --original BASE`, or `unlearn --eval`)"
    results = evaluation["results"]
    parts = []
    for suite, key, label in (("nlg", "heldout_ppl", "held-out perplexity"), ("nlu", "avg6_lm_eval", "NLU average")):
        values = [(results[m].get(suite) or {}).get(key) for m in ("original", "unlearned")]
        values = [v.get("acc") if isinstance(v, dict) else v for v in values]
        if all(finite(v) for v in values):
            dotted = f"{suite}.{key}" + (".acc" if suite == "nlu" else "")
            _, change = evaluation_cells(evaluation, dotted, [float(v) for v in values])
            paired = f" (paired change {change})" if change and "[" in change else ""
            parts.append(f"{label} {fmt(values[0])} → {fmt(values[1])}{paired}")
    return ", ".join(parts) if parts else "not measured (the evaluation ran neither NLU nor NLG)"
