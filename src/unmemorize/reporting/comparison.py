"""The comparison's content from finished runs: one row per run, one pooled row per group of
seeds, the "forgotten" verdict against thresholds fixed from the original model, utility at
matched forgetting from the runs' per-epoch curves, and paired differences that say which gaps
are resolved at 95 %. No inference here: everything is read from the runs' results."""

from __future__ import annotations

import math
from dataclasses import dataclass

from .differences import Column, metric_columns, paired_difference, pooled_value, suite_results


@dataclass(frozen=True)
class Finished:
    """A finished row: its run name, its group (the run name without a seed suffix), and its
    results (``eval`` report, optional ``unlearn`` summary)."""

    name: str
    group: str
    method: str
    params: str
    seed: int | None
    result: dict


def _finite(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and not math.isnan(value)


def thresholds_of(original: Finished, el_key: str) -> dict[str, float]:
    """The original model's MA (and EL, when it was measured greedily) on unseen text: Jang et
    al.'s "forgotten" level, the same for every row."""
    reference = suite_results(original.result, "memorization").get("reference", {})
    return {key: reference[key] for key in ("ma", el_key) if _finite(reference.get(key))}


def forgotten(row: dict, thresholds: dict[str, float], el_key: str) -> dict | None:
    """Forgotten when forget MA *and* EL are at or below the original's unseen-text level
    (EL only when both sides have it); ``resolved`` when every interval lies on one side."""
    pairs = [("ma", "forget_ma"), (el_key, f"forget_{el_key}")]
    checks = [(row[col], row.get(f"{col}_ci95"), thresholds[key]) for key, col in pairs
              if key in thresholds and _finite(row.get(col))]
    if not checks:
        return None
    verdict = all(value <= level for value, _, level in checks)
    resolved = all(ci is not None and (ci[1] <= level or ci[0] > level) for _, ci, level in checks)
    return {"forgotten": verdict, "resolved": resolved}


def curve(result: dict) -> list[tuple[float, float]]:
    """(forget MA, unseen-text MA) before training and after each epoch, from a run trained
    with --unseen-every-epoch; empty otherwise."""
    summary = result.get("unlearn") or {}
    before = summary.get("before") or {}
    points = [before] + list(summary.get("epochs") or [])
    return [(p["ma"], p["unseen_ma"]) for p in points if _finite(p.get("ma")) and _finite(p.get("unseen_ma"))]


def at_level(points: list[tuple[float, float]], level: float) -> float | None:
    """The unseen-text MA where the curve first reaches forget MA = ``level``, linear between
    the epochs on either side; None when it never gets there."""
    if points and points[0][0] <= level:  # already there before training
        return points[0][1]
    for (x0, y0), (x1, y1) in zip(points, points[1:]):
        if x0 > level >= x1:
            return y0 + (y1 - y0) * (x0 - level) / (x0 - x1)
    return None


def _row(item: Finished, columns: list[Column], level: float | None) -> dict:
    summary = item.result.get("unlearn") or {}
    row: dict = {"run": item.name, "group": item.group, "seed": item.seed, "method": item.method,
                 "params": item.params}
    for column in columns:
        value, interval = pooled_value(column, [item.result])
        row[column.key], row[f"{column.key}_ci95"] = value, interval
    row["unseen_ma_at_level"] = at_level(curve(item.result), level) if level is not None else None
    row.update(steps=summary.get("steps"), stopped_because=summary.get("stopped_because"),
               train_s=summary.get("wall_time_s"), eval_s=item.result["eval"].get("wall_time_s"))
    return row


def _group_row(name: str, members: list[Finished], columns: list[Column], level: float | None) -> dict:
    row: dict = {"group": name, "method": members[0].method, "params": members[0].params,
                 "seeds": [m.seed for m in members]}
    for column in columns:
        row[column.key], row[f"{column.key}_ci95"] = pooled_value(column, [m.result for m in members])
    matched = [v for v in (at_level(curve(m.result), level) if level is not None else None for m in members)
               if v is not None]
    # Only when every seed got there: an average over the seeds that did would flatter the run.
    row["unseen_ma_at_level"] = sum(matched) / len(matched) if matched and len(matched) == len(members) else None
    # Said only for runs that recorded a curve (trained with --unseen-every-epoch).
    row["reached_level"] = f"{len(matched)} of {len(members)}" if any(curve(m.result) for m in members) else None
    return row


def _differences(columns: list[Column], groups: dict[str, list[Finished]], against: str,
                 skip: str | None = None) -> dict:
    """{group: {column key: paired difference to ``against``}} for every other group but ``skip``."""
    out: dict[str, dict] = {}
    for name, members in groups.items():
        if name in (against, skip):
            continue
        out[name] = {}
        for column in columns:
            found = paired_difference(column, [m.result for m in groups[against]], [m.result for m in members])
            if found is not None:
                out[name][column.key] = found.to_json()
    return out


def build(finished: list[Finished], el_key: str, baseline: str | None) -> dict:
    """Rows, pooled groups, the forgotten verdicts and the paired differences of a comparison.
    ``finished[0]`` is the original model."""
    columns = metric_columns(el_key)
    original = finished[0]
    thresholds = thresholds_of(original, el_key)
    level = thresholds.get("ma")
    rows = [_row(item, columns, level) for item in finished]
    for row in rows:
        row["forgotten"] = forgotten(row, thresholds, el_key)
    grouped: dict[str, list[Finished]] = {}
    for item in finished:
        grouped.setdefault(item.group, []).append(item)
    groups = [_group_row(name, members, columns, level) for name, members in grouped.items()]
    for group in groups:
        group["forgotten"] = forgotten(group, thresholds, el_key)
    differences = {"vs_" + original.group: _differences(columns, grouped, original.group)}
    if baseline and baseline in grouped and baseline != original.group:
        differences["vs_" + baseline] = _differences(columns, grouped, baseline, skip=original.group)
    return {"columns": [c.key for c in columns], "thresholds": thresholds, "rows": rows,
            "groups": groups, "differences": differences,
            "curves": {item.name: curve(item.result) for item in finished[1:] if curve(item.result)}}


# --- comparison.md ---------------------------------------------------------------------------

STOPPED = {
    "memorization below --stop-ma/--stop-el": "reached level",
    "epochs": "epoch budget",
    "max steps": "step budget",
    "inference-time method (no training)": "no training",
}
SETTING_NOTES = {
    "quick": "**Quick setting (a smoke run)**: 20 NLU items per task, 32 generations, no greedy EL. "
             "The intervals are too wide to separate methods; do not draw conclusions from this table.",
    "standard": "Standard setting: every NLU item (HellaSwag: 2,000), 500 generations of 128 tokens, "
                "200 held-out documents, exact greedy EL, 200 unseen reference documents.",
    "custom": "Custom evaluation sizes (see `evals/*.json`, `config`).",
}


def _number(value, digits: int) -> str:
    return "–" if not _finite(value) else f"{value:.{digits}f}"


def _cell(row: dict, column: Column) -> str:
    interval = row.get(f"{column.key}_ci95")
    text = _number(row.get(column.key), column.digits)
    if interval and all(_finite(v) for v in interval):
        text += f" [{interval[0]:.{column.digits}f}, {interval[1]:.{column.digits}f}]"
    return text


def _matched_cell(group: dict) -> str:
    if _finite(group.get("unseen_ma_at_level")):
        return _number(group["unseen_ma_at_level"], 3)
    reached = group.get("reached_level")
    return f"– ({reached} seeds reached the level)" if reached else "–"


def _verdict(found: dict | None) -> str:
    if found is None:
        return "–"
    return ("yes" if found["forgotten"] else "no") + ("" if found["resolved"] else " (unresolved)")


def difference_cell(found: dict | None, column: Column) -> str:
    if found is None:
        return "–"
    low, high = found["ci95"]
    text = f"{found['difference']:+.{column.digits}f} [{low:+.{column.digits}f}, {high:+.{column.digits}f}]"
    return text if found["resolved"] else text + " ≈"


def _table(header: list[str], lines: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"] + \
        ["| " + " | ".join(cell.replace("|", "\\|") for cell in line) + " |" for line in lines]


def group_table(comparison: dict, el_key: str) -> tuple[list[str], list[list[str]]]:
    """(header, rows) of the pooled rows: value [95 % interval] cells, the verdict, matched utility."""
    columns = metric_columns(el_key)
    header = ["run", "method", "settings", "seeds"] + [c.header for c in columns] + \
        ["forgotten", "unseen MA at matched forgetting"]
    body = [[g["group"], g["method"], g["params"] or "–", str(len(g["seeds"]))]
            + [_cell(g, c) for c in columns]
            + [_verdict(g.get("forgotten")), _matched_cell(g)]
            for g in comparison.get("groups") or []]
    return header, body


def comparison_markdown(comparison: dict, el_key: str) -> str:
    """comparison.md: the evaluation setting, one pooled row per run (value [95 % interval]),
    the forgotten verdicts, utility at matched forgetting, and paired differences."""
    columns = metric_columns(el_key)
    thresholds = comparison.get("thresholds") or {}
    lines = [f"# Unlearning comparison: {comparison['model']}", "",
             SETTING_NOTES.get(comparison.get("setting") or "custom", SETTING_NOTES["custom"]), "",
             f"Forget set: `{comparison['forget']}`. Cells: value [95 % interval] (bootstrap over items; "
             "over seeds, the t interval of the seed means, when a row pools several seeds).", ""]
    lines += _table(*group_table(comparison, el_key))
    level = ", ".join(f"{k.upper()} {v:.3f}" for k, v in thresholds.items()) or "not measured"
    lines += ["", f"\"Forgotten\" (Jang et al. 2022): forget MA and EL at or below the original model's level "
              f"on unseen text ({level}), fixed from the original for every row; \"unresolved\": the 95 % "
              "interval straddles the level. \"Unseen MA at matched forgetting\": the run's MA on unseen text "
              "where its per-epoch curve reaches the forgotten level (runs trained with --unseen-every-epoch).", ""]
    for name, table in (comparison.get("differences") or {}).items():
        against = name.removeprefix("vs_")
        lines += [f"## Differences against `{against}` (paired bootstrap on the same items)", "",
                  "≈: the 95 % interval of the difference contains 0 — not resolved.", ""]
        body = [[group] + [difference_cell(values.get(c.key), c) for c in columns]
                for group, values in table.items()]
        lines += _table(["run"] + [c.header for c in columns], body) + [""]
    runs = [[r["run"], str(r["seed"]) if r.get("seed") is not None else "–", str(r.get("steps") or "–"),
             STOPPED.get(r.get("stopped_because"), r.get("stopped_because") or "–"),
             _number(r.get("train_s"), 0), _number(r.get("eval_s"), 0)] for r in comparison["rows"]]
    lines += ["## Runs", ""] + _table(["run", "seed", "steps", "stopped", "train s", "eval s"], runs) + [""]
    if comparison.get("pending"):
        lines += [f"Not run yet: {', '.join(comparison['pending'])}.", ""]
    return "\n".join(lines)
