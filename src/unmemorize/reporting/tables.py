"""Tables of results: evaluation JSON flattened to dotted metric keys, rows of models side by
side, the comparison as markdown and CSV."""

from __future__ import annotations

import csv
import io
import math

from ..metrics.uncertainty import Measurement, paired_bootstrap
from .formatting import finite, fmt


def flatten(results: dict, prefix: str = "") -> dict[str, float]:
    """Dotted keys for every number: ``memorization.forget.ma``, ``nlu.piqa.acc_norm``."""
    flat: dict[str, float] = {}
    for key, value in results.items():
        name = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(value, dict):
            flat.update(flatten(value, name))
        elif isinstance(value, bool):
            continue
        elif isinstance(value, (int, float)):
            flat[name] = float(value)
    return flat


# Rows a person reads first; everything else follows in key order.
HEADLINE = (
    "memorization.forget.ma", "memorization.reference.ma", "memorization.forget.el_10",
    "memorization.reference.el_10", "memorization.forget.el_10_undial_code",
    "memorization.extraction.fraction_extractable", "memorization.mia.loss.auc",
    "memorization.mia.zlib.auc", "memorization.mia.min_k.auc", "memorization.mia.min_k_plus_plus.auc",
    "nlu.avg6_lm_eval.acc", "nlg.mauve", "nlg.heldout_ppl", "nlg.gen_ppl", "dialogue.average.f1",
)
SKIPPED_IN_TABLE = ("_stderr", ".n", ".samples", "prefix_tokens", "suffix_tokens", "forget_samples",
                    "undial_el_pairs", "measurements", "intervals", "mauve_clusters", "forgotten.checks",
                    "robustness.")  # the robustness section shows its own table


def comparison_rows(report: dict) -> list[tuple[str, list[float | None]]]:
    """(metric, [value per model]) rows of an evaluation report, headline metrics first."""
    flats = [flatten(report["results"][label]) for label in report["models"]]
    keys = [k for k in flats[-1] if not any(s in k for s in SKIPPED_IN_TABLE)]
    ordered = [k for k in HEADLINE if k in keys] + sorted(k for k in keys if k not in HEADLINE)
    return [(k, [flat.get(k) for flat in flats]) for k in ordered]


def csv_text(rows: list[dict]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: "" if v is None else v for k, v in row.items()})
    return buffer.getvalue()


def _suite_lookup(results: dict, key: str, part: str):
    """``results[suite][part]`` at the metric's path: ``nlu.piqa.acc_norm`` → ``piqa.acc_norm``,
    and ``nlu.avg6_lm_eval.acc`` → ``avg6_lm_eval`` (a metric whose number sits one level down)."""
    suite, _, rest = key.partition(".")
    found = (results.get(suite) or {}).get(part) or {}
    if rest in found:
        return found[rest]
    head = rest.rsplit(".", 1)[0]
    return found.get(head) if head != rest else None


def signed(value: float) -> str:
    return ("+" if finite(value) and value > 0 else "") + fmt(value)


def _with_interval(value: float | None, interval, show=fmt) -> str:
    text = show(value)
    if finite(value) and interval and all(finite(v) for v in interval):
        text += f" [{show(interval[0])}, {show(interval[1])}]"
    return text


def evaluation_cells(report: dict, key: str, values: list[float | None]) -> tuple[list[str], str | None]:
    """One metric row of an evaluation: each model's value with its 95 % interval and, for two
    models, the change with its paired-bootstrap interval on the same items (≈: not resolved)."""
    labels = list(report["models"])
    results = [report["results"][label] for label in labels]
    cells = [_with_interval(v, _suite_lookup(r, key, "intervals")) for v, r in zip(values, results)]
    if len(values) != 2 or any(v is None or math.isnan(v) for v in values):
        return cells, None
    stored = [_suite_lookup(r, key, "measurements") for r in results]
    change = values[1] - values[0]
    if not all(stored):
        return cells, signed(change)
    try:
        paired = paired_bootstrap(*(Measurement.from_json(m) for m in stored))
    except (ValueError, KeyError):  # different items, or an unknown statistic
        return cells, signed(change)
    return cells, _with_interval(change, [paired.low, paired.high], signed) + ("" if paired.resolved else " ≈")
