"""The report's figures, drawn with matplotlib's object API on the Agg canvas (no pyplot, no
display, no global figure state) and returned as PNG bytes, so a report can embed them."""

from __future__ import annotations

import io
import math
from typing import Sequence

from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from .report import _finite, metric_label

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
        if _finite(reference.get(key)):
            ax.axhline(reference[key], color=REFERENCE_COLOR, linestyle="--",
                       label=f"unseen text {reference[key]:.3f}")
        threshold = thresholds.get(key)
        if _finite(threshold) and threshold != reference.get(key):
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
        if _finite(reference.get(key)):
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
