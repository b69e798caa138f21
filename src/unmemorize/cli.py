"""The `unmemorize` command: unlearn, audit, models."""

from __future__ import annotations

import json
import os
import sys
from dataclasses import fields
from pathlib import Path
from typing import Callable, Optional

import click
import typer
import yaml
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from .errors import UserError
from .paths import data_path

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="Make a causal language model stop regurgitating memorized text, and measure it.",
    pretty_exceptions_enable=False,
)
out = Console()
err = Console(stderr=True)

DEFAULT_FORGET = "extraction/forget_sets/lm_extraction_8_0.csv"


def _load_config(ctx: click.Context, param: click.Parameter, value: Optional[str]) -> Optional[str]:
    """--config file.yaml: its keys are the command's long option names; flags given on the
    command line override them (they become click's defaults for this invocation)."""
    if not value:
        return value
    path = Path(value)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError) as error:
        raise UserError(f"cannot read config {path}: {error}") from None
    if not isinstance(data, dict):
        raise UserError(f"config {path} must be a mapping of option names to values")
    known = {p.name for p in ctx.command.params if p.name != "config"}
    mapped = {}
    for key, item in data.items():
        name = str(key).lstrip("-").replace("-", "_")
        if name not in known:
            raise UserError(f"unknown key {key!r} in {path}; keys are the long option names")
        mapped[name] = item
    ctx.default_map = {**(ctx.default_map or {}), **mapped}
    return value


ConfigOption = typer.Option(
    None, "--config", help="YAML file of option values (keys: long option names); flags override it.",
    callback=_load_config, is_eager=True,
)


class RichReporter:
    """Progress bars and messages for a training run, on stderr."""

    def __init__(self) -> None:
        self.progress: Progress | None = None
        self.task = None

    def message(self, text: str) -> None:
        err.print(f"[dim]•[/dim] {text}")

    def start_training(self, total_steps: int) -> None:
        if self.progress is None:
            self.progress = Progress(
                TextColumn("[bold]unlearning"), BarColumn(), MofNCompleteColumn(),
                TextColumn("loss {task.fields[loss]}"), TextColumn("{task.fields[speed]} tok/s"),
                TimeElapsedColumn(), TimeRemainingColumn(), console=err,
            )
            self.task = self.progress.add_task("steps", total=total_steps, loss="-", speed="-")
        self.progress.start()

    def step(self, record) -> None:
        self.progress.update(self.task, completed=record.step, loss=f"{record.loss:.4f}",
                             speed=f"{record.tokens_per_s:,.0f}")
        if not err.is_terminal:  # logs get one line per step instead of a redrawn bar
            err.print(f"step {record.step}/{self.progress.tasks[0].total} epoch {record.epoch} "
                      f"loss {record.loss:.4f} lr {record.lr:.2e} {record.tokens_per_s:,.0f} tok/s")

    def end_training(self) -> None:
        if self.progress is not None:
            self.progress.stop()

    def evaluation(self, label: str) -> Callable[[int, int], None]:
        return _progress_callback(f"memorization ({label})")

    def memorization(self, label: str, means: dict[str, float]) -> None:
        shown = "  ".join(f"{k.upper().replace('_', '-')} {v:.3f}" for k, v in means.items())
        err.print(f"[bold]memorization {label}:[/bold] {shown}")


def _progress_callback(description: str) -> Callable[[int, int], None]:
    """A callback(done, total) that draws a transient progress bar."""
    state: dict = {}

    def update(done: int, total: int) -> None:
        if not err.is_terminal:  # logs: a line at the start and at the end
            if done == 0 or done >= total:
                err.print(f"{description}: {done}/{total}")
            return
        if "progress" not in state:
            progress = Progress(TextColumn(description), BarColumn(), MofNCompleteColumn(),
                                TimeElapsedColumn(), TimeRemainingColumn(), console=err, transient=True)
            progress.start()
            state["progress"], state["task"] = progress, progress.add_task(description, total=total)
        state["progress"].update(state["task"], completed=done, total=total)
        if done >= total:
            state.pop("progress").stop()

    return update


def _default_forget(forget: Optional[str]) -> str:
    if forget:
        return forget
    path = data_path(DEFAULT_FORGET)
    if path is None:
        raise UserError(
            f"no --forget file given and the default {DEFAULT_FORGET} was not found "
            "(set UNMEMORIZE_DATA to the shared data folder, or pass --forget FILE)"
        )
    return str(path)


def _means_table(title: str, rows: list[tuple[str, dict[str, float]]]) -> Table:
    table = Table(title=title)
    table.add_column("")
    keys = list(rows[0][1])
    for key in keys:
        table.add_column(key.upper().replace("_", "-"), justify="right")
    for label, means in rows:  # EL is measured after an epoch only when asked: "-" otherwise
        table.add_row(label, *(f"{means[k]:.3f}" if k in means else "-" for k in keys))
    return table


@app.command(epilog="Example: unmemorize unlearn --model gemma-3-270m --forget secrets.jsonl "
             "--method di --strength 10 --lora --lr 1e-3 --epochs 5 --out runs/forgot")
def unlearn(
    config: Optional[str] = ConfigOption,
    model: str = typer.Option("gemma-3-270m", help="Registry name, local directory, .gguf file or hub id."),
    forget: Optional[str] = typer.Option(None, help=f"Texts to forget (.jsonl/.csv/.txt/.npy, datasets dir, hf:NAME). Default: {DEFAULT_FORGET} under the data location."),
    out_dir: Optional[Path] = typer.Option(None, "--out", help="Output directory for the unlearned model, config and metrics."),
    overwrite: bool = typer.Option(False, help="Replace a non-empty --out directory."),
    method: str = typer.Option("di", help="Unlearning method: di, ga, gd, kl, npo, simnpo, task-vector, dpd (uniform imagination: di --focus all)."),
    strength: Optional[float] = typer.Option(None, help="di: imagination strength γ, how far the memorized token's logit is lowered (default 3)."),
    beta: Optional[float] = typer.Option(None, help="npo: β (default 0.1); simnpo: β (default 2.5)."),
    margin: Optional[float] = typer.Option(None, help="simnpo: margin γ (default 0)."),
    alpha: Optional[float] = typer.Option(None, help="task-vector: final weights θ − α·(θ_ft − θ) (default 1)."),
    dpd_lambda: Optional[float] = typer.Option(None, help="dpd: next-token distribution λ·p + (1−λ)·uniform (default 0.75); no training."),
    retain: Optional[str] = typer.Option(None, help="Text to keep (same formats as --forget): adds an NLL term (KL to the original for kl); gd and kl need it."),
    retain_weight: float = typer.Option(1.0, help="Weight of the retain term."),
    focus: str = typer.Option("all", help="Tokens that get imagination: all, entities, nouns, pii (names, e-mails, phones, addresses, account and other numbers), spans, regex:PATTERN."),
    focus_mode: str = typer.Option("hard", help="hard: train only on focus tokens; soft: weight them by --focus-weight."),
    focus_weight: float = typer.Option(10.0, help="Weight of focus tokens in soft mode."),
    lora: bool = typer.Option(True, "--lora/--no-lora", help="LoRA adapters (teacher = adapters off) or full fine-tuning (teacher = frozen copy)."),
    lora_r: int = typer.Option(8, help="LoRA rank."),
    lora_alpha: float = typer.Option(16.0, help="LoRA alpha."),
    lora_dropout: float = typer.Option(0.05, help="LoRA dropout."),
    lora_targets: Optional[list[str]] = typer.Option(None, help="Module names for LoRA (repeatable). Default: the attention projections."),
    save_adapter: bool = typer.Option(False, help="Also save the LoRA adapter alone (OUT/adapter)."),
    optimizer: str = typer.Option("adamw", help="adamw or sgd."),
    lr: float = typer.Option(1e-4, help="Learning rate."),
    epochs: int = typer.Option(1, help="Passes over the forget set."),
    max_steps: Optional[int] = typer.Option(None, help="Stop after this many optimizer steps."),
    batch_size: int = typer.Option(8, help="Sequences per micro-batch."),
    grad_accum: int = typer.Option(1, help="Micro-batches per optimizer step."),
    warmup_steps: int = typer.Option(0, help="Linear learning-rate warm-up steps."),
    weight_decay: float = typer.Option(0.0, help="Weight decay."),
    max_grad_norm: float = typer.Option(1.0, help="Gradient clipping norm (0 disables clipping)."),
    seed: int = typer.Option(42, help="Random seed."),
    max_length: int = typer.Option(200, help="Truncate sequences to this many tokens."),
    split: str = typer.Option("lines", help="Plain text: one example per 'lines' or 'paragraphs'."),
    text_column: str = typer.Option("text", help="Column holding the text (CSV, datasets)."),
    npy_tokenizer: Optional[str] = typer.Option(None, help="Tokenizer that produced .npy token ids (default: GPT-2 under the data location)."),
    limit: Optional[int] = typer.Option(None, help="Use only the first N examples."),
    el_n: list[int] = typer.Option([10], help="n of the extraction likelihood EL_n (repeatable)."),
    el_stride: int = typer.Option(10, help="Score EL on every k-th prefix (1 = exact; exact costs ~T²/2 generated tokens per sequence)."),
    el_every_epoch: bool = typer.Option(False, help="Also score EL after every epoch (MA always is)."),
    measure_el: bool = typer.Option(True, "--el/--no-el", help="Score EL before and after training (greedy decoding: the slow part on CPU); --no-el scores MA only."),
    eval_batch_size: int = typer.Option(8, help="Sequences per teacher-forced pass when measuring memorization."),
    el_batch_size: int = typer.Option(64, help="Prefixes decoded together when measuring EL."),
    stop_ma: Optional[str] = typer.Option(None, help="Stop once MA is at or below this number, or 'auto': the model's MA on unseen text (--reference)."),
    stop_el: Optional[str] = typer.Option(None, help="Stop once EL (first --el-n) is at or below this number, or 'auto'."),
    reference: Optional[str] = typer.Option(None, help="Unseen text for 'auto' thresholds (default: reference/pile.csv under the data location)."),
    reference_limit: int = typer.Option(32, help="Reference sequences used for 'auto' thresholds."),
    allow_pickle: bool = typer.Option(False, help="Allow loading pickle-based weights (.bin): runs code in the file."),
    trust_remote_code: bool = typer.Option(False, help="Allow model code from the model's repository to run."),
    cpu: bool = typer.Option(False, help="Run on the CPU even when a GPU is present."),
    max_examples: Optional[int] = typer.Option(None, help="Refuse a forget set of more than N examples (--limit truncates instead)."),
    checkpoint_every: Optional[int] = typer.Option(None, help="Write a checkpoint every N optimizer steps (to --checkpoint-dir)."),
    checkpoint_dir: Optional[Path] = typer.Option(None, help="Where checkpoints go (default: OUT.checkpoint). Removed once OUT is written."),
    resume: bool = typer.Option(False, help="Continue the run whose checkpoint is in --checkpoint-dir (default OUT.checkpoint); training options must be the same."),
    run_eval_after: bool = typer.Option(False, "--eval", help="Run the evaluation suite on the result beside the original (writes OUT/eval.json)."),
    eval_suites: str = typer.Option("memorization,nlu,nlg", help="Suites for --eval."),
    eval_quick: bool = typer.Option(True, "--eval-quick/--eval-full", help="--eval with the quick setting of `unmemorize eval --quick`."),
    report_samples: int = typer.Option(3, help="Forget prefixes whose continuations before and after the report shows (0: none)."),
    show_text: bool = typer.Option(False, help="Store and show forget-set text in OUT (samples.json, report); by default only token match masks."),
) -> None:
    """Unlearn a forget set and report memorization before, after each epoch, and after.

    Deliberate imagination (--method di) distils the model into itself with the memorized
    token's logit lowered by --strength. Baselines: ga, gd and kl (with --retain), npo, simnpo,
    task-vector, and dpd (private decoding at inference time: no training)."""
    from .train import Interrupted, UnlearnConfig, unlearn as run_unlearn

    cfg = UnlearnConfig(
        forget=_default_forget(forget), model=model, out=str(out_dir) if out_dir else None,
        overwrite=overwrite, method=method, imagination_strength=strength, beta=beta, margin=margin,
        task_vector_alpha=alpha, dpd_lambda=dpd_lambda, retain=retain, retain_weight=retain_weight, focus=focus,
        focus_mode=focus_mode, focus_weight=focus_weight, lora=lora, lora_r=lora_r,
        lora_alpha=lora_alpha, lora_dropout=lora_dropout, lora_targets=lora_targets or None,
        save_adapter=save_adapter, optimizer=optimizer, lr=lr, epochs=epochs, max_steps=max_steps,
        batch_size=batch_size, grad_accum=grad_accum, warmup_steps=warmup_steps,
        weight_decay=weight_decay, max_grad_norm=max_grad_norm, seed=seed, max_length=max_length,
        split=split, text_column=text_column, npy_tokenizer=npy_tokenizer, limit=limit,
        el_n=list(el_n), el_stride=el_stride, el_every_epoch=el_every_epoch, measure_el=measure_el,
        eval_batch_size=eval_batch_size, el_batch_size=el_batch_size, stop_ma=stop_ma,
        stop_el=stop_el, reference=reference, reference_limit=reference_limit, allow_pickle=allow_pickle, trust_remote_code=trust_remote_code, cpu=cpu,
        max_examples=max_examples, checkpoint_every=checkpoint_every,
        checkpoint_dir=str(checkpoint_dir) if checkpoint_dir else None, resume=resume,
        report_samples=report_samples, show_text=show_text,
    )
    eval_cfg = None
    if run_eval_after:
        if not cfg.out:
            raise UserError("--eval needs --out: the evaluation runs on the saved model")
        from .evaluate import EvalConfig, check_inputs, quick_settings

        eval_cfg = EvalConfig(
            model=cfg.out, original=cfg.model, forget=cfg.forget,
            suites=[x.strip() for x in eval_suites.split(",") if x.strip()], limit=cfg.limit,
            max_length=cfg.max_length, el_n=list(cfg.el_n), el_stride=cfg.el_stride,
            seed=cfg.seed, allow_pickle=cfg.allow_pickle, trust_remote_code=cfg.trust_remote_code,
        )
        if eval_quick:
            quick_settings(eval_cfg)
        # Unknown suites or missing evaluation data fail now, not after the training they follow.
        eval_cfg.validate()
        check_inputs(eval_cfg)
    try:
        metrics = run_unlearn(cfg, RichReporter())
    except Interrupted as error:  # Ctrl-C in training: say where the checkpoint is
        err.print(str(error), highlight=False, soft_wrap=True, markup=False)
        raise SystemExit(130) from None  # typer would turn KeyboardInterrupt into a silent return
    rows = [("before", metrics["before"]["mean"])]
    rows += [(f"epoch {h['epoch']}", {k: v for k, v in h.items() if k not in ("epoch", "step")}) for h in metrics["epochs"]]
    rows.append(("after", metrics["after"]["mean"]))
    out.print(_means_table(f"Memorization of the forget set ({len(metrics['before']['samples'])} sequences)", rows))
    out.print(f"stopped: {metrics['stopped_because']}; wall time {metrics['wall_time_s']:.0f} s; "
              f"peak memory {metrics['peak_memory_mb'] / 1024:.1f} GiB")
    if cfg.out:
        out.print(f"unlearned model written to {cfg.out}")
        _write_report(Path(cfg.out), show_text)
    if eval_cfg is not None:
        run_evaluation(eval_cfg, Path(cfg.out) / "eval.json")
        _write_report(Path(cfg.out), show_text)  # again, now with the evaluation


@app.command(epilog="Example: unmemorize audit --model gemma-3-270m --data forget.csv --el-n 10 --json audit.json")
def audit(
    config: Optional[str] = ConfigOption,
    model: str = typer.Option("gemma-3-270m", help="Registry name, local directory, .gguf file or hub id."),
    data: str = typer.Option(..., help="Texts to measure (.jsonl/.csv/.txt/.npy, datasets dir, hf:NAME)."),
    el_n: list[int] = typer.Option([10], help="n of EL_n (repeatable)."),
    el_stride: int = typer.Option(1, help="Score EL on every k-th prefix (1 = exact)."),
    max_length: int = typer.Option(200, help="Truncate sequences to this many tokens."),
    batch_size: int = typer.Option(8, help="Sequences per teacher-forced pass."),
    el_batch_size: int = typer.Option(64, help="Prefixes decoded together for EL."),
    split: str = typer.Option("lines", help="Plain text: 'lines' or 'paragraphs'."),
    text_column: str = typer.Option("text", help="Column holding the text."),
    npy_tokenizer: Optional[str] = typer.Option(None, help="Tokenizer that produced .npy token ids."),
    limit: Optional[int] = typer.Option(None, help="Use only the first N examples."),
    json_path: Optional[Path] = typer.Option(None, "--json", help="Write per-sample and mean results here."),
    allow_pickle: bool = typer.Option(False, help="Allow loading pickle-based weights (.bin)."),
    trust_remote_code: bool = typer.Option(False, help="Allow model code from the model's repository to run."),
) -> None:
    """Measure memorization (MA, EL_n) of a model on a set of texts, per sample and on average."""
    from .data import load_examples, tokenize_examples
    from .metrics.memorization import memorization
    from .models import load_model

    if min(el_stride, batch_size, el_batch_size, *el_n) < 1:
        raise UserError("--el-stride, --batch-size, --el-batch-size and --el-n must be at least 1")
    examples = load_examples(data, split=split, text_column=text_column, npy_tokenizer=npy_tokenizer, limit=limit)
    loaded = load_model(model, allow_pickle=allow_pickle, trust_remote_code=trust_remote_code,
                        progress=lambda m: err.print(f"[dim]•[/dim] {m}"))
    tokenized = tokenize_examples(examples, loaded.tokenizer, max_length)
    result = memorization(
        loaded.model, [t.input_ids for t in tokenized], ns=tuple(el_n), el_stride=el_stride,
        batch_size=batch_size, el_batch_size=el_batch_size, pad_token_id=loaded.tokenizer.pad_token_id,
        progress=_progress_callback("memorization"),
    )
    table = Table(title=f"Memorization of {Path(data).name} under {model}")
    table.add_column("id")
    table.add_column("tokens", justify="right")
    keys = list(result.means())
    for key in keys:
        table.add_column(key.upper().replace("_", "-"), justify="right")
    for item, sample in zip(tokenized, result.per_sample()):
        table.add_row(item.example.id, str(len(item.input_ids)), *(f"{sample[k]:.3f}" for k in keys))
    table.add_section()
    table.add_row("mean", f"{sum(len(t.input_ids) for t in tokenized) / len(tokenized):.0f}",
                  *(f"{result.means()[k]:.3f}" for k in keys))
    out.print(table)
    if json_path:
        payload = result.to_json()
        payload.update(model=model, data=str(data), el_stride=el_stride, max_length=max_length,
                       ids=[t.example.id for t in tokenized])
        json_path.write_text(json.dumps(payload, indent=2))
        out.print(f"written {json_path}")


class RichEvalReporter:
    def message(self, text: str) -> None:
        err.print(f"[dim]•[/dim] {text}")

    def progress(self, label: str) -> Callable[[int, int], None]:
        return _progress_callback(label)


def _comparison_table(report: dict) -> Table:
    from .evaluate import comparison_rows

    labels = list(report["models"])
    table = Table(title="Evaluation: " + " vs ".join(f"{l} = {report['models'][l]}" for l in labels))
    table.add_column("metric", no_wrap=True)
    for label in labels:
        table.add_column(label, justify="right")
    if len(labels) == 2:
        table.add_column("change", justify="right")
    for key, values in comparison_rows(report):
        cells = ["-" if v is None else f"{v:.4g}" for v in values]
        if len(values) == 2:
            a, b = values
            cells.append("-" if a is None or b is None else f"{b - a:+.4g}")
        table.add_row(key, *cells)
    return table


def run_evaluation(cfg, json_path: Optional[Path]) -> dict:
    from .evaluate import run_eval, write_json

    report = run_eval(cfg, RichEvalReporter())
    out.print(_comparison_table(report))
    timings = ", ".join(f"{label} {suite} {secs:.0f} s" for label, t in report["timings_s"].items() for suite, secs in t.items())
    out.print(f"suite times: {timings}; total {report['wall_time_s']:.0f} s")
    if json_path:
        write_json(report, json_path)
        out.print(f"results written to {json_path}")
    return report


@app.command("eval", epilog="Example: unmemorize eval --model runs/forgot --original gemma-3-270m "
             "--forget forget.csv --suites memorization,nlu --nlu-limit 100 --json eval.json")
def eval_command(
    config: Optional[str] = ConfigOption,
    model: str = typer.Option("gemma-3-270m", help="The model to evaluate (registry name, directory, .gguf, hub id)."),
    original: Optional[str] = typer.Option(None, help="The model it came from: evaluated beside it, and the judge of generation perplexity."),
    forget: Optional[str] = typer.Option(None, help="The texts that were to be forgotten (needed by the memorization suite)."),
    judge: Optional[str] = typer.Option(None, help="Model that scores the perplexity of generations (default: --original, else --model)."),
    suites: str = typer.Option("memorization,nlu,nlg", help="Comma-separated: memorization, nlu, nlg."),
    reference: Optional[str] = typer.Option(None, help="Unseen text: the 'forgotten' level and the MIA non-members (default reference/pile.csv)."),
    reference_limit: Optional[int] = typer.Option(None, help="Reference documents used (default: as many as the forget set)."),
    limit: Optional[int] = typer.Option(None, help="Use only the first N forget examples."),
    max_length: int = typer.Option(200, help="Truncate forget/reference sequences to this many tokens."),
    el_n: list[int] = typer.Option([10], help="n of EL_n (repeatable)."),
    el_stride: int = typer.Option(10, help="Score EL on every k-th prefix (1 = exact)."),
    paper_el: bool = typer.Option(True, "--paper-el/--no-paper-el", help="Also report EL as the paper's code computes it (sampled, cut every 40 tokens)."),
    paper_el_limit: Optional[int] = typer.Option(None, help="Score the paper-code EL on the first N forget samples only."),
    greedy_el: bool = typer.Option(True, "--greedy-el/--no-greedy-el", help="Score greedy EL_n (--no-greedy-el: MA only; greedy decoding is the slow part on CPU)."),
    extraction_prefix: int = typer.Option(100, help="Prefix tokens of the extraction attack."),
    extraction_suffix: int = typer.Option(50, help="Suffix tokens that must be reproduced exactly."),
    mia_k_percent: float = typer.Option(20.0, help="k of min-k% and min-k%++."),
    nlu_tasks: Optional[str] = typer.Option(None, help="Comma-separated NLU tasks (default: the paper's six)."),
    nlu_limit: Optional[int] = typer.Option(None, help="A fixed seeded subset of N instances per task."),
    nlu_dir: Optional[str] = typer.Option(None, help="Folder of NLU files (default nlu/ under the data location)."),
    nlg_prompts: Optional[str] = typer.Option(None, help="Prompt documents for generation (default reference/wikitext.csv)."),
    nlg_limit: int = typer.Option(100, help="Prompts to continue."),
    nlg_max_new_tokens: int = typer.Option(128, help="Tokens generated per prompt."),
    nlg_heldout_limit: int = typer.Option(200, help="WikiText documents for held-out perplexity (0 skips it)."),
    quick: bool = typer.Option(False, help="Quick setting for 2 CPU cores: --nlu-limit 20 --nlg-limit 32 --nlg-max-new-tokens 48 --nlg-heldout-limit 10 --no-greedy-el --paper-el-limit 8."),
    seed: int = typer.Option(0, help="Seed of every sampled quantity."),
    batch_size: int = typer.Option(8, help="Sequences per teacher-forced pass."),
    el_batch_size: int = typer.Option(64, help="Prefixes decoded together."),
    json_path: Optional[Path] = typer.Option(None, "--json", help="Write the results here (keyed suite.task.metric); report.md/html go beside it."),
    out_dir: Optional[Path] = typer.Option(None, "--out", help="Write OUT/eval.json (unless --json) and the report to this directory."),
    show_text: bool = typer.Option(False, help="Show forget-set text the directory's run stored (unlearn --show-text) in the report."),
    allow_pickle: bool = typer.Option(False, help="Allow loading pickle-based weights (.bin)."),
    trust_remote_code: bool = typer.Option(False, help="Allow model code from the model's repository to run."),
    device: Optional[str] = typer.Option(None, help="cpu, cuda or cuda:N (default: the GPU when there is one)."),
) -> None:
    """Evaluate memorization and privacy leaks, NLU and generation; original vs unlearned."""
    from .evaluate import EvalConfig, quick_settings

    cfg = EvalConfig(
        model=model, original=original, judge=judge, forget=forget,
        suites=[s.strip() for s in suites.split(",") if s.strip()], reference=reference,
        reference_limit=reference_limit, limit=limit, max_length=max_length, el_n=list(el_n),
        el_stride=el_stride, paper_el=paper_el, paper_el_limit=paper_el_limit, greedy_el=greedy_el,
        extraction_prefix=extraction_prefix,
        extraction_suffix=extraction_suffix, mia_k_percent=mia_k_percent,
        nlu_tasks=[t.strip() for t in nlu_tasks.split(",")] if nlu_tasks else None,
        nlu_limit=nlu_limit, nlu_dir=nlu_dir, nlg_prompts=nlg_prompts, nlg_limit=nlg_limit,
        nlg_max_new_tokens=nlg_max_new_tokens, nlg_heldout_limit=nlg_heldout_limit, seed=seed,
        batch_size=batch_size, el_batch_size=el_batch_size, allow_pickle=allow_pickle,
        trust_remote_code=trust_remote_code, device=device,
    )
    if quick:
        quick_settings(cfg)
    if out_dir is not None and json_path is None:
        json_path = out_dir / "eval.json"
    run_evaluation(cfg, json_path)
    if json_path is not None:
        _write_report(out_dir or json_path.parent, show_text, eval_json=json_path)


@app.command("report", epilog="Example: unmemorize report runs/forgot --show-text")
def report_command(
    run_dir: Path = typer.Argument(..., help="An unlearn, eval or compare output directory."),
    show_text: bool = typer.Option(False, help="Show the forget-set text the run stored (unlearn --show-text); redacted otherwise."),
) -> None:
    """Re-render report.md and report.html (and an unlearned model's README.md) from a run directory."""
    from .report import write_report

    md_path, html_path = write_report(run_dir, show_text=show_text)
    out.print(f"report written to {html_path} and {md_path}", highlight=False)


def _write_report(run_dir: Path, show_text: bool, eval_json: Optional[Path] = None) -> None:
    """The report at the end of a command. The run's results are already on disk, so a report
    that cannot be written is a warning, not a failure."""
    from .report import write_report

    try:
        _, html_path = write_report(run_dir, show_text=show_text, eval_json=eval_json)
    except Exception as error:  # noqa: BLE001 - any failure here must not turn a finished run into an error
        err.print(f"warning: the report was not written ({type(error).__name__}: {error})",
                  highlight=False, markup=False, soft_wrap=True)
        return
    out.print(f"report written to {html_path}", highlight=False)


class RichCompareReporter:
    """Which run and which stage, then the training and evaluation progress of each."""

    def message(self, text: str) -> None:
        err.print(f"[bold cyan]compare[/bold cyan] {escape(text)}", highlight=False)

    def training(self) -> RichReporter:
        return RichReporter()

    def evaluation(self) -> RichEvalReporter:
        return RichEvalReporter()


# compare and demo take help= (literals joined into paragraphs): Typer keeps a docstring's
# line breaks in --help, which breaks a long description mid-line.
@app.command("compare", help=(
    "Unlearn with several methods/settings, evaluate each, and tabulate memorization vs utility."
    "\n\nEvery run is evaluated beside the original; the table and the trade-off plot are "
    "rewritten after each run. Finished runs are skipped when run again."),
    epilog="Example: unmemorize compare --config benchmarks/paper_comparison.yaml "
           "--out results/cmp --runs-dir /tmp/cmp-runs")
def compare_command(
    config_path: Path = typer.Option(..., "--config", help="YAML: model, forget, optional retain, shared unlearn options, eval: {quick, suites, ...}, runs: [{name, method, ...}]."),
    out_dir: Path = typer.Option(..., "--out", help="Results: comparison.md/csv/json, tradeoff.png/csv, evals/NAME.json (small files only)."),
    runs_dir: Optional[Path] = typer.Option(None, help="Where each run's model weights go (default OUT/runs)."),
    table_only: bool = typer.Option(False, help="Train and evaluate nothing: rewrite the table and plot from the runs already finished."),
) -> None:
    from .compare import load_config, run_compare

    comparison = run_compare(load_config(config_path), out_dir, runs_dir, RichCompareReporter(),
                             run_pending=not table_only)
    if not comparison["rows"]:
        raise UserError(f"no finished run in {out_dir} to tabulate; run without --table-only first")
    table = Table(title=f"Comparison on {comparison['model']}")
    shown = ("run", "method", "forget_ma", "reference_ma", "extractable", "mia_loss_auc", "nlu_avg", "mauve",
             "heldout_ppl", "steps")
    columns = [k for k in comparison["rows"][0] if k in shown or k.startswith("forget_el")]
    for key in columns:
        table.add_column(key, justify="left" if key in ("run", "method") else "right")
    for row in comparison["rows"]:
        table.add_row(*("-" if row[k] is None else f"{row[k]:.3f}" if isinstance(row[k], float) else str(row[k])
                        for k in columns))
    out.print(table)
    out.print(f"written to {out_dir}: comparison.md, comparison.csv, comparison.json, tradeoff.png", highlight=False)
    if comparison["pending"]:
        out.print(f"pending (not yet run): {', '.join(comparison['pending'])}", highlight=False)
    _write_report(out_dir, False)


class RichDemoReporter(RichReporter):
    """The demo labels its own progress bars (fine-tuning, completing prompts, perplexity)."""

    def evaluation(self, label: str) -> Callable[[int, int], None]:
        return _progress_callback(label)


@app.command(help=(
    "The privacy story end to end: a model leaks synthetic customers' PII; forget some of them."
    "\n\nMakes a model memorize synthetic customer records, shows the PII it leaks, unlearns some "
    "customers (two by default) with deliberate imagination on their PII, and shows that their PII "
    "is gone while the other customers' is not. Exit code 0 when the forgotten customers' PII is no "
    "longer extracted, 1 otherwise."),
    epilog="Example: unmemorize demo --out unmemorize-demo")
def demo(
    out_dir: Path = typer.Option(Path("unmemorize-demo"), "--out", help="Output directory (a new or empty one, or an earlier demo's, which is replaced)."),
    model: str = typer.Option("gemma-3-270m", help="Registry name, local directory, .gguf file or hub id."),
    seed: int = typer.Option(0, help="Seed of the synthetic corpus and of training."),
    records: int = typer.Option(12, help="Synthetic customer records the model memorizes."),
    forget_customers: int = typer.Option(2, help="How many of them to forget (the first ones)."),
    leak_max_epochs: int = typer.Option(16, help="At most this many passes of the leak fine-tune (it stops once the PII is memorized)."),
    strength: float = typer.Option(20.0, help="Imagination strength of the unlearning step."),
    unlearn_lr: float = typer.Option(2e-3, help="Learning rate of the unlearning step."),
    unlearn_epochs: int = typer.Option(12, help="Passes of the unlearning step over the forgotten records (one step each)."),
    retain_weight: float = typer.Option(1.0, help="Weight of the kept customers' records as retain text in the unlearning step (0: pure deliberate imagination)."),
) -> None:
    from .demo import DemoConfig, run_demo, summary_table, verdict

    cfg = DemoConfig(
        out=str(out_dir), model=model, seed=seed, records=records, forget_customers=forget_customers,
        leak_max_epochs=leak_max_epochs, strength=strength, unlearn_lr=unlearn_lr, unlearn_epochs=unlearn_epochs,
        retain_weight=retain_weight,
    )
    result = run_demo(cfg, RichDemoReporter(), out)
    out.print(summary_table(result))
    timings = ", ".join(f"{name} {secs:.0f} s" for name, secs in result["timings_s"].items())
    out.print(f"step times: {timings}", highlight=False)
    out.print(f"written to {out_dir}: demo.json, corpus.jsonl, unlearned-model/", highlight=False)
    _write_report(out_dir, True)  # the records are synthetic: the report shows their text
    style = "bold green" if result["passed"] else "bold red"
    out.print(f"[{style}]{escape(verdict(result))}[/{style}]")
    if not result["passed"]:
        raise typer.Exit(1)


@app.command(epilog="Example: unmemorize models")
def models() -> None:
    """List the registry of named models, what is installed and what is cached."""
    from .models import registry_status

    table = Table(title="Model registry")
    for column in ("name", "description", "installed", "cached", "get it with"):
        table.add_column(column)
    for entry in registry_status():
        table.add_row(entry["name"], entry["description"], "yes" if entry["installed"] else "no",
                      "yes" if entry["cached"] else "no", entry.get("install_hint", ""))
    out.print(table)


def _quiet_libraries() -> None:
    # Our own progress replaces the per-call bars and notices of transformers.
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    import warnings

    warnings.filterwarnings("ignore", category=FutureWarning)


def main(argv: list[str] | None = None) -> None:
    """Entry point: user errors are one line on stderr and exit code 2, never a traceback."""
    _quiet_libraries()
    try:
        code = app(args=argv, standalone_mode=False)
    except UserError as error:
        # Escaped: paths and patterns in the message may hold [brackets] that are not markup.
        err.print(f"[red]error:[/red] {escape(str(error))}", highlight=False, soft_wrap=True)
        sys.exit(2)
    except click.exceptions.Abort:
        err.print("interrupted")
        sys.exit(130)
    except click.exceptions.ClickException as error:
        error.show()
        sys.exit(error.exit_code)
    except KeyboardInterrupt:
        err.print("interrupted")
        sys.exit(130)
    # Without standalone mode typer returns exit codes instead of exiting: Ctrl-C comes back as 130.
    if isinstance(code, int) and code != 0:
        if code == 130:
            err.print("interrupted")
        sys.exit(code)


if __name__ == "__main__":
    main()
