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


def tradeoff_plot(rows: list[dict], original: str) -> bytes:
    """Forget MA against utility, one labelled marker per row (``original`` starred), the
    original's unseen-text MA (the forgotten level) as a dashed line."""
    panels = tradeoff_panels(rows)
    level = rows[0]["reference_ma"]
    methods = sorted({r["method"] for r in rows[1:]})
    colors = {m: f"C{i % 10}" for i, m in enumerate(methods)}
    figure = Figure(figsize=(6.2 * len(panels), 4.8), layout="constrained")
    axes = figure.subplots(1, len(panels), squeeze=False)[0]
    legend: dict = {}
    for ax, (key, label) in zip(axes, panels):
        points = [(row["run"], row["method"], row["forget_ma"], row[key]) for row in rows
                  if row["forget_ma"] is not None and row[key] is not None]
        for run, method, x, y in points:
            if run == original:
                legend["original"] = ax.scatter([x], [y], marker="*", s=260, color="black", zorder=4)
            else:
                legend[method] = ax.scatter([x], [y], marker="o", s=60, color=colors[method], zorder=3)
        for (run, _, x, y), (offset, align) in zip(points, label_offsets([(p[2], p[3]) for p in points])):
            ax.annotate(run, (x, y), textcoords="offset points", xytext=offset, ha=align, fontsize=8)
        if level is not None:
            legend["unseen-text MA (forgotten level)"] = ax.axvline(level, linestyle="--", color="gray", linewidth=1)
        ax.margins(x=0.15, y=0.12)  # room for the labels at the edges
        ax.set_xlabel("forget-set MA (memorization, ↓)")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    # One legend below the panels, where it cannot cover a marker.
    figure.legend(legend.values(), legend.keys(), loc="outside lower center", ncol=len(legend), fontsize=8)
    figure.suptitle("Memorization vs utility")
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=120)
    return buffer.getvalue()
