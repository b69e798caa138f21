"""One handler per command: config objects in, a recipe called, its results rendered."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from ..config import (
    DEFAULT_FORGET, AuditConfig, CompareOptions, DemoConfig, EvalConfig, EvalOutputs, FollowUpEvaluation,
    ReportOptions, ScanConfig, UnlearnConfig, evaluation_after, evaluation_setting, quick_evaluation,
)
from ..errors import UserError
from ..paths import data_path, write_json

from .render import (
    RichEvents, audit_table, comparison_table, demo_summary, err, evaluation_table, out, scan_table, unlearn_summary,
    write_report,
)


def _evaluate(config: EvalConfig, json_path: Path | None) -> dict:
    from ..recipes.evaluate import run_eval

    report = run_eval(config, RichEvents())
    out.print(evaluation_table(report))
    timings = ", ".join(f"{label} {suite} {secs:.0f} s" for label, t in report["timings_s"].items()
                        for suite, secs in t.items())
    out.print(f"suite times: {timings}; total {report['wall_time_s']:.0f} s", highlight=False)
    if json_path:
        write_json(json_path, report)
        out.print(f"results written to {json_path}", highlight=False)
    return report


def unlearn(config: UnlearnConfig, follow: FollowUpEvaluation, explicit: set[str]) -> None:
    from ..recipes.unlearn import unlearn as run_unlearn
    from ..suites import check_inputs
    from ..training.loop import Interrupted

    if config.forget is None:
        default = data_path(DEFAULT_FORGET)
        if default is None:
            raise UserError(f"no --forget file given and the default {DEFAULT_FORGET} was not found "
                            "(set UNMEMORIZE_DATA to the shared data folder, or pass --forget FILE)")
        config = dataclasses.replace(config, forget=str(default))
    evaluation = None
    if follow.run_eval:
        if not config.out:
            raise UserError("--eval needs --out: the evaluation runs on the saved model")
        evaluation = evaluation_after(config, suites=follow.eval_suites)
        if follow.eval_quick:
            evaluation = quick_evaluation(evaluation)
        check_inputs(evaluation)  # missing evaluation data fails now, not after the training
    try:
        metrics = run_unlearn(config, RichEvents())
    except Interrupted as error:  # Ctrl-C in training: say where the checkpoint is
        err.print(str(error), highlight=False, soft_wrap=True, markup=False)
        raise SystemExit(130) from None
    unlearn_summary(metrics)
    if config.out:
        out.print(f"unlearned model written to {config.out}", highlight=False)
        write_report(Path(config.out), config.show_text)
    if evaluation is not None:
        _evaluate(evaluation, Path(config.out) / "eval.json")
        write_report(Path(config.out), config.show_text)  # again, now with the evaluation


def evaluate(config: EvalConfig, outputs: EvalOutputs, explicit: set[str]) -> None:
    chosen = {name for name, given in (("quick", outputs.quick), ("standard", outputs.standard)) if given}
    if config.setting != "custom":
        chosen.add(config.setting)
    if len(chosen) > 1:
        raise UserError(f"choose one evaluation setting, not {' and '.join(sorted(chosen))}")
    if chosen:
        config = evaluation_setting(config, chosen.pop(), explicit)
    json_path = Path(outputs.json_path) if outputs.json_path else None
    if outputs.out is not None and json_path is None:
        json_path = Path(outputs.out) / "eval.json"
    _evaluate(config, json_path)
    if json_path is not None:
        write_report(Path(outputs.out) if outputs.out else json_path.parent, outputs.show_text, eval_json=json_path)


def audit(config: AuditConfig, explicit: set[str]) -> None:
    from ..recipes.audit import run_audit

    payload = run_audit(config, RichEvents())
    out.print(audit_table(payload, f"Memorization of {Path(config.data).name} under {config.model}"))
    if config.json_path:
        out.print(f"written {config.json_path}", highlight=False)


def scan(config: ScanConfig, explicit: set[str]) -> None:
    from ..recipes.scan import run_scan

    summary = run_scan(config, RichEvents())
    if summary is None:  # a data-parallel process other than the first: the first writes
        return
    out.print(scan_table(summary))
    timing = summary["timing"]
    out.print(f"{summary['windows']} windows, {summary['tokens']} tokens in {timing['wall_s']:.0f} s "
              f"({timing['windows_per_s']:.2f} windows/s, {timing['tokens_per_s']:.0f} tokens/s); "
              f"written to {config.out}: forget.jsonl ({summary['flagged']} windows), scan.jsonl, scan.json",
              highlight=False)
    write_report(Path(config.out), config.show_text)


def report(options: ReportOptions, explicit: set[str]) -> None:
    from ..reporting.report import write_report

    md_path, html_path = write_report(Path(options.run_dir), show_text=options.show_text)
    out.print(f"report written to {html_path} and {md_path}", highlight=False)


def compare(options: CompareOptions, explicit: set[str]) -> None:
    from ..recipes.compare import load_config, run_compare

    comparison = run_compare(load_config(Path(options.config)), Path(options.out),
                             Path(options.runs_dir) if options.runs_dir else None, RichEvents(),
                             run_pending=not options.table_only)
    if not comparison["rows"]:
        raise UserError(f"no finished run in {options.out} to tabulate; run without --table-only first")
    out.print(comparison_table(comparison))
    out.print(f"written to {options.out}: comparison.md, comparison.csv, comparison.json, tradeoff.png", highlight=False)
    if comparison["pending"]:
        out.print(f"pending (not yet run): {', '.join(comparison['pending'])}", highlight=False)
    write_report(Path(options.out), False)


def demo(config: DemoConfig, explicit: set[str]) -> None:
    from rich.markup import escape

    from ..recipes.demo import run_demo, verdict

    result = run_demo(config, RichEvents())
    out.print(demo_summary(result))
    timings = ", ".join(f"{name} {secs:.0f} s" for name, secs in result["timings_s"].items())
    out.print(f"step times: {timings}", highlight=False)
    out.print(f"written to {config.out}: demo.json, corpus.jsonl, unlearned-model/", highlight=False)
    write_report(Path(config.out), True)  # the records are synthetic: the report shows their text
    style = "bold green" if result["passed"] else "bold red"
    out.print(f"[{style}]{escape(verdict(result))}[/{style}]")
    if not result["passed"]:
        raise SystemExit(1)


def models(explicit: set[str]) -> None:
    from rich.table import Table

    from ..models import registry_status

    table = Table(title="Model registry")
    for column in ("name", "description", "installed", "cached", "get it with"):
        table.add_column(column)
    for entry in registry_status():
        table.add_row(entry["name"], entry["description"], "yes" if entry["installed"] else "no",
                      "yes" if entry["cached"] else "no", entry.get("install_hint", ""))
    out.print(table)
