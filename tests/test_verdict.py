"""The verdict line every report opens with, from hand-built results: an evaluation beside the
original, a comparison of methods and the demo (reporting.verdict), each as an exact sentence,
and each report kind rendered with that line first."""

from __future__ import annotations

import html
import json
import re

from unmemorize.reporting.formatting import md_text
from unmemorize.reporting.report import write_report
from unmemorize.reporting.verdict import comparison_verdict, demo_verdict, evaluation_verdict, unlearning_verdict

NOT_MEASURED = "not measured (run `unmemorize eval --model OUT --original BASE`, or `unlearn --eval`)"


def memorization(checks: dict | None) -> dict:
    return {"forget": {"ma": 0.2}, "reference": {"ma": 0.41},
            "forgotten": {"forgotten": False, "checks": checks or {}}}


def evaluation() -> dict:
    """The original and an unlearned model: MA forgotten (resolved), EL-10 above the level with
    an interval across it; held-out perplexity up by exactly 2 on every document (a paired
    interval of [2, 2]) and the same NLU answers on every item (a paired change of 0, ≈)."""
    checks = {"ma": {"value": 0.2, "threshold": 0.4, "ci95": [0.15, 0.25], "forgotten": True, "resolved": True},
              "el_10": {"value": 0.05, "threshold": 0.04, "ci95": [0.01, 0.09], "forgotten": False,
                        "resolved": False}}
    ppl = [15.8, 17.8, 19.8]
    answers = [1.0, 0.0, 1.0, 0.0]

    def results(shift: float, mem: dict | None) -> dict:
        found = {"nlg": {"heldout_ppl": 17.8 + shift,
                         "measurements": {"heldout_ppl": {"statistic": "mean",
                                                          "units": {"items": [p + shift for p in ppl]}}}},
                 "nlu": {"avg6_lm_eval": {"acc": 0.5},
                         "measurements": {"avg6_lm_eval": {"statistic": "mean", "units": {"items": answers}}}}}
        return {**found, "memorization": mem} if mem is not None else found

    return {"config": {}, "models": {"original": "base", "unlearned": "runs/forgot"}, "judge": "base",
            "results": {"original": results(0.0, memorization(None)), "unlearned": results(2.0, memorization(checks))},
            "timings_s": {}, "wall_time_s": 1.0}


def test_evaluation_verdict_judges_against_the_originals_level_with_intervals_and_utility():
    verdict = evaluation_verdict(evaluation())
    assert verdict == {"status": "not forgotten", "line": (
        "Not forgotten: forget-set MA 0.200 [0.150, 0.250] ≤ 0.400 on unseen text; forget-set EL-10 0.050 "
        "[0.010, 0.090] > 0.040 on unseen text (the interval straddles the level), the original model's level "
        "(Jang et al. 2022). Utility cost: held-out perplexity 17.800 → 19.800 (paired change +2.000 [+2.000, "
        "+2.000]), NLU average 0.500 → 0.500 (paired change 0.000 [0.000, 0.000] ≈).")}
    report = evaluation()
    report["results"]["unlearned"]["memorization"]["forgotten"]["checks"].pop("el_10")
    assert evaluation_verdict(report)["status"] == "forgotten"
    assert evaluation_verdict(report)["line"].startswith(
        "Forgotten: forget-set MA 0.200 [0.150, 0.250] ≤ 0.400 on unseen text, the original model's level")


def test_a_run_without_a_recorded_level_is_judged_by_its_evaluation_beside_the_original():
    metrics = {"after": {"mean": {"ma": 0.2}, "samples": [{"ma": 0.2}]}, "reference_levels": None}
    report = evaluation()
    report["results"]["unlearned"]["memorization"]["forgotten"]["checks"].pop("el_10")
    assert unlearning_verdict(metrics, report)["line"] == (
        "Forgotten: forget-set MA 0.200 [0.150, 0.250] ≤ 0.400 on unseen text, the original model's level "
        "(Jang et al. 2022), measured by the evaluation. Utility cost: held-out perplexity 17.800 → 19.800 "
        "(paired change +2.000 [+2.000, +2.000]), NLU average 0.500 → 0.500 (paired change 0.000 [0.000, 0.000] ≈).")
    assert unlearning_verdict(metrics)["status"] == "not assessed"


def test_evaluation_verdict_says_why_it_is_not_assessed():
    alone = {"models": {"model": "m"}, "results": {"model": {"memorization": memorization(None)}}}
    assert evaluation_verdict(alone) == {"status": "not assessed", "line": (
        "Not assessed: no original model was evaluated beside this one, so there is no level the forget set "
        f"could be judged against (run `unmemorize eval --model M --original BASE`). Utility cost: {NOT_MEASURED}.")}
    report = evaluation()
    for label in report["results"]:
        del report["results"][label]["memorization"]
    assert evaluation_verdict(report)["line"].startswith(
        "Not assessed: the evaluation ran no memorization suite (add memorization to --suites). Utility cost: "
        "held-out perplexity 17.800 → 19.800")


def comparison() -> dict:
    group = lambda name, found: {"group": name, "method": name, "params": "", "seeds": [1], "forgotten": found}  # noqa: E731
    return {
        "model": "gemma-3-270m", "thresholds": {"ma": 0.4, "el_10": 0.02},
        "groups": [group("original", {"forgotten": False, "resolved": True}),
                   group("di", {"forgotten": True, "resolved": True}),
                   group("ga", {"forgotten": False, "resolved": False})],
        "differences": {"vs_original": {
            "di": {"heldout_ppl": {"difference": 2.5, "ci95": [1.0, 4.0], "resolved": True},
                   "nlu_avg": {"difference": -0.01, "ci95": [-0.03, 0.01], "resolved": False}},
            "ga": {}}},
    }


def test_comparison_verdict_names_each_method_and_claims_only_resolved_gaps():
    assert comparison_verdict(comparison()) == {"status": "partly forgotten", "line": (
        "1 of 2 methods forgotten against the original model's unseen-text level (MA 0.400, EL-10 0.020; "
        "Jang et al. 2022); utility cost as the paired change from the original (≈: not resolved at 95 %): "
        "di forgotten, held-out perplexity +2.50 [+1.00, +4.00], NLU average -0.010 [-0.030, +0.010] ≈; "
        "ga not forgotten (unresolved), utility cost not measured.")}
    # Rows of an older comparison.json (no pooled rows, no level): nothing is claimed.
    assert comparison_verdict({"rows": [{"name": "di"}]})["status"] == "not assessed"


def test_demo_verdict_is_the_demos_own_line_or_pass_fail():
    line = "PASS: 0 of 8 forgotten values leaked; kept customers 33 of 34 (97 %)"
    assert demo_verdict({"verdict": line, "passed": True}) == {"status": "pass", "line": line}
    assert demo_verdict({"passed": False}) == {"status": "fail", "line": "FAIL"}


def test_every_report_kind_opens_with_its_verdict(tmp_path):
    demo = {"model": "tiny", "records": 4, "forgotten_customers": ["c1"], "kept_customers": ["c2"],
            "leak_before": [], "leak_after": [], "summary": {}, "timings_s": {}, "passed": False,
            "verdict": "FAIL: 1 of 8 forgotten values leaked"}
    cases = {"eval.json": (evaluation(), evaluation_verdict(evaluation())),
             "comparison.json": (comparison(), comparison_verdict(comparison())),
             "demo.json": (demo, demo_verdict(demo))}
    for name, (data, verdict) in cases.items():
        directory = tmp_path / name.split(".")[0]
        directory.mkdir()
        (directory / name).write_text(json.dumps(data))
        md_path, html_path = write_report(directory)
        lines = md_path.read_text().splitlines()
        assert lines[0].startswith("# ") and lines[1] == "" and lines[2] == f"**{md_text(verdict['line'])}**", name
        status = verdict["status"].replace(" ", "-")
        found = re.search(r"</h1>\n<p class=\"verdict ([\w-]+)\">(.*?)</p>", html_path.read_text())
        assert found and found.group(1) == status, name
        assert html.unescape(found.group(2)) == verdict["line"], name
        # Files that recorded no environment say so, rather than show a date, device or digest.
        assert md_path.read_text().endswith("## Provenance\n\nNot recorded: this directory's files predate the "
                                            "record of date, device, library versions and weight hashes.\n\n"), name
