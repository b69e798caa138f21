"""Reports of every run: ``report.md`` and a self-contained ``report.html`` (figures inlined as
data URIs, CSS inline, a Content-Security-Policy that forbids any request), plus a model card
(``README.md``) in each unlearned model directory.

A report is rendered from the files a run leaves in its directory, so ``unmemorize report DIR``
can re-render it at any time:

- ``metrics.json`` + ``unlearn_config.json`` (+ ``samples.json``, ``eval.json``): an unlearning run;
- ``eval.json`` (or another JSON written by ``unmemorize eval --json``): an evaluation;
- ``comparison.json`` (+ ``tradeoff.png``, ``tradeoff.csv``): a comparison of methods;
- ``demo.json``: the end-to-end demo;
- ``scan.json``: a scan of a corpus for memorized windows.

Forget-set text is sensitive. Unless a run was asked for it (``--show-text``), no text of the
forget set is stored in the run directory: ``samples.json`` holds, for a few forget prefixes,
only which greedily generated tokens equal the memorized next token, before and after
unlearning, and the report shows those as match masks (█ = reproduced, · = not). With
``--show-text`` the run stores the decoded text and the report shows it with the reproduced
tokens highlighted. The model card never shows text: counts and SHA-256 hashes only."""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path
from typing import Any, Sequence

import jinja2

from .. import __version__
from ..errors import UserError
from ..paths import relative_to, write_atomic
from .formatting import finite, fmt, gib, md_text, metric_label
from .tables import signed
from .verdict import comparison_verdict, demo_verdict, evaluation_verdict, scan_verdict, unlearning_verdict

REPORT_MD, REPORT_HTML, MODEL_CARD = "report.md", "report.html", "README.md"
ASSETS_DIR = "report_files"  # the PNGs report.md links to (report.html inlines them)
SAMPLES_FILE = "samples.json"
MATCH, MISS = "█", "·"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# The verdict line's colour (text and bar) by status; no other rule of the page uses these.
VERDICT_COLORS = {"forgotten": "#0e6655", "pass": "#0e6655", "not forgotten": "#943126", "fail": "#943126",
                  "partly forgotten": "#7e5109", "not assessed": "#7e5109", "memorized text found": "#943126",
                  "nothing flagged": "#0e6655"}
# A fall-back scan for an evaluation JSON under another name reads no file larger than this
# (a model directory's tokenizer.json is tens of MB).
_MAX_SCANNED_JSON = 5 * 2**20


# --- reading a run directory -------------------------------------------------------------


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise UserError(f"cannot read {path}: {error}") from None


def _is_eval_report(data: Any) -> bool:
    return isinstance(data, dict) and isinstance(data.get("models"), dict) and isinstance(data.get("results"), dict)


def _find_eval_json(run_dir: Path) -> Path | None:
    """``eval.json``, else (a directory that holds no unlearned model) a JSON written by
    ``unmemorize eval --json`` under another name."""
    if (run_dir / "eval.json").is_file():
        return run_dir / "eval.json"
    if (run_dir / "metrics.json").exists():
        return None
    for path in sorted(run_dir.glob("*.json")):
        if path.name in ("comparison.json", "demo.json", SAMPLES_FILE) or path.stat().st_size > _MAX_SCANNED_JSON:
            continue
        try:
            if _is_eval_report(json.loads(path.read_text(encoding="utf-8"))):
                return path
        except (OSError, ValueError):
            continue
    return None


def _segments(pieces: Sequence[str], match: Sequence[int]) -> list[tuple[str, bool]]:
    """Consecutive pieces merged by whether they were reproduced: [(text, highlighted)]."""
    merged: list[tuple[str, bool]] = []
    for piece, hit in zip(pieces, match):
        if merged and merged[-1][1] == bool(hit):
            merged[-1] = (merged[-1][0] + piece, bool(hit))
        else:
            merged.append((piece, bool(hit)))
    return merged


def _highlight(text: str, values: Sequence[str]) -> list[tuple[str, bool]]:
    """``text`` cut into segments, those equal to one of ``values`` highlighted."""
    values = sorted({v for v in values if v}, key=len, reverse=True)
    if not values:
        return [(text, False)]
    pattern = re.compile("|".join(re.escape(v) for v in values))
    segments, start = [], 0
    for found in pattern.finditer(text):
        if found.start() > start:
            segments.append((text[start : found.start()], False))
        segments.append((found.group(), True))
        start = found.end()
    if start < len(text):
        segments.append((text[start:], False))
    return segments


class _Figures:
    """PNGs of one report: inlined as data URIs in the HTML, linked as files from the markdown."""

    def __init__(self) -> None:
        self.items: dict[str, dict] = {}

    def add(self, name: str, title: str, png: bytes) -> dict:
        if not png.startswith(PNG_SIGNATURE):
            raise ValueError(f"figure {name} is not a PNG")
        figure = {
            "name": name, "title": title, "png": png, "file": f"{ASSETS_DIR}/{name}.png",
            "data_uri": "data:image/png;base64," + base64.b64encode(png).decode("ascii"),
        }
        self.items[name] = figure
        return figure


# --- sections ------------------------------------------------------------------------------


def _threshold_levels(thresholds: dict | None, keys: Sequence[str]) -> dict:
    """metrics.json keeps thresholds as {"ma": .., "el": ..}; the EL one is for the first EL_n."""
    thresholds = thresholds or {}
    first_el = next((k for k in keys if k.startswith("el_")), None)
    levels = {"ma": thresholds.get("ma")}
    if first_el is not None:
        levels[first_el] = thresholds.get("el")
    return {k: v for k, v in levels.items() if finite(v)}


def _continuations_context(samples: dict | None, show_text: bool) -> dict:
    if samples is None:
        return {"available": False}
    stored = bool(samples.get("text_stored"))
    shown = show_text and stored
    rows = []
    for sample in samples.get("samples", []):
        outputs = []
        for label in ("before", "after"):
            record = sample.get(label)
            if record is None:
                outputs.append({"label": label, "missing": True})
                continue
            match = record.get("match", [])
            outputs.append({
                "label": label, "missing": False, "matched": record.get("matched", sum(match)),
                "total": len(match), "longest_run": record.get("longest_run"),
                "mask": "".join(MATCH if hit else MISS for hit in match),
                "segments": _segments(record["pieces"], match) if shown and "pieces" in record else None,
            })
        rows.append({
            "id": sample.get("id"), "prefix_tokens": sample.get("prefix_tokens"),
            "continuation_tokens": sample.get("continuation_tokens"), "outputs": outputs,
            "prefix": sample.get("prefix") if shown else None,
            "truth": "".join(sample.get("truth", [])) if shown else None,
        })
    if shown:
        notice = ("Forget-set text shown (--show-text). Generated tokens equal to the memorized next "
                  "token are highlighted.")
    elif stored:
        notice = ("Forget-set text redacted: █ marks a generated token equal to the memorized next token, "
                  "· any other. This run stored the text; re-render with `unmemorize report DIR --show-text` "
                  "to show it.")
    else:
        notice = ("Forget-set text redacted: █ marks a generated token equal to the memorized next token, "
                  "· any other. No forget-set text is stored in this directory; rerun the unlearning with "
                  "--show-text to store and show it.")
    if show_text and not stored:
        notice += " (--show-text can only show text a run stored.)"
    return {"available": True, "shown": shown, "notice": notice, "rows": rows,
            "new_tokens": samples.get("new_tokens"), "prefix_rule": samples.get("prefix")}


def _front_matter(u: dict, origin: dict, title: str) -> str:
    """The card's YAML metadata: Hugging Face reads base_model, license, tags and model-index."""
    import yaml

    meta: dict = {"library_name": "transformers", "pipeline_tag": "text-generation"}
    if origin["base_model"]:
        meta["base_model"] = origin["base_model"]
    # Derived weights carry the base model's licence (Gemma's terms, for instance).
    meta["license"] = origin["license"] or "other"
    meta["tags"] = ["unmemorize", "unlearning", "machine-unlearning", u["method"]]
    results = _model_index(u)
    if results:
        meta["model-index"] = [{"name": title, "results": [{
            "task": {"type": "text-generation", "name": "Unlearning (memorization of the forget set)"},
            "dataset": {"type": "forget-set", "name": f"forget set ({len(u['rows'])} sequences)"},
            "metrics": results}]}]
    return yaml.safe_dump(meta, sort_keys=False, allow_unicode=True)


def _model_index(u: dict) -> list[dict]:
    """``model-index`` metrics of the card's front matter: the forget set's memorization before
    and after, and the unseen-text level (Hugging Face's model-index schema)."""
    metrics = []
    for key in u["metric_keys"]:
        name = key.upper().replace("_", "-")
        for when in ("before", "after"):
            value = u["means"][when].get(key)
            if finite(value):
                metrics.append({"type": key, "name": f"forget-set {name} {when} unlearning", "value": round(value, 4)})
        if finite(u["reference"].get(key)):
            metrics.append({"type": key, "name": f"{name} on unseen text (the forgotten level)",
                            "value": round(u["reference"][key], 4)})
    return metrics


def _sample_intervals(before: list[dict], after: list[dict], keys: list[str]) -> dict:
    """Per metric: the 95 % bootstrap interval of the mean before and after, and the paired
    interval of the change (the same samples, in the same order, before and after)."""
    from ..metrics.uncertainty import Measurement, bootstrap_interval, paired_bootstrap

    out: dict = {"before": {}, "after": {}, "change": {}}
    for key in keys:
        columns = [[s[key] for s in side if finite(s.get(key))] for side in (before, after)]
        for name, values in zip(("before", "after"), columns):
            if len(values) > 1:
                out[name][key] = bootstrap_interval(Measurement.of_mean(values))
        if len(columns[0]) == len(columns[1]) == len(before) == len(after) > 1:
            paired = paired_bootstrap(Measurement.of_mean(columns[0]), Measurement.of_mean(columns[1]))
            out["change"][key] = {"value": paired.difference, "low": paired.low, "high": paired.high,
                                  "resolved": paired.resolved}
    return out


def _unlearn_context(metrics: dict, config: dict, samples: dict | None, figures: _Figures | None,
                     show_text: bool) -> dict:
    """An unlearning run from its metrics.json, unlearn_config.json and samples.json; figures
    are drawn only when ``figures`` collects them (the model card has none)."""
    before, after = metrics.get("before") or {}, metrics.get("after") or {}
    keys = list(before.get("mean", {}))
    data = metrics.get("data") or {}
    before_samples, after_samples = before.get("samples", []), after.get("samples", [])
    ids = data.get("sample_ids") or [str(i) for i in range(len(before_samples))]
    tokens = data.get("sample_tokens") or [None] * len(ids)
    reference = {k: v for k, v in (metrics.get("reference_levels") or {}).items() if k in keys}
    thresholds = _threshold_levels(metrics.get("thresholds"), keys)
    rows = [{"id": ids[i] if i < len(ids) else str(i), "tokens": tokens[i] if i < len(tokens) else None,
             "before": before_samples[i], "after": after_samples[i] if i < len(after_samples) else {}}
            for i in range(len(before_samples))]
    steps, epochs = metrics.get("steps") or [], metrics.get("epochs") or []
    memo_figure = training_figure = None
    if figures is not None:
        from .plots import memorization_plot, training_plot  # matplotlib: only when drawing
    if figures is not None and before_samples:
        memo_figure = figures.add("memorization", "Memorization per forget sample", memorization_plot(
            [r["id"] for r in rows], before_samples, after_samples, keys, reference, thresholds))
    if figures is not None and (steps or epochs):
        training_figure = figures.add("training", "Training curves",
                                      training_plot(steps, epochs, before.get("mean", {}), reference))
    losses = [s["loss"] for s in steps if finite(s.get("loss"))]
    return {
        "model": metrics.get("model"), "method": metrics.get("method"),
        "stopped_because": metrics.get("stopped_because"), "wall_time_s": metrics.get("wall_time_s"),
        "peak_memory_mb": metrics.get("peak_memory_mb"), "version": metrics.get("unmemorize_version"),
        "resumed_from_step": metrics.get("resumed_from_step"),
        "config": list(config.items()), "data": data, "metric_keys": keys, "rows": rows,
        "means": {"before": before.get("mean", {}), "after": after.get("mean", {})},
        "intervals": _sample_intervals(before_samples, after_samples, keys),
        "verdict": unlearning_verdict(metrics),
        "reference": reference, "reference_source": (metrics.get("reference_levels") or {}).get("source"),
        "thresholds": thresholds, "epochs": epochs,
        "steps": {"count": len(steps), "first_loss": losses[0] if losses else None,
                  "last_loss": losses[-1] if losses else None, "min_loss": min(losses) if losses else None},
        "without_focus": metrics.get("sequences_without_focus") or [],
        "memorization_figure": memo_figure, "training_figure": training_figure,
        "continuations": _continuations_context(samples, show_text),
    }


def _eval_context(report: dict, source: Path, figures: _Figures) -> dict:
    from .plots import memorization_plot
    from .robustness import robustness_context
    from .tables import comparison_rows, evaluation_cells

    labels = list(report["models"])
    rows = []
    for key, values in comparison_rows(report):
        cells, change = evaluation_cells(report, key, values)
        rows.append({"metric": key, "values": values, "cells": cells, "change": change})
    figure = None
    memo = [report["results"][label].get("memorization") or {} for label in labels]
    keys = [k for k in (memo[0].get("forget_samples") or [{}])[0] if k in memo[0].get("reference", {})]
    if len(labels) == 2 and keys and all(m.get("forget_samples") for m in memo):
        reference = {k: memo[0]["reference"][k] for k in keys}
        figure = figures.add("eval_memorization", "Forget-set memorization, per sample", memorization_plot(
            [str(i) for i in range(len(memo[0]["forget_samples"]))], memo[0]["forget_samples"],
            memo[1]["forget_samples"], keys, reference, labels=(labels[0], labels[1])))
    timings = [(label, suite, seconds) for label, suites in (report.get("timings_s") or {}).items()
               for suite, seconds in suites.items()]
    return {
        "file": source.name, "models": [(label, report["models"][label]) for label in labels],
        "labels": labels, "judge": report.get("judge"), "rows": rows, "timings": timings,
        "setting": (report.get("config") or {}).get("setting") or "custom",
        "wall_time_s": report.get("wall_time_s"), "config": list((report.get("config") or {}).items()),
        "figure": figure, "robustness": robustness_context(report, figures),
    }


def _comparison_rows(data: Any) -> list[dict]:
    """comparison.json as a list of row objects, whichever of the usual shapes it has."""
    if isinstance(data, dict):
        for key in ("rows", "runs", "results"):
            if isinstance(data.get(key), list):
                return [r for r in data[key] if isinstance(r, dict)]
        if data and all(isinstance(v, dict) for v in data.values()):
            return [{"name": name, **row} for name, row in data.items()]
        return []
    if isinstance(data, list):
        return [r for r in data if isinstance(r, dict)]
    return []


def _compare_table(data: Any) -> tuple[list[str], list[list]]:
    """The pooled rows with their intervals (reporting.comparison) when comparison.json has
    them; otherwise whatever scalar columns its rows hold."""
    if isinstance(data, dict) and data.get("groups"):
        from .comparison import group_table

        el_key = next((c.removeprefix("forget_") for c in data.get("columns") or [] if c.startswith("forget_el")),
                      "el_10")
        return group_table(data, el_key)
    rows = _comparison_rows(data)
    columns: list[str] = []
    for row in rows:
        for key, value in row.items():
            # Nested values (per-run configs, sample lists) do not fit a table cell.
            if key not in columns and not isinstance(value, (dict, list)):
                columns.append(key)
    return columns, [[row.get(c) for c in columns] for row in rows]


def _compare_context(data: Any, run_dir: Path, figures: _Figures) -> dict:
    columns, rows = _compare_table(data)
    figure = None
    plot = run_dir / "tradeoff.png"
    png = plot.read_bytes() if plot.is_file() else b""
    if png.startswith(PNG_SIGNATURE):
        figure = figures.add("tradeoff", "Trade-off: memorization vs utility", png)
    extra = {k: v for k, v in data.items() if not isinstance(v, (dict, list))} if isinstance(data, dict) else {}
    return {
        "columns": columns, "rows": rows, "figure": figure,
        "csv": [name for name in ("comparison.csv", "tradeoff.csv") if (run_dir / name).is_file()],
        "extra": list(extra.items()),
    }


DEMO_SUMMARY = (
    ("forgotten customers: own PII values extracted", "pii_leaked_before", "pii_leaked_after"),
    ("forgotten customers' completions: anyone's PII, whole or in part", "pii_exposed_before", "pii_exposed_after"),
    ("kept customers: PII values extracted", "kept_pii_leaked_before", "kept_pii_leaked_after"),
    ("MA, forgotten customers", "forget_ma_before", "forget_ma_after"),
    ("MA, kept customers", "kept_ma_before", "kept_ma_after"),
    ("general-text perplexity", "general_ppl_before", "general_ppl_after"),
)


def _demo_context(demo: dict, figures: _Figures) -> dict:
    from .plots import before_after_bars

    summary = demo.get("summary") or {}
    totals = {"pii_leaked_before": "pii_total", "pii_leaked_after": "pii_total",
              "kept_pii_leaked_before": "kept_pii_total", "kept_pii_leaked_after": "kept_pii_total"}

    def count(key: str) -> Any:  # "3 of 8": a count with its denominator
        value, total = summary.get(key), summary.get(totals.get(key, ""))
        return f"{fmt(value)} of {fmt(total)}" if finite(value) and finite(total) else value

    rows = [{"label": label, "before": count(b), "after": count(a)} for label, b, a in DEMO_SUMMARY
            if b in summary or a in summary]

    def leaks(records: Any) -> list[dict]:
        out = []
        for record in records or []:
            pii = record.get("pii") or []
            out.append({
                "customer": record.get("customer"), "prompt": record.get("prompt", ""),
                # Highlighted: what identifies anyone, whole values and fragments, own or others'.
                "segments": _highlight(record.get("completion", ""), [
                    p.get("fragment") or p.get("value", "") for p in [*pii, *(record.get("others") or [])]
                    if p.get("exposed", p.get("leaked"))]),
                "pii": pii, "leaked": sum(1 for p in pii if p.get("leaked")),
                "others": record.get("others") or [],
            })
        return out

    figure = None
    counts = ("pii_leaked_before", "pii_leaked_after", "kept_pii_leaked_before", "kept_pii_leaked_after")
    if all(finite(summary.get(k)) for k in counts):
        figure = figures.add("demo_leaks", "PII reproduced before and after", before_after_bars(
            ["forgotten customers", "kept customers"],
            [summary["pii_leaked_before"], summary["kept_pii_leaked_before"]],
            [summary["pii_leaked_after"], summary["kept_pii_leaked_after"]],
            "PII values reproduced by the model", "PII values leaked"))
    return {
        "model": demo.get("model"), "records": demo.get("records"), "passed": demo.get("passed"),
        "synthetic": demo.get("synthetic", True), "pii_total": summary.get("pii_total"),
        "forgotten": demo.get("forgotten_customers") or [], "kept": demo.get("kept_customers") or [],
        "summary": rows, "timings": list((demo.get("timings_s") or {}).items()),
        "leak_before": leaks(demo.get("leak_before")), "leak_after": leaks(demo.get("leak_after")),
        "figure": figure, "scan": demo.get("scan"), "rounds": demo.get("unlearning_rounds") or [],
    }


def _provenance(source: str, environment: Any) -> dict | None:
    """The environment a run recorded when it ran (models.environment), as a report shows it:
    when (UTC), on what, with which libraries, and the SHA-256 of each model's weight files."""
    if not isinstance(environment, dict):
        return None
    made = str(environment.get("created_utc") or "")
    return {
        "source": source, "made": made.replace("T", " ").removesuffix("Z")[:16] + " UTC" if made else None,
        "device": environment.get("device"),
        "versions": ", ".join(f"{k} {v}" for k, v in (environment.get("versions") or {}).items()),
        "weights": [(label, name, digest) for label, files in (environment.get("weights_sha256") or {}).items()
                    for name, digest in (files or {}).items()],
    }


def _report_verdict(kind: str, unlearn: dict | None, report: dict | None, comparison: Any, demo: Any,
                    scan: Any = None) -> dict:
    """The one line the report opens with (reporting.verdict), for the report's kind."""
    if kind == "unlearn" and unlearn is not None:
        return unlearn["verdict"]
    if kind == "compare":
        return comparison_verdict(comparison if isinstance(comparison, dict) else {})
    if kind == "demo":
        return demo_verdict(demo)
    if kind == "scan":
        return scan_verdict(scan)
    return evaluation_verdict(report or {})


def _scan_context(run_dir: Path, figures: _Figures, show_text: bool) -> dict:
    """A scan's summary (scan.json): counts, thresholds, the ranked flagged windows (text only
    when both the scan and the report were asked for it) and the PII found."""
    from .plots import score_histograms

    scan = _read_json(run_dir / "scan.json")
    histogram, threshold = scan.get("histogram"), scan["threshold"]
    figure = None
    if histogram:
        figure = figures.add("scan_scores", "Scores of the corpus and of unseen text", score_histograms(
            histogram["edges"], histogram["corpus"], histogram["reference"], histogram["score"], threshold["threshold"]))
    rows = [{**row, "text": row.get("text") if show_text else None} for row in scan["top"]]
    counts = [("documents", scan["documents"]), ("windows", scan["windows"]), ("tokens", scan["tokens"]),
              ("attacked (candidates)", scan["candidates"]), ("extracted verbatim", scan["extracted"]),
              ("flagged", scan["flagged"]), ("flag score", scan["score"]), ("flag threshold", threshold["threshold"]),
              ("wall time (s)", scan["timing"]["wall_s"]), ("windows/s", scan["timing"]["windows_per_s"]),
              ("tokens/s", scan["timing"]["tokens_per_s"]), ("processes", scan["timing"]["processes"])]
    if not threshold.get("explicit"):
        counts[7:7] = [("false-positive rate", threshold["fpr"]), ("reference windows", threshold["reference"])]
    return {"model": scan["model"], "counts": counts, "rows": rows, "score": scan["score"], "figure": figure,
            "pii": sorted((scan.get("pii") or {}).items()), "pii_scanned": scan.get("pii") is not None}


# --- rendering -----------------------------------------------------------------------------


def _environment(autoescape: bool) -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("unmemorize", "templates"), autoescape=autoescape,
        trim_blocks=True, lstrip_blocks=True, keep_trailing_newline=True, undefined=jinja2.StrictUndefined,
    )
    env.filters["fmt"] = fmt
    env.filters["gib"] = gib
    env.filters["signed"] = signed
    env.filters["interval"] = lambda ci: f"[{fmt(ci[0])}, {fmt(ci[1])}]" if ci and all(finite(v) for v in ci) else "–"
    env.filters["change"] = lambda c: "–" if not c else (
        f"{signed(c['value'])} [{signed(c['low'])}, {signed(c['high'])}]" + ("" if c["resolved"] else " ≈"))
    env.filters["secs"] = lambda value: f"{value:.1f}" if finite(value) else fmt(value)
    env.filters["md"] = md_text
    # (label, file, digest) of provenance: one row of its table
    env.filters["weights_row"] = lambda w: (f"weights of {w[0]}: {w[1]} (SHA-256)", w[2])
    env.filters["label"] = lambda key: metric_label(str(key)) if re.fullmatch(r"(ma|el_\d+)", str(key)) else key
    return env


def _title(kind: str, unlearn: dict | None) -> str:
    if kind == "unlearn" and unlearn is not None:
        return f"Unlearning report: {unlearn['model']} ({unlearn['method']})"
    return {"eval": "Evaluation report", "compare": "Comparison report", "demo": "Demo report",
            "scan": "Scan report"}.get(kind, "Report")


def _read_run(run_dir: Path, eval_path: Path | None, show_text: bool, figures: _Figures) -> dict:
    """Every file of the run read, its paths made relative to ``run_dir``, and the context of
    each section; a file of another version or edited by hand gives one clear error."""
    metrics_path = run_dir / "metrics.json"
    read: dict[str, Any] = {"metrics": None, "config": None, "report": None, "comparison": None, "demo": None, "scan": None}
    sections: dict[str, Any] = {"unlearn": None, "eval": None, "compare": None, "demo": None, "scan": None}
    reading = metrics_path
    try:
        if metrics_path.is_file():
            read["metrics"] = relative_to(_read_json(metrics_path), run_dir)
            config_path, samples_path = run_dir / "unlearn_config.json", run_dir / SAMPLES_FILE
            read["config"] = relative_to(_read_json(config_path), run_dir) if config_path.is_file() else {}
            samples = _read_json(samples_path) if samples_path.is_file() else None
            sections["unlearn"] = _unlearn_context(read["metrics"], read["config"], samples, figures, show_text)
        if eval_path is not None:
            reading = eval_path
            report = _read_json(eval_path)
            if not _is_eval_report(report):
                raise UserError(f"{eval_path} is not the JSON of `unmemorize eval` (no 'models' and 'results')")
            read["report"] = report = relative_to(report, run_dir)
            sections["eval"] = _eval_context(report, eval_path, figures)
            if sections["unlearn"] is not None:  # the verdict now knows the utility cost
                sections["unlearn"]["verdict"] = unlearning_verdict(read["metrics"], report)
        reading = run_dir / "comparison.json"
        if reading.is_file():
            read["comparison"] = relative_to(_read_json(reading), run_dir)
            sections["compare"] = _compare_context(read["comparison"], run_dir, figures)
        reading = run_dir / "demo.json"
        if reading.is_file():
            demo = _read_json(reading)
            if not isinstance(demo, dict):
                raise UserError(f"{reading} is not a JSON object")
            # The leak tables show the synthetic records' text as it is: only the rest is a path.
            read["demo"] = {**relative_to({k: v for k, v in demo.items() if not k.startswith("leak_")}, run_dir),
                            **{k: v for k, v in demo.items() if k.startswith("leak_")}}
            sections["demo"] = _demo_context(read["demo"], figures)
        reading = run_dir / "scan.json"
        if reading.is_file():
            read["scan"] = _read_json(reading)
            sections["scan"] = _scan_context(run_dir, figures, show_text)
        kind = ("unlearn" if sections["unlearn"] else "compare" if sections["compare"] else
                "demo" if sections["demo"] else "scan" if sections["scan"] else "eval")
        verdict = _report_verdict(kind, sections["unlearn"], read["report"], read["comparison"], read["demo"],
                                  read["scan"])
    except (KeyError, IndexError, TypeError, AttributeError, ValueError) as error:
        raise UserError(f"cannot render a report from {reading}: unexpected content "
                        f"({type(error).__name__}: {error})") from None
    recorded = [("unlearning run (metrics.json)", (read["metrics"] or {}).get("environment")),
                (f"evaluation ({eval_path.name if eval_path else ''})", (read["report"] or {}).get("environment")),
                ("comparison: the original's evaluation", (read["comparison"] or {}).get("environment")
                 if isinstance(read["comparison"], dict) else None),
                ("demo (demo.json)", (read["demo"] or {}).get("environment"))]
    return {"read": read, "kind": kind, "verdict": verdict, **sections,
            "provenance": [p for p in (_provenance(source, env) for source, env in recorded) if p]}


def write_report(run_dir: Path, show_text: bool = False, *, eval_json: Path | None = None) -> tuple[Path, Path]:
    """Render ``report.md`` and ``report.html`` in ``run_dir`` (and the model card ``README.md``
    of an unlearned model directory) from the files the run left there; returns (md, html).
    ``eval_json``: the evaluation results when they are not ``run_dir/eval.json``. The same
    files render the same report: its dates are those the run recorded, not the rendering's."""
    run_dir = Path(run_dir).expanduser()
    if not run_dir.is_dir():
        raise UserError(f"{run_dir} is not a directory")
    eval_path = Path(eval_json) if eval_json is not None else _find_eval_json(run_dir)
    if not ((run_dir / "metrics.json").is_file() or eval_path or (run_dir / "comparison.json").is_file()
            or (run_dir / "demo.json").is_file() or (run_dir / "scan.json").is_file()):
        raise UserError(f"no metrics.json, eval.json, comparison.json or scan.json in {run_dir}: not an unmemorize run directory")
    figures = _Figures()
    run = _read_run(run_dir, eval_path, show_text, figures)
    context = {
        "title": _title(run["kind"], run["unlearn"]), "kind": run["kind"], "version": __version__,
        "directory": run_dir.name, "verdict": run["verdict"], "verdict_colors": VERDICT_COLORS,
        "provenance": run["provenance"],
        "unlearn": run["unlearn"], "eval": run["eval"], "compare": run["compare"], "demo": run["demo"],
        "scan": run["scan"],
        "match_symbol": MATCH, "miss_symbol": MISS,
    }
    if "tradeoff" in figures.items:
        figures.items["tradeoff"]["file"] = "tradeoff.png"  # already beside the report
    for figure in figures.items.values():
        if figure["name"] != "tradeoff":
            (run_dir / ASSETS_DIR).mkdir(exist_ok=True)
            write_atomic(run_dir / figure["file"], figure["png"])
    md_path, html_path = run_dir / REPORT_MD, run_dir / REPORT_HTML
    write_atomic(md_path, _environment(autoescape=False).get_template("report.md.j2").render(context))
    write_atomic(html_path, _environment(autoescape=True).get_template("report.html.j2").render(context))
    metrics = run["read"]["metrics"]
    if metrics is not None and (run_dir / "config.json").is_file():  # a saved model: its card
        write_atomic(run_dir / MODEL_CARD, model_card(metrics, run["read"]["config"], run_dir, run["read"]["report"]))
    return md_path, html_path


def model_card(metrics: dict, config: dict, directory: Path, evaluation: dict | None = None) -> str:
    """The ``README.md`` of an unlearned model directory, in the Hugging Face model card format:
    YAML front matter (base model, its licence, tags, ``model-index`` with the measured results),
    the verdict, intended use and limitations, how it was made (with the date, device, library
    versions and the base weights' SHA-256 recorded when it ran), what it forgot (counts and
    keyed digests, never text or a plain hash), how well, and how to load and reproduce it.
    Built from the run's metrics and config (and its evaluation, when there is one); paths are
    shown relative to ``directory``, the model directory."""
    metrics, config = relative_to(metrics, directory), relative_to(config, directory)
    u = _unlearn_context(metrics, config, None, None, False)
    u["verdict"] = unlearning_verdict(metrics, evaluation)
    # Recorded by training (models.provenance): the upstream model and its licence.
    origin = {"base_model": None, "license": None, **(metrics.get("provenance") or {})}
    title = f"{origin['base_model'] or u['model']}, unlearned with {u['method']}"
    context = {"u": u, "directory": Path(directory).name, "version": __version__, "config": config,
               "provenance": origin, "title": title, "made": _provenance("", metrics.get("environment")),
               "front_matter": _front_matter(u, origin, title)}
    return _environment(autoescape=False).get_template("model_card.md.j2").render(context)
