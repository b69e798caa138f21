"""How numbers and text look in reports and tables: one formatting rule for every output."""

from __future__ import annotations

import html
import math
import re
from typing import Any


def finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def metric_label(key: str) -> str:
    """``ma`` -> ``MA``, ``el_10`` -> ``EL-10``."""
    return key.upper().replace("_", "-")


def fmt(value: Any) -> str:
    """A table cell: 3 decimals between 0.01 and 100 (rates, AUCs, perplexities line up in a
    column), 3 significant digits below, 4 up to 10,000, whole numbers with thousands
    separators above, '–' for missing, 'n/a' for NaN."""
    if value is None:
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}" if abs(value) >= 10_000 else str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "n/a"
        if value != 0 and abs(value) < 0.01:
            return f"{value:.3g}"  # learning rates, small EL values: keep their digits
        if abs(value) < 100:
            return f"{value:.3f}"
        return f"{value:.4g}" if abs(value) < 10_000 else f"{value:,.0f}"
    if isinstance(value, (list, tuple)):
        return ", ".join(fmt(v) for v in value) or "–"
    return str(value)


def md_text(value: Any) -> str:
    """Text in markdown: HTML-escaped (the file may be rendered as HTML), markdown markup and
    table pipes escaped, newlines shown as ⏎."""
    text = html.escape(str(value), quote=False)
    text = re.sub(r"([\\`*_\[\]|#~])", r"\\\1", text)
    return text.replace("\r\n", "\n").replace("\n", " ⏎ ")


def gib(megabytes: Any) -> str:
    """Memory given in MiB, shown in GiB: ``16960.0`` -> ``16.6 GiB``."""
    return f"{megabytes / 1024:.1f} GiB" if finite(megabytes) else fmt(megabytes)
