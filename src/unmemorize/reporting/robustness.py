"""The robustness section: the recovery of each attack (a table and a bar chart), the relearning
curves and the per-layer MA of the logit lens, from the robustness suite's results (no
inference here)."""

from __future__ import annotations

from .formatting import fmt

RECOVERY_HEADER = ("attack", "setting", "step", "MA before", "MA unlearned", "MA attacked",
                   "MA original attacked", "recovery MA", "net recovery MA", "extractable attacked",
                   "recovery extraction")


def robustness_pair(report: dict) -> tuple[dict | None, dict | None]:
    """(the original's, the unlearned model's) robustness results of an evaluation report."""
    found = [report["results"][label].get("robustness") for label in report["models"]]
    found = [f for f in found if f]
    if not found:
        return None, None
    return (found[0], found[1]) if len(found) > 1 else (None, found[0])


def recovery_cells(rows: list[dict]) -> list[list[str]]:
    """One line of RECOVERY_HEADER per recovery row."""
    cells = []
    for row in rows:
        ma = row["values"]["ma"]
        net = (row["net_recovery"] or {}).get("ma")
        cells.append([row["attack"], row["variant"], fmt(row["step"]), fmt(ma["before"]), fmt(ma["after_unlearning"]),
                      fmt(ma["after_attack"]), fmt(ma["original_attacked"]), fmt(row["recovery"]["ma"]),
                      fmt(net), fmt(row["values"]["extractable"]["after_attack"]), fmt(row["recovery"]["extractable"])])
    return cells


def _label(row: dict) -> str:
    return f"{row['attack']} {row['variant']}" + (f" @{row['step']}" if row["step"] else "")


def robustness_context(report: dict, figures) -> dict | None:
    """The section's table, figures and timings; None when the report has no robustness results."""
    from .plots import lens_plot, recovery_bars, relearn_plot

    base, own = robustness_pair(report)
    if own is None or "recovery" not in own:
        return None
    rows = own["recovery"]
    shown = [r for r in rows if r["attack"] != "logit-lens"]
    bars = figures.add("robustness_recovery", "MA recovery per attack", recovery_bars(
        [_label(r) for r in shown], [(r["net_recovery"] or r["recovery"])["ma"] for r in shown],
        "How much of the forgetting each attack undoes (net of its effect on the original)"))
    curves, before = {}, {}
    for name, found in own["attacks"].get("relearn", {}).items():
        points = [r for r in rows if r["attack"] == "relearn" and r["variant"] == name]
        if points:
            curves[name] = [(0, points[0]["values"]["ma"]["after_unlearning"])] + \
                [(r["step"], r["values"]["ma"]["after_attack"]) for r in points]
            before[name] = points[0]["values"]["ma"]["before"]
    relearn = figures.add("robustness_relearn", "Relearning curves", relearn_plot(
        curves, before, "Forget-set MA while fine-tuning again")) if curves else None
    lens = None
    if base and "logit-lens" in own["attacks"] and "logit-lens" in base["attacks"]:
        labels = list(report["models"])
        lens = figures.add("robustness_lens", "Logit lens", lens_plot(
            {labels[0]: base["attacks"]["logit-lens"]["layers"], labels[-1]: own["attacks"]["logit-lens"]["layers"]},
            "Forget-set MA read at each layer"))
    return {"header": RECOVERY_HEADER, "rows": recovery_cells(rows), "strongest": own.get("recovery_max", {}).get("ma", {}),
            "timings": list(own.get("timings_s", {}).items()), "bars": bars, "relearn": relearn, "lens": lens}
