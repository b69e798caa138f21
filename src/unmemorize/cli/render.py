"""What the command line shows: recipe events as Rich progress bars and lines on stderr, and the
tables of results on stdout."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from ..events import Events, StepRecord

out = Console()
err = Console(stderr=True)


def progress_bar(description: str) -> Callable[[int, int], None]:
    """A callback(done, total) that draws a transient progress bar (a line at the start and at
    the end when stderr is not a terminal)."""
    state: dict = {}

    def update(done: int, total: int) -> None:
        if total <= 0:  # nothing to do (e.g. MA alone: no EL decoding)
            return
        if not err.is_terminal:
            if done == 0 or done >= total:
                err.print(f"{description}: {done}/{total}", markup=False, highlight=False)
            return
        if "progress" not in state:
            progress = Progress(TextColumn(escape(description)), BarColumn(), MofNCompleteColumn(),
                                TimeElapsedColumn(), TimeRemainingColumn(), console=err, transient=True)
            progress.start()
            state["progress"], state["task"] = progress, progress.add_task(description, total=total)
        state["progress"].update(state["task"], completed=done, total=total)
        if done >= total:
            state.pop("progress").stop()

    return update


class RichEvents(Events):
    """Every event of every recipe, rendered on stderr."""

    def __init__(self) -> None:
        self.bar: Progress | None = None
        self.task = None

    def message(self, text: str) -> None:
        err.print(f"[dim]•[/dim] {escape(text)}", highlight=False)

    def stage(self, number: int, total: int, title: str) -> None:
        err.rule(f"[bold]Step {number}/{total}: {escape(title)}")

    def progress(self, label: str) -> Callable[[int, int], None]:
        return progress_bar(label)

    def training_started(self, total_steps: int) -> None:
        if self.bar is None:
            self.bar = Progress(
                TextColumn("[bold]training"), BarColumn(), MofNCompleteColumn(),
                TextColumn("loss {task.fields[loss]}"), TextColumn("{task.fields[speed]} tok/s"),
                TimeElapsedColumn(), TimeRemainingColumn(), console=err,
            )
            self.task = self.bar.add_task("steps", total=total_steps, loss="-", speed="-")
        self.bar.start()

    def step(self, record: StepRecord, total_steps: int) -> None:
        if self.bar is not None:
            self.bar.update(self.task, completed=record.step, loss=f"{record.loss:.4f}",
                            speed=f"{record.tokens_per_s:,.0f}")
        if not err.is_terminal:  # logs get one line per step instead of a redrawn bar
            err.print(f"step {record.step}/{total_steps} epoch {record.epoch} loss {record.loss:.4f} "
                      f"lr {record.lr:.2e} {record.tokens_per_s:,.0f} tok/s", highlight=False)

    def training_paused(self) -> None:
        if self.bar is not None:
            self.bar.stop()

    def training_finished(self) -> None:
        self.training_paused()
        self.bar = self.task = None

    def memorization(self, label: str, means: dict[str, float]) -> None:
        shown = "  ".join(f"{k.upper().replace('_', '-')} {v:.3f}" for k, v in means.items())
        err.print(f"[bold]memorization {escape(label)}:[/bold] {shown}")

    def leaks(self, title: str, entries: list[dict]) -> None:
        table = Table(title=title)
        for column in ("customer", "kind", "value", "leaked"):
            table.add_column(column)
        for entry in entries:
            for index, pii in enumerate(entry["pii"]):
                table.add_row(entry["customer"] if index == 0 else "", pii["kind"], escape(pii["value"]),
                              "[red]yes[/red]" if pii["leaked"] else "[green]no[/green]")
            table.add_section()
        out.print(table)


def error_line(text: str) -> None:
    # Escaped: paths and patterns in the message may hold [brackets] that are not markup.
    err.print(f"[red]error:[/red] {escape(text)}", highlight=False, soft_wrap=True)


def means_table(title: str, rows: list[tuple[str, dict[str, float]]]) -> Table:
    table = Table(title=title)
    table.add_column("")
    keys = list(rows[0][1])
    for key in keys:
        table.add_column(key.upper().replace("_", "-"), justify="right")
    for label, means in rows:  # EL is measured after an epoch only when asked: "-" otherwise
        table.add_row(label, *(f"{means[k]:.3f}" if k in means else "-" for k in keys))
    return table


def unlearn_summary(metrics: dict) -> None:
    rows = [("before", metrics["before"]["mean"])]
    rows += [(f"epoch {h['epoch']}", {k: v for k, v in h.items() if k not in ("epoch", "step")})
             for h in metrics["epochs"]]
    rows.append(("after", metrics["after"]["mean"]))
    out.print(means_table(f"Memorization of the forget set ({len(metrics['before']['samples'])} sequences)", rows))
    out.print(f"stopped: {metrics['stopped_because']}; wall time {metrics['wall_time_s']:.0f} s; "
              f"peak memory {metrics['peak_memory_mb'] / 1024:.1f} GiB", highlight=False)


def audit_table(payload: dict, title: str) -> Table:
    table = Table(title=title)
    table.add_column("id")
    table.add_column("tokens", justify="right")
    keys = list(payload["mean"])
    for key in keys:
        table.add_column(key.upper().replace("_", "-"), justify="right")
    for ident, tokens, sample in zip(payload["ids"], payload["tokens"], payload["samples"]):
        table.add_row(escape(str(ident)), str(tokens), *(f"{sample[k]:.3f}" for k in keys))
    table.add_section()
    table.add_row("mean", f"{sum(payload['tokens']) / len(payload['tokens']):.0f}",
                  *(f"{payload['mean'][k]:.3f}" for k in keys))
    return table


def evaluation_table(report: dict) -> Table:
    from ..reporting.tables import comparison_rows, evaluation_cells

    labels = list(report["models"])
    setting = (report.get("config") or {}).get("setting") or "custom"
    table = Table(title="Evaluation: " + " vs ".join(f"{l} = {report['models'][l]}" for l in labels)
                  + f" (setting: {setting}{' — a smoke run' if setting == 'quick' else ''})")
    table.add_column("metric", no_wrap=True)
    for label in labels:
        table.add_column(label, justify="right")
    if len(labels) == 2:
        table.add_column("change", justify="right")
    for key, values in comparison_rows(report):
        cells, change = evaluation_cells(report, key, values)
        if len(values) == 2:
            cells.append(change or "-")
        table.add_row(key, *cells)
    table.caption = "value [95 % interval]" + (
        "; change: paired bootstrap on the same items, ≈ = not resolved" if len(labels) == 2 else "")
    return table


def attack_table(report: dict) -> Table:
    """The recovery of each attack (the report's robustness table)."""
    from ..reporting.robustness import RECOVERY_HEADER, recovery_cells, robustness_pair

    _base, own = robustness_pair(report)
    table = Table(title="Robustness: " + " vs ".join(f"{l} = {n}" for l, n in report["models"].items()))
    for column in RECOVERY_HEADER:
        table.add_column(column, justify="left" if column in ("attack", "setting") else "right")
    for row in recovery_cells((own or {}).get("recovery", [])):
        table.add_row(*row)
    times = ", ".join(f"{a} {s:.0f} s" for a, s in ((own or {}).get("timings_s") or {}).items())
    table.caption = f"recovery: share of the forgetting undone (n/a: nothing was unlearned on that metric); times: {times}"
    return table


def comparison_table(comparison: dict) -> Table:
    """The pooled rows of comparison.md (value [95 % interval], the verdict, matched utility)."""
    from ..reporting.comparison import group_table

    el_key = next((c.removeprefix("forget_") for c in comparison.get("columns") or [] if c.startswith("forget_el")),
                  "el_10")
    header, body = group_table(comparison, el_key)
    table = Table(title=f"Comparison on {comparison['model']} (setting: {comparison.get('setting') or 'custom'})")
    for column in header:
        table.add_column(column, justify="left" if column in ("run", "method", "settings") else "right")
    for row in body:
        table.add_row(*row)
    return table


VERDICT_STYLES = {"forgotten": "bold green", "pass": "bold green", "not forgotten": "bold red", "fail": "bold red"}


def print_verdict(verdict: dict) -> None:
    """The verdict line a report opens with (reporting.verdict), last on the terminal."""
    style = VERDICT_STYLES.get(verdict["status"], "bold yellow")
    out.print(f"[{style}]{escape(verdict['line'])}[/{style}]", highlight=False, soft_wrap=True)


def demo_summary(result: dict) -> Table:
    s = result["summary"]
    table = Table(title=f"unmemorize demo on {result['model']} ({result['records']} synthetic customers)")
    for column, justify in (("", "left"), ("before", "right"), ("after", "right")):
        table.add_column(column, justify=justify)
    low, high = s["intervals"]["pii_leaked_after"]
    table.add_row("forgotten customers: own PII values extracted",
                  f"{s['pii_leaked_before']}/{s['pii_total']}", f"{s['pii_leaked_after']}/{s['pii_total']} [{low:.2f}, {high:.2f}]")
    table.add_row(f"forgotten customers' completions: anyone's PII, whole or ≥ {result['min_fragment']} letters/digits",
                  str(s["pii_exposed_before"]), str(s["pii_exposed_after"]))
    table.add_row("kept customers: PII values extracted",
                  f"{s['kept_pii_leaked_before']}/{s['kept_pii_total']}", f"{s['kept_pii_leaked_after']}/{s['kept_pii_total']}")
    table.add_row("MA, forgotten records", f"{s['forget_ma_before']:.3f}", f"{s['forget_ma_after']:.3f}")
    table.add_row("MA, kept records", f"{s['kept_ma_before']:.3f}", f"{s['kept_ma_after']:.3f}")
    table.add_row(f"general-text perplexity ({result['general_text']})", f"{s['general_ppl_before']:.2f}", f"{s['general_ppl_after']:.2f}")
    return table


def write_report(run_dir: Path, show_text: bool, eval_json: Path | None = None) -> None:
    """The report at the end of a command. The run's results are already on disk, so a report
    that cannot be written is a warning, not a failure."""
    from ..reporting.report import write_report as render

    try:
        _, html_path = render(run_dir, show_text=show_text, eval_json=eval_json)
    except Exception as error:  # noqa: BLE001 - any failure here must not turn a finished run into an error
        err.print(f"warning: the report was not written ({type(error).__name__}: {error})",
                  highlight=False, markup=False, soft_wrap=True)
        return
    out.print(f"report written to {html_path}", highlight=False)


def plan_table(plan: dict) -> Table:
    """The memory terms of the asked setting, and of the first one that fits the budget."""
    columns = [("asked", plan["asked"])]
    budget = plan.get("budget")
    if budget is not None and budget["fitting"] is not None and not budget["fits"]:
        columns.append(("fits the budget", budget["fitting"]))
    table = Table(title=f"Memory per process: {escape(plan['model'])} "
                        f"({plan['architecture']['parameters'] / 1e9:.2f} B parameters)")
    table.add_column("term")
    for label, _ in columns:
        table.add_column(label, justify="right")
    for term in plan["asked"]["terms"]:
        table.add_row(term, *(f"{column['terms'][term] / 2**30:.2f} GiB" for _, column in columns))
    table.add_section()
    table.add_row("total", *(f"{column['total'] / 2**30:.2f} GiB" for _, column in columns))
    return table


def scan_table(summary: dict) -> Table:
    """The highest-scoring flagged windows of a scan (ids and scores; text only with --show-text)."""
    score = summary["score"]
    table = Table(title=f"Flagged windows: {summary['flagged']} of {summary['windows']} "
                        f"({summary['documents']} documents), by {score}")
    for column in ("window", "chars", score, "MA", "extracted", "PII", *(("text",) if any("text" in r for r in summary["top"]) else ())):
        table.add_column(column, justify="right" if column in ("chars", score, "MA") else "left")
    for row in summary["top"]:
        attack = row.get("extraction")
        extracted = "-" if attack is None else "yes" if attack["exact"] else f"{attack['longest_prefix_match']} tok"
        cells = [escape(str(row["id"])), str(row["chars"]), f"{row[score]:.3f}", f"{row['ma']:.3f}", extracted,
                 ", ".join(row["pii"]) or "-"]
        if "text" in row:
            cells.append(escape(row["text"][:80]))
        table.add_row(*cells)
    return table
