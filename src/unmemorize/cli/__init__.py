"""The `unmemorize` command: parse, call a recipe, render its events.

Each command is a row of `COMMANDS`: its name, the config classes its options come from
(`unmemorize.config`; options are generated from their fields), its handler (`commands`), and
whether it takes a ``--config`` YAML file of option values."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Callable

import click

from ..config import (
    AttackConfig, AuditConfig, CompareOptions, DemoConfig, EvalConfig, EvalOutputs, FollowUpEvaluation, PlanConfig,
    ReportOptions, RuntimeOptions, ScanConfig, UnlearnConfig,
)
from ..errors import UserError
from . import commands
from .options import build_configs, parameters


@dataclass(frozen=True)
class Command:
    name: str
    classes: tuple[type, ...]
    handler: Callable
    help: str
    epilog: str = ""
    yaml: bool = True


COMMANDS = (
    Command("unlearn", (UnlearnConfig, FollowUpEvaluation), commands.unlearn,
            "Unlearn a forget set and report memorization before, after each epoch, and after.\n\n"
            "Deliberate imagination (--method di) distils the model into itself with the memorized token's "
            "logit lowered by --strength. Baselines: ga, gd and kl (with --retain), npo, simnpo, task-vector, "
            "and dpd (private decoding at inference time: no training); finetune learns instead.",
            "Example: unmemorize unlearn --model gemma-3-270m --forget secrets.jsonl --method di --strength 10 "
            "--lora --lr 2e-3 --epochs 5 --stop-ma auto --out runs/forgot"),
    Command("audit", (AuditConfig,), commands.audit,
            "Measure memorization (MA, EL_n) of a model on a set of texts, per sample and on average.",
            "Example: unmemorize audit --model gemma-3-270m --data forget.csv --el-n 10 --json audit.json"),
    Command("scan", (ScanConfig,), commands.scan,
            "Find what a model memorized in a corpus, and write it as a forget set.\n\n"
            "Cuts each document into token windows, scores every window (MA, loss, zlib, min-k%, min-k%++) in one "
            "teacher-forced pass, flags those above the unseen reference text's level at --fpr, runs the extraction "
            "attack on the highest-scoring, and writes OUT/forget.jsonl (which `unlearn --forget` takes as it is), "
            "OUT/scan.jsonl (every window's scores, no text unless --show-text) and a redacted report. "
            "Resumable (--resume) and data-parallel under torchrun or accelerate launch.",
            "Example: unmemorize scan --model gemma-3-270m --corpus 'data/*.jsonl' --pii --out scan && "
            "unmemorize unlearn --forget scan/forget.jsonl --focus spans --out forgot"),
    Command("eval", (EvalConfig, EvalOutputs), commands.evaluate,
            "Evaluate memorization and privacy leaks, NLU, generation and dialogue; original vs unlearned.",
            "Example: unmemorize eval --model runs/forgot --original gemma-3-270m --forget forget.csv "
            "--suites memorization,nlu --nlu-limit 100 --json eval.json"),
    Command("attack", (AttackConfig,), commands.attack,
            "Try to bring forgotten text back: quantize, relearn, vary the prompt, read inner layers.\n\n"
            "Scores the forget set's MA and extraction (EL with --robustness-el) on the original and the "
            "unlearned model, as they are and under each attack, and the recovery: (after attack − after "
            "unlearning) / (before − after unlearning). The same as eval --suites robustness.",
            "Example: unmemorize attack --model runs/forgot --original gemma-3-270m --forget forget.csv "
            "--attacks quantize,relearn --out runs/forgot-attack"),
    Command("report", (ReportOptions,), commands.report,
            "Re-render report.md and report.html (and an unlearned model's README.md) from a run directory.",
            "Example: unmemorize report runs/forgot --show-text", yaml=False),
    Command("compare", (CompareOptions,), commands.compare,
            "Unlearn with several methods/settings, evaluate each, and tabulate memorization vs utility.\n\n"
            "Every run is evaluated beside the original; the table and the trade-off plot are rewritten after "
            "each run. Finished runs are skipped when run again.",
            "Example: unmemorize compare --config benchmarks/paper_comparison.yaml --out results/cmp "
            "--runs-dir /tmp/cmp-runs", yaml=False),
    Command("demo", (DemoConfig,), commands.demo,
            "The privacy story end to end: a model leaks synthetic customers' PII; forget some of them.\n\n"
            "Makes a model memorize synthetic customer records, shows the PII it leaks, unlearns some customers "
            "(two by default) with deliberate imagination on their PII, and shows that their PII is gone while "
            "the other customers' is not. Exit code 0 when the forgotten customers' PII is no longer "
            "extracted, 1 otherwise.",
            "Example: unmemorize demo --out unmemorize-demo"),
    Command("plan", (PlanConfig,), commands.plan,
            "Print the memory one training process needs (weights, teacher, gradients, optimizer state, "
            "activations, logits) and, with a budget, the smallest setting that fits it.",
            "Example: unmemorize plan --model llama-3-8b --method di --no-lora --batch-size 8 --max-length 512 "
            "--gpus 8x80GB"),
    Command("models", (), commands.models, "List the registry of named models, what is installed and what is cached.",
            "Example: unmemorize models", yaml=False),
)

YAML_OPTION = "config_file"


def _click_command(spec: Command) -> click.Command:
    def callback(**values):
        ctx = click.get_current_context()
        configs, explicit = build_configs(ctx, spec.classes, values, values.get(YAML_OPTION))
        if any(isinstance(config, RuntimeOptions) for config in configs):
            _set_threads(next(c.threads for c in configs if isinstance(c, RuntimeOptions)))
        spec.handler(*configs, explicit)

    params = parameters(spec.classes)
    if spec.yaml:
        params.insert(0, click.Option(["--config", YAML_OPTION], default=None, metavar="FILE",
                                      help="YAML file of option values (keys: long option names); flags override it."))
    return click.Command(spec.name, params=params, callback=callback, help=spec.help, epilog=spec.epilog,
                         context_settings={"max_content_width": 110})


app = click.Group("unmemorize", help="Make a causal language model stop regurgitating memorized text, and measure it.",
                  commands=[_click_command(spec) for spec in COMMANDS])


def _set_threads(requested: int | None) -> None:
    import torch

    from ..metrics.decoding import default_threads

    torch.set_num_threads(requested or default_threads())


def _quiet_libraries() -> None:
    # Our own progress replaces the per-call bars and notices of transformers.
    import warnings

    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    warnings.filterwarnings("ignore", category=FutureWarning)


def main(argv: list[str] | None = None) -> None:
    """Entry point: usage and user errors are one line on stderr and exit code 2, never a traceback."""
    from .render import err, error_line

    _quiet_libraries()
    args = sys.argv[1:] if argv is None else argv
    if not args:  # the overview, as --help gives it
        args = ["--help"]
    try:
        app.main(args=args, prog_name="unmemorize", standalone_mode=False)
    except UserError as error:
        error_line(str(error))
        sys.exit(2)
    except click.exceptions.UsageError as error:
        error_line(error.format_message().replace("\n", " "))
        sys.exit(2)
    except (click.exceptions.Abort, KeyboardInterrupt):
        err.print("interrupted")
        sys.exit(130)
    except click.exceptions.ClickException as error:
        error_line(error.format_message())
        sys.exit(error.exit_code)
    except click.exceptions.Exit as exit_info:  # --help and friends
        sys.exit(exit_info.exit_code)
