"""One handler per command: config objects in, a recipe called, its results rendered."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from ..config import (
    DEFAULT_FORGET, AttackConfig, AuditConfig, CompareOptions, DemoConfig, EvalConfig, EvalOutputs, FollowUpEvaluation,
    PlanConfig, ReportOptions, ScanConfig, UnlearnConfig, evaluation_after, evaluation_setting, quick_evaluation,
)
from ..errors import UserError
from ..paths import data_path, write_json

from .render import (
    RichEvents, attack_table, audit_table, comparison_table, demo_summary, err, evaluation_table, out, plan_table, print_verdict, scan_table, unlearn_summary,
    write_report,
)


def _main_process() -> bool:
    from ..metrics.distributed import processes

    return processes()[0] == 0


def _evaluate(config: EvalConfig, json_path: Path | None, table=evaluation_table) -> dict:
    from ..recipes.evaluate import run_eval

    report = run_eval(config, RichEvents())
    if not _main_process():
        return report
    out.print(table(report))
    timings = ", ".join(f"{label} {suite} {secs:.0f} s" for label, t in report["timings_s"].items()
                        for suite, secs in t.items())
    out.print(f"suite times: {timings}; total {report['wall_time_s']:.0f} s", highlight=False)
    if json_path:
        write_json(json_path, report)
        out.print(f"results written to {json_path}", highlight=False)
    return report


def unlearn(config: UnlearnConfig, follow: FollowUpEvaluation, explicit: set[str]) -> None:
    from ..recipes.unlearn import unlearn as run_unlearn
    from ..reporting.verdict import unlearning_verdict
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
    main_process = _main_process()  # under a launch, the main process prints and writes
    if main_process:
        unlearn_summary(metrics)
    if config.out and main_process:
        out.print(f"unlearned model written to {config.out}", highlight=False)
        write_report(Path(config.out), config.show_text)
    report = None
    if evaluation is not None:  # every process: the evaluation's jobs are shared
        report = _evaluate(evaluation, Path(config.out) / "eval.json")
        if main_process:
            write_report(Path(config.out), config.show_text)  # again, now with the evaluation
    if main_process:
        print_verdict(unlearning_verdict(metrics, report))  # the report's first line, last here


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
    from ..reporting.verdict import evaluation_verdict

    report = _evaluate(config, json_path)
    main_process = _main_process()
    if json_path is not None and main_process:
        write_report(Path(outputs.out) if outputs.out else json_path.parent, outputs.show_text, eval_json=json_path)
    if main_process:
        print_verdict(evaluation_verdict(report))


def attack(config: AttackConfig, explicit: set[str]) -> None:
    from ..recipes.attack import attack_evaluation

    json_path = Path(config.out) / "eval.json"
    report = _evaluate(attack_evaluation(config), json_path, table=attack_table)
    write_report(Path(config.out), False, eval_json=json_path)
    return report


def audit(config: AuditConfig, explicit: set[str]) -> None:
    from ..recipes.audit import run_audit

    payload = run_audit(config, RichEvents())
    if not _main_process():
        return
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
    from ..reporting.verdict import comparison_verdict

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
    print_verdict(comparison_verdict(comparison))


def demo(config: DemoConfig, explicit: set[str]) -> None:
    from rich.markup import escape

    from ..recipes.demo import run_demo

    result = run_demo(config, RichEvents())
    out.print(demo_summary(result))
    timings = ", ".join(f"{name} {secs:.0f} s" for name, secs in result["timings_s"].items())
    out.print(f"step times: {timings}", highlight=False)
    out.print(f"written to {config.out}: demo.json, corpus.jsonl, unlearned-model/", highlight=False)
    write_report(Path(config.out), True)  # the records are synthetic: the report shows their text
    style = "bold green" if result["passed"] else "bold red"
    out.print(f"[{style}]{escape(result['verdict'])}[/{style}]")
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


def plan(config: PlanConfig, explicit: set[str]) -> None:
    from ..recipes.plan import run_plan

    result = run_plan(config, RichEvents())
    out.print(plan_table(result))
    asked, budget = result["asked"], result.get("budget")
    out.print(f"config: {result['config_source']}; trainable parameters {result['trainable_parameters']:,}",
              highlight=False)
    if budget is not None:
        size = f"{budget['bytes_per_process'] / 2**30:.1f} GiB per process × {budget['processes']}"
        if budget["fits"]:
            out.print(f"fits {size}: {asked['command']}", highlight=False)
        elif budget["fitting"] is None:
            out.print(f"nothing tried fits {size} (every strategy, micro-batch 1, LoRA)", highlight=False)
        else:
            out.print(f"does not fit {size}; the smallest change that does: {budget['fitting']['command']}",
                      highlight=False)
    if config.json_path:
        write_json(Path(config.json_path), result)
        out.print(f"plan written to {config.json_path}", highlight=False)
