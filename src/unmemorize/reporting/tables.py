"""Tables of results: evaluation JSON flattened to dotted metric keys, rows of models side by
side, the comparison as markdown and CSV."""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

from .formatting import metric_label


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
    "memorization.reference.el_10", "memorization.forget.el_10_paper_code",
    "memorization.extraction.fraction_extractable", "memorization.mia.loss.auc",
    "memorization.mia.zlib.auc", "memorization.mia.min_k.auc", "memorization.mia.min_k_plus_plus.auc",
    "nlu.paper_avg.acc", "nlg.mauve", "nlg.heldout_ppl", "nlg.gen_ppl", "dialogue.average.f1",
)
SKIPPED_IN_TABLE = ("_stderr", ".n", ".samples", "prefix_tokens", "suffix_tokens", "forget_samples", "paper_el_samples")


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


def _cell(value: Any, digits: int = 3) -> str:
    if value is None:
        return "–"
    if isinstance(value, bool) or isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value).replace("|", "\\|")


# (row key, header, decimals)
COMPARISON_COLUMNS = [
    ("run", "run", 0), ("method", "method", 0), ("params", "settings", 0),
    ("forget_ma", "forget MA ↓", 3), ("forget_EL", "forget EL ↓", 3), ("reference_ma", "unseen MA", 3),
    ("extractable", "extractable ↓", 3), ("mia_loss_auc", "MIA loss AUC →0.5", 3),
    ("nlu_avg", "NLU avg ↑", 3), ("mauve", "MAUVE ↑", 3), ("heldout_ppl", "held-out ppl ↓", 2),
    ("gen_ppl", "gen ppl", 2), ("steps", "steps", 0), ("stopped_because", "stopped", 0),
    ("train_s", "train s", 0), ("eval_s", "eval s", 0),
]

# Short forms of why training stopped, for the table (the JSON keeps the full text).
STOPPED = {
    "memorization below --stop-ma/--stop-el": "reached level",
    "epochs": "epoch budget",
    "max steps": "step budget",
    "inference-time method (no training)": "no training",
}


def comparison_markdown(comparison: dict, el_key: str) -> str:
    """comparison.md: one row per model, and what the columns mean."""
    rows = comparison["rows"]
    el_label = metric_label(el_key.removesuffix("_paper_code"))
    el_label += " (paper code)" if el_key.endswith("_paper_code") else ""
    columns = [(f"forget_{el_key}", f"forget {el_label} ↓", d) if key == "forget_EL"
               else (key, header, d) for key, header, d in COMPARISON_COLUMNS]
    lines = [
        f"# Unlearning comparison: {comparison['model']}",
        "",
        f"Forget set: `{Path(str(comparison['forget'])).name}`. Every row is evaluated with the same suites; "
        "perplexity of generations is judged by the original model.",
        "",
        "| " + " | ".join(header for _, header, _ in columns) + " |",
        "|" + "|".join("---" if d == 0 and key in ("run", "method", "params", "stopped_because") else "---:"
                       for key, _, d in columns) + "|",
    ]
    for row in rows:
        row = {**row, "stopped_because": STOPPED.get(row["stopped_because"], row["stopped_because"])}
        lines.append("| " + " | ".join(
            _cell(round(row[key]) if d == 0 and isinstance(row.get(key), float) else row.get(key), d)
            for key, _, d in columns) + " |")
    level = comparison.get("forgotten_level_ma")
    lines += [
        "",
        f"The original model's MA on unseen text is {_cell(level)}: Jang et al.'s \"forgotten\" level "
        "(forget MA at or below it; \"reached level\": training stopped there). ↓/↑: lower/higher is "
        "better; MIA AUC near 0.5 means membership no longer shows. Plot: `tradeoff.png` (data in "
        "`tradeoff.csv`).",
        "",
    ]
    if comparison.get("pending"):
        lines += [f"Not run yet: {', '.join(comparison['pending'])}.", ""]
    return "\n".join(lines)
