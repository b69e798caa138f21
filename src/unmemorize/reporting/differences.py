"""The comparison's numbers with their uncertainty: each row's value and 95 % interval, and
paired differences between rows measured on the same items (see metrics.uncertainty).

A column is a metric at a path of an evaluation's results: ``suite`` and ``path`` inside the
suite, where the suite's ``intervals[path]`` and ``measurements[path]`` live, and ``value_key``
when the number sits one level further down (``avg6_lm_eval`` → ``avg6_lm_eval.acc``).
Runs of several seeds are pooled: the value is the mean over seeds, the interval the t
interval of the seed means (the spread a reader should expect from rerunning), and a paired
difference compares the seed-averaged statistics on the same resampled items."""

from __future__ import annotations

import math
from dataclasses import dataclass

from ..metrics.uncertainty import Measurement, PairedDifference, paired_bootstrap
from .formatting import metric_label

# Student's t 97.5 % quantiles for 1..30 degrees of freedom; the normal's 1.96 beyond.
_T_975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179,
          2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064,
          2.060, 2.056, 2.052, 2.048, 2.045, 2.042)


@dataclass(frozen=True)
class Column:
    key: str  # the row's key in comparison.json/csv
    header: str
    suite: str
    path: str
    value_key: str | None = None
    lower_is_better: bool | None = None  # None: neither (e.g. the unseen-text level)
    digits: int = 3
    share: bool = True  # a number in [0, 1]: a t interval over seeds is clipped to it

    def value(self, suite_results: dict) -> float | None:
        node: object = suite_results
        for part in self.path.split(".") + ([self.value_key] if self.value_key else []):
            node = node.get(part) if isinstance(node, dict) else None
        return float(node) if isinstance(node, (int, float)) and not isinstance(node, bool) else None

    def interval(self, suite_results: dict) -> list[float] | None:
        found = (suite_results.get("intervals") or {}).get(self.path)
        return list(found) if found else None

    def measurement(self, suite_results: dict) -> Measurement | None:
        found = (suite_results.get("measurements") or {}).get(self.path)
        return Measurement.from_json(found) if found else None


def metric_columns(el_key: str) -> list[Column]:
    """The comparison's metric columns; ``el_key`` is the EL the table shows (exact greedy
    ``el_10`` when measured, else the UNDIAL-code ``el_10_undial_code``)."""
    base = metric_label(el_key.removesuffix("_undial_code"))
    el_header = f"forget {base} (UNDIAL code) ↓" if el_key.endswith("_undial_code") else f"forget {base} ↓"
    return [
        Column("forget_ma", "forget MA ↓", "memorization", "forget.ma", lower_is_better=True),
        Column(f"forget_{el_key}", el_header, "memorization", f"forget.{el_key}", lower_is_better=True),
        Column("reference_ma", "unseen MA", "memorization", "reference.ma"),
        Column("extractable", "extractable ↓", "memorization", "extraction.fraction_extractable",
               lower_is_better=True),
        Column("mia_loss_auc", "MIA loss AUC →0.5", "memorization", "mia.loss.auc"),
        Column("nlu_avg", "NLU avg6 (lm-eval) ↑", "nlu", "avg6_lm_eval", value_key="acc", lower_is_better=False),
        Column("mauve", "MAUVE ↑", "nlg", "mauve", lower_is_better=False),
        Column("heldout_ppl", "held-out ppl ↓", "nlg", "heldout_ppl", lower_is_better=True, digits=2, share=False),
        Column("gen_ppl", "gen ppl", "nlg", "gen_ppl", digits=2, share=False),
        # The strongest attack's MA recovery (robustness suite; net of its effect on the original).
        Column("ma_recovery", "MA recovery under attack ↓", "robustness", "recovery_max.ma.all",
               lower_is_better=True, share=False),
    ]


def suite_results(result: dict, suite: str) -> dict:
    """One row's results of ``suite`` (the evaluated model's; compare evaluates one per row)."""
    models = result["eval"]["results"]
    return next(iter(models.values())).get(suite) or {}


def _finite(value: float | None) -> bool:
    return value is not None and not math.isnan(value)


def pooled_value(column: Column, results: list[dict]) -> tuple[float | None, list[float] | None]:
    """The value and 95 % interval of a row made of one or more seeds' results."""
    values = [column.value(suite_results(r, column.suite)) for r in results]
    values = [v for v in values if _finite(v)]
    if not values:
        return None, None
    if len(results) == 1:
        return values[0], column.interval(suite_results(results[0], column.suite))
    mean = sum(values) / len(values)
    if len(values) < 2:
        return mean, None
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))
    t = _T_975[len(values) - 2] if len(values) - 2 < len(_T_975) else 1.96
    half = t * sd / math.sqrt(len(values))
    low, high = mean - half, mean + half
    return mean, [max(low, 0.0), min(high, 1.0)] if column.share else [low, high]


def paired_difference(column: Column, baseline: list[dict], other: list[dict]) -> PairedDifference | None:
    """other − baseline on the same items, by the paired bootstrap; None when either side lacks
    per-item values or they were measured on different items."""
    sides = []
    for results in (baseline, other):
        found = [column.measurement(suite_results(r, column.suite)) for r in results]
        if not found or any(m is None for m in found):
            return None
        sides.append(found)
    try:
        return paired_bootstrap(sides[0], sides[1])
    except ValueError:  # measured on different items
        return None
