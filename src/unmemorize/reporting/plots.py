"""The report's figures, drawn with matplotlib's object API on the Agg canvas (no pyplot, no
display, no global figure state) and returned as PNG bytes, so a report can embed them."""

from __future__ import annotations

import io
import math
from typing import Sequence

from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from .formatting import finite, metric_label

BEFORE_COLOR = "#9aa5b1"
AFTER_COLOR = "#c0392b"
REFERENCE_COLOR = "#2c7a4b"
THRESHOLD_COLOR = "#6c3483"


def _png(figure: Figure) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
    return buffer.getvalue()


def memorization_plot(
    ids: Sequence[str],
    before: Sequence[dict],
    after: Sequence[dict],
    metrics: Sequence[str],
    reference: dict | None = None,
    thresholds: dict | None = None,
    labels: tuple[str, str] = ("before", "after"),
) -> bytes:
    """One panel per metric: each sample's value before (grey) and after (red) joined by a
    line (a dumbbell plot reads at any number of samples), with the unseen-text level as a
    dashed line and the stop threshold, when one was set, as a dotted line."""
    reference, thresholds = reference or {}, thresholds or {}
    figure = Figure(figsize=(max(6.0, min(14.0, 0.3 * len(ids) + 3)), 2.6 * len(metrics)))
    axes = figure.subplots(len(metrics), 1, squeeze=False)[:, 0]
    xs = list(range(len(ids)))
    for ax, key in zip(axes, metrics):
        ys_before = [s.get(key, math.nan) for s in before]
        ys_after = [s.get(key, math.nan) for s in after] if after else []
        for x, a, b in zip(xs, ys_before, ys_after):
            ax.plot([x, x], [a, b], color="#d5d8dc", linewidth=2, zorder=1)
        ax.scatter(xs, ys_before, color=BEFORE_COLOR, label=labels[0], zorder=2)
        if ys_after:
            ax.scatter(xs, ys_after, color=AFTER_COLOR, label=labels[1], zorder=3)
        if finite(reference.get(key)):
            ax.axhline(reference[key], color=REFERENCE_COLOR, linestyle="--",
                       label=f"unseen text {reference[key]:.3f}")
        threshold = thresholds.get(key)
        if finite(threshold) and threshold != reference.get(key):
            ax.axhline(threshold, color=THRESHOLD_COLOR, linestyle=":", label=f"stop at {threshold:.3f}")
        ax.set_ylabel(metric_label(key))
        ax.set_ylim(-0.03, 1.03)
        ax.set_xticks(xs)
        ax.set_xticklabels([str(i) for i in ids], rotation=90 if len(ids) > 12 else 0, fontsize=8)
        ax.grid(axis="y", alpha=0.3)
        ax.legend(loc="upper right", fontsize=8, ncol=4)
    axes[-1].set_xlabel("sample id")
    figure.suptitle("Memorization per forget sample")
    return _png(figure)


def training_plot(steps: Sequence[dict], epochs: Sequence[dict], before: dict,
                  reference: dict | None = None) -> bytes:
    """Loss per optimizer step (left) and memorization per epoch, epoch 0 = before (right)."""
    reference = reference or {}
    figure = Figure(figsize=(11, 3.4))
    loss_ax, memo_ax = figure.subplots(1, 2)
    loss_ax.plot([s["step"] for s in steps], [s["loss"] for s in steps], marker="." if len(steps) < 60 else None,
                 color=AFTER_COLOR)
    loss_ax.set_xlabel("optimizer step")
    loss_ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    loss_ax.set_ylabel("loss")
    loss_ax.set_title("Training loss")
    loss_ax.grid(alpha=0.3)
    keys = [k for k in before if any(k in e for e in epochs)] or list(before)
    for index, key in enumerate(keys):
        points = [(0, before[key])] + [(e["epoch"], e[key]) for e in epochs if key in e]
        line = memo_ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=metric_label(key),
                            color=f"C{index}")[0]
        if finite(reference.get(key)):
            memo_ax.axhline(reference[key], color=line.get_color(), linestyle="--", alpha=0.7,
                            label=f"{metric_label(key)} unseen text")
    memo_ax.set_xlabel("epoch (0 = before)")
    memo_ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    memo_ax.set_ylabel("forget set mean")
    memo_ax.set_ylim(-0.03, 1.03)
    memo_ax.set_title("Memorization per epoch")
    memo_ax.grid(alpha=0.3)
    memo_ax.legend(fontsize=8)
    return _png(figure)


def before_after_bars(groups: Sequence[str], before: Sequence[float], after: Sequence[float],
                      title: str, ylabel: str) -> bytes:
    """Grouped bars: one pair (before, after) per group."""
    figure = Figure(figsize=(6, 3.2))
    ax = figure.subplots()
    xs = list(range(len(groups)))
    width = 0.38
    ax.bar([x - width / 2 for x in xs], before, width, color=BEFORE_COLOR, label="before")
    ax.bar([x + width / 2 for x in xs], after, width, color=AFTER_COLOR, label="after")
    ax.set_xticks(xs)
    ax.set_xticklabels(groups)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8)
    return _png(figure)


def score_histograms(edges: Sequence[float], corpus: Sequence[int], reference: Sequence[int],
                     score: str, threshold: float | None) -> bytes:
    """A scan's score distribution: the corpus's and the reference's counts per bin, each as a
    share of its own windows, and the flag threshold."""
    figure = Figure(figsize=(6.4, 3.2))
    ax = figure.subplots()
    widths = [b - a for a, b in zip(edges[:-1], edges[1:])]
    for counts, color, label in ((reference, REFERENCE_COLOR, "reference (unseen)"), (corpus, AFTER_COLOR, "corpus")):
        total = sum(counts)
        if total:
            ax.bar(edges[:-1], [c / total for c in counts], widths, align="edge", color=color, alpha=0.55,
                   label=f"{label}, {total} windows")
    if threshold is not None and finite(threshold):
        ax.axvline(threshold, color=THRESHOLD_COLOR, linestyle="--", label="flag threshold")
    ax.set_xlabel(score)
    ax.set_ylabel("share of windows")
    ax.set_title("Scores of the corpus and of unseen text")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8)
    return _png(figure)


# y panels of the trade-off plot, in order of preference: (row key, axis label)
UTILITY_PANELS = [
    ("nlu_avg", "NLU average accuracy (↑)"),
    ("heldout_ppl", "held-out perplexity (↓)"),
    ("mauve", "MAUVE (↑)"),
]
_FALLBACK_PANEL = ("reference_ma", "MA on unseen text (↑, utility proxy)")


def label_offsets(points: list[tuple[float, float]]) -> list[tuple[tuple[int, int], str]]:
    """A label position beside each marker, chosen greedily away from the other markers and labels.

    matplotlib has no label placement of its own; with a few runs landing close together, fixed
    offsets overlapped. Distances are taken on the axes scaled to [0, 1] (a panel is about 440 × 340
    points, so one point of offset is about 1/400 of an axis).
    """
    candidates = [((6, 5), "left"), ((6, -11), "left"), ((-6, 5), "right"), ((-6, -11), "right"),
                  ((0, 9), "center"), ((0, -15), "center")]
    if not points:
        return []
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    span_x, span_y = (max(xs) - min(xs)) or 1.0, (max(ys) - min(ys)) or 1.0
    scaled = [((x - min(xs)) / span_x, (y - min(ys)) / span_y) for x, y in points]
    label_width = 0.12  # a run name of ~10 characters at font size 8, in axis units

    def anchor(point, candidate):
        (dx, dy), align = candidate
        shift = {"left": label_width / 2, "right": -label_width / 2, "center": 0.0}[align]
        return point[0] + dx / 440 + shift, point[1] + dy / 340

    placed: list[tuple[float, float]] = []
    chosen = []
    for index, point in enumerate(scaled):
        others = [p for j, p in enumerate(scaled) if j != index] + placed

        def clearance(candidate):
            ax_, ay_ = anchor(point, candidate)
            return min((abs(ax_ - ox) / label_width + abs(ay_ - oy) / 0.05 for ox, oy in others), default=1.0)

        best = max(candidates, key=clearance)  # ties keep the first: right and above
        placed.append(anchor(point, best))
        chosen.append(best)
    return chosen


def tradeoff_panels(rows: list[dict]) -> list[tuple[str, str]]:
    """The utility measures the rows have: NLU and one generation-side measure, or a fallback."""
    panels = [p for p in UTILITY_PANELS if any(r[p[0]] is not None for r in rows)]
    if "nlu_avg" in [p[0] for p in panels] and len(panels) > 2:
        panels = panels[:2]
    return panels or [_FALLBACK_PANEL]


def _error(value: float, interval) -> list[list[float]] | None:
    """matplotlib's asymmetric error bar [[below], [above]] from a 95 % interval."""
    if not interval or not all(finite(v) for v in interval):
        return None
    return [[max(0.0, value - interval[0])], [max(0.0, interval[1] - value)]]


def tradeoff_plot(rows: list[dict], original: str, curves: dict | None = None) -> bytes:
    """Forget MA against utility, one labelled marker per row (``original`` starred) with its
    95 % intervals as error bars, the original's unseen-text MA (the forgotten level) as a
    dashed line; with ``curves`` ({run: [(forget MA, unseen MA) per epoch]}) a last panel draws
    each run's path from the original, so methods are compared at equal forgetting."""
    panels = tradeoff_panels(rows)
    level = rows[0]["reference_ma"]
    methods = sorted({r["method"] for r in rows[1:]})
    colors = {m: f"C{i % 10}" for i, m in enumerate(methods)}
    count = len(panels) + (1 if curves else 0)
    figure = Figure(figsize=(6.2 * count, 4.8), layout="constrained")
    axes = figure.subplots(1, count, squeeze=False)[0]
    legend: dict = {}
    for ax, (key, label) in zip(axes, panels):
        points = [row for row in rows if row["forget_ma"] is not None and row[key] is not None]
        for row in points:
            x, y = row["forget_ma"], row[key]
            star = row["group"] == original
            handle = ax.errorbar([x], [y], xerr=_error(x, row.get("forget_ma_ci95")), yerr=_error(y, row.get(f"{key}_ci95")),
                                 fmt="*" if star else "o", markersize=15 if star else 7, capsize=3,
                                 color="black" if star else colors[row["method"]], zorder=4 if star else 3)
            legend["original" if star else row["method"]] = handle
        offsets = label_offsets([(r["forget_ma"], r[key]) for r in points])
        for row, (offset, align) in zip(points, offsets):
            ax.annotate(row["group"], (row["forget_ma"], row[key]), textcoords="offset points", xytext=offset,
                        ha=align, fontsize=8)
        if level is not None:
            legend["unseen-text MA (forgotten level)"] = ax.axvline(level, linestyle="--", color="gray", linewidth=1)
        ax.margins(x=0.15, y=0.12)  # room for the labels at the edges
        ax.set_xlabel("forget-set MA (memorization, ↓)")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    if curves:
        _curves_panel(axes[-1], curves, rows, colors, level)
    # One legend below the panels, where it cannot cover a marker.
    figure.legend(legend.values(), legend.keys(), loc="outside lower center", ncol=len(legend), fontsize=8)
    figure.suptitle("Memorization vs utility")
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=120)
    return buffer.getvalue()


def _curves_panel(ax, curves: dict, rows: list[dict], colors: dict, level: float | None) -> None:
    methods = {r["group"]: r["method"] for r in rows}
    for run, points in curves.items():
        group = next((g for g in methods if run == g or run.startswith(g + "-s")), run)
        ax.plot([p[0] for p in points], [p[1] for p in points], marker=".", linewidth=1,
                color=colors.get(methods.get(group), "gray"), alpha=0.8)
        ax.annotate(run, points[-1], textcoords="offset points", xytext=(4, -8), fontsize=7)
    if level is not None:
        ax.axvline(level, linestyle="--", color="gray", linewidth=1)
    ax.invert_xaxis()  # training moves right to left: from memorized towards forgotten
    ax.set_xlabel("forget-set MA per epoch (←  training)")
    ax.set_ylabel("MA on unseen text (general accuracy, ↑)")
    ax.set_title("Paths at equal forgetting", fontsize=10)
    ax.grid(alpha=0.3)


# --- robustness -------------------------------------------------------------------------------


def recovery_bars(labels: Sequence[str], values: Sequence[float], title: str) -> bytes:
    """One horizontal bar per attack setting: its MA recovery (0 nothing back, 1 all of it)."""
    figure = Figure(figsize=(6.4, 0.3 * len(labels) + 1.2))
    ax = figure.subplots()
    shown = [v if finite(v) else 0.0 for v in values]
    ax.barh(range(len(labels)), shown, color=[AFTER_COLOR if v > 0 else BEFORE_COLOR for v in shown])
    ax.set_yticks(range(len(labels)))
    ax.set_yticklabels(labels, fontsize=8)
    ax.invert_yaxis()
    ax.axvline(0, color="black", linewidth=0.8)
    ax.axvline(1, color=THRESHOLD_COLOR, linestyle="--", linewidth=0.8, label="back at the original")
    ax.set_xlabel("MA recovery: (after attack − after unlearning) / (before − after unlearning)")
    ax.set_title(title)
    ax.grid(axis="x", alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    return _png(figure)


def relearn_plot(curves: dict[str, list[tuple[int, float]]], before: dict[str, float], title: str) -> bytes:
    """MA of the measured forget samples after each relearning step, one line per curve; the
    dotted line of the same colour is the original's MA on the same samples."""
    figure = Figure(figsize=(6, 3.4))
    ax = figure.subplots()
    for index, (name, points) in enumerate(curves.items()):
        color = f"C{index}"
        ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", color=color, label=name)
        if finite(before.get(name)):
            ax.axhline(before[name], color=color, linestyle=":", linewidth=0.9)
    ax.set_xscale("symlog", linthresh=1)
    ax.set_xlabel("relearning steps (step 0: the unlearned model)")
    ax.set_ylabel("forget-set MA")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    return _png(figure)


def lens_plot(layers: dict[str, Sequence[float]], title: str) -> bytes:
    """MA of each layer's hidden state through the final norm and output layer, per model."""
    figure = Figure(figsize=(6, 3.2))
    ax = figure.subplots()
    for index, (label, values) in enumerate(layers.items()):
        ax.plot(range(1, len(values) + 1), values, marker="o", markersize=3, color=f"C{index}", label=label)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("layer")
    ax.set_ylabel("forget-set MA (logit lens)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _png(figure)
