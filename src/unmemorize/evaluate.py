"""The evaluation suite: how much of the forget set a model still leaks (memorization and
privacy attacks), and how much ability it kept (NLU, open-ended generation).

`run_eval` measures one model, or an unlearned model beside the original it came from, and
returns nested results keyed by suite, task and metric (``memorization.forget.ma``,
``nlu.piqa.acc_norm``, ``nlg.mauve``...). Suites are independent; each one's wall time is kept."""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

from .data import load_examples, tokenize_examples
from .errors import UserError
from .paths import data_path, write_atomic

SUITES = ("memorization", "nlu", "nlg")
DEFAULT_REFERENCE = "reference/pile.csv"


@dataclass
class EvalConfig:
    """Every knob of an evaluation; serialized beside the results."""

    model: str
    forget: str | None = None
    original: str | None = None
    judge: str | None = None  # scores generations' perplexity; default: the original, else the model
    suites: list[str] = field(default_factory=lambda: list(SUITES))
    reference: str | None = None  # unseen text; default reference/pile.csv under the data location
    reference_limit: int | None = None  # default: as many as the forget set
    max_length: int = 200
    limit: int | None = None  # forget-set examples
    el_n: list[int] = field(default_factory=lambda: [10])
    el_stride: int = 10
    greedy_el: bool = True  # False: MA only on forget and reference (greedy EL decodes ~T tokens per prefix)
    paper_el: bool = True
    paper_el_limit: int | None = None  # forget samples for the sampled paper-code EL (it decodes ~T²/80 tokens each)
    extraction_prefix: int = 100
    extraction_suffix: int = 50
    mia_k_percent: float = 20.0
    nlu_tasks: list[str] | None = None  # default: the paper's six
    nlu_limit: int | None = None
    nlu_dir: str | None = None
    nlg_prompts: str | None = None
    nlg_limit: int = 100
    nlg_max_new_tokens: int = 128
    nlg_heldout_limit: int = 200
    seed: int = 0
    batch_size: int = 8
    el_batch_size: int = 64
    allow_pickle: bool = False
    trust_remote_code: bool = False
    device: str | None = None  # default: the GPU when there is one, else the CPU

    def validate(self) -> None:
        unknown = [s for s in self.suites if s not in SUITES]
        if unknown or not self.suites:
            raise UserError(f"unknown suite {', '.join(unknown) or '(none)'}; choose from {', '.join(SUITES)}")
        if "memorization" in self.suites and self.forget is None:
            raise UserError("the memorization suite needs --forget FILE (the texts that were to be forgotten)")
        for name in ("el_stride", "batch_size", "el_batch_size", "max_length", "nlg_limit", "nlg_max_new_tokens"):
            if getattr(self, name) < 1:
                raise UserError(f"--{name.replace('_', '-')} must be at least 1, not {getattr(self, name)}")
        for name in ("nlu_limit", "reference_limit", "limit", "paper_el_limit"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise UserError(f"--{name.replace('_', '-')} must be at least 1, not {value}")
        if not 0 < self.mia_k_percent <= 100:
            raise UserError(f"--mia-k-percent must be in (0, 100], not {self.mia_k_percent}")


Progress = Callable[[str], Callable[[int, int], None] | None]


class EvalReporter:
    """What the suite tells the user while it runs; the CLI supplies a rich one."""

    def message(self, text: str) -> None:
        pass

    def progress(self, label: str) -> Callable[[int, int], None] | None:
        return None


def quick_settings(config: EvalConfig) -> EvalConfig:
    """The documented quick setting: under a quarter hour for one 270M model on 2 CPU cores.

    Greedy decoding of a 262k-vocabulary model dominates on a CPU, so the quick setting skips
    greedy EL (MA, the extraction attack and membership inference stay complete, and EL is
    reported as the paper's code samples it, on the first 8 forget samples), scores 20 items per
    NLU task, 32 generations of 48 tokens and 10 held-out documents."""
    config.nlu_limit = config.nlu_limit or 20
    config.nlg_limit, config.nlg_max_new_tokens, config.nlg_heldout_limit = 32, 48, 10
    config.greedy_el = False
    config.el_stride = max(config.el_stride, 100)
    config.paper_el_limit = config.paper_el_limit or 8
    return config


def _resolve_reference(config: EvalConfig) -> str:
    if config.reference:
        return config.reference
    path = data_path(DEFAULT_REFERENCE)
    if path is None:
        raise UserError(
            f"the memorization suite needs unseen reference text: pass --reference FILE "
            f"(default {DEFAULT_REFERENCE} under UNMEMORIZE_DATA or ../shared/data was not found)"
        )
    return str(path)


def check_inputs(config: EvalConfig) -> None:
    """Fail before loading any model when a needed input is missing, naming each one."""
    from .metrics.nlg import DEFAULT_PROMPTS
    from .metrics.nlu import PAPER_NLU_AVG, check_task_names, resolve_nlu_dir

    missing = []
    if "memorization" in config.suites:
        try:
            _resolve_reference(config)
        except UserError as error:
            missing.append(str(error))
    if "nlu" in config.suites:
        try:
            resolve_nlu_dir(config.nlu_dir, check_task_names(config.nlu_tasks or PAPER_NLU_AVG))
        except UserError as error:
            missing.append(str(error))
    if "nlg" in config.suites and config.nlg_prompts is None and data_path(DEFAULT_PROMPTS) is None:
        missing.append(f"the nlg suite needs prompts: pass --nlg-prompts FILE (default {DEFAULT_PROMPTS} "
                       "under UNMEMORIZE_DATA or ../shared/data was not found)")
    if missing:
        raise UserError("; ".join(missing))


def _memorization_suite(model, tokenizer, config: EvalConfig, reporter: EvalReporter) -> dict:
    from .metrics.memorization import memorization
    from .metrics.privacy import extractable, mia_report, paper_extraction_likelihood

    forget_examples = load_examples(config.forget, limit=config.limit)
    forget = tokenize_examples(forget_examples, tokenizer, config.max_length)
    reference_examples = load_examples(
        _resolve_reference(config), limit=config.reference_limit or len(forget)
    )
    reference = tokenize_examples(reference_examples, tokenizer, config.max_length)
    pad = tokenizer.pad_token_id
    results: dict[str, Any] = {}
    for name, items in (("forget", forget), ("reference", reference)):
        measured = memorization(
            model, [t.input_ids for t in items], ns=tuple(config.el_n), el_stride=config.el_stride,
            batch_size=config.batch_size, el_batch_size=config.el_batch_size, pad_token_id=pad,
            compute_el=config.greedy_el, progress=reporter.progress(f"MA/EL on {name}"),
        )
        results[name] = {**measured.means(), "samples": len(items)}
        if name == "forget":
            results["forget_samples"] = measured.per_sample()
    # Jang et al.: the reference level is what "forgotten" means; report the gap to it.
    results["forgotten"] = {
        key: results["forget"][key] <= results["reference"][key]
        for key in results["forget"] if key != "samples"
    }
    sequences = [t.input_ids for t in forget]
    if config.paper_el:
        paper_sequences = sequences[: config.paper_el_limit]
        values = paper_extraction_likelihood(
            model, paper_sequences, n=config.el_n[0], seed=config.seed, pad_token_id=pad,
            progress=reporter.progress("EL (paper code: sampled, cut every 40)"),
        )
        results["forget"][f"el_{config.el_n[0]}_paper_code"] = sum(values) / len(values)
        results["paper_el_samples"] = len(values)
    extraction = extractable(
        model, sequences, prefix_tokens=config.extraction_prefix, suffix_tokens=config.extraction_suffix,
        pad_token_id=pad, progress=reporter.progress("extraction attack"),
    )
    samples = extraction["samples"]

    def mean(key: str) -> float:
        # Every sample may be shorter than the prefix: nothing to attack, reported as NaN.
        return sum(s[key] for s in samples) / len(samples) if samples else math.nan

    results["extraction"] = {
        "fraction_extractable": extraction["fraction_extractable"],
        "mean_longest_prefix_match": mean("longest_prefix_match"),
        "mean_longest_run": mean("longest_run"),
        "skipped_short": len(extraction.get("skipped", [])),
        "prefix_tokens": config.extraction_prefix,
        "suffix_tokens": config.extraction_suffix,
    }
    reporter.message("membership inference (loss, zlib, min-k%, min-k%++)")
    results["mia"] = mia_report(
        model, sequences, [t.example.text for t in forget],
        [t.input_ids for t in reference], [t.example.text for t in reference],
        k_percent=config.mia_k_percent, pad_token_id=pad,
    )
    return results


def _staged_progress(reporter: EvalReporter, suite: str) -> Callable[[str, int, int], None]:
    """A ``progress(stage, done, total)`` callback drawing one bar per stage (task, step)."""
    bars: dict[str, Callable[[int, int], None]] = {}

    def progress(stage: str, done: int, total: int) -> None:
        if stage not in bars:
            bars[stage] = reporter.progress(f"{suite} {stage.replace('_', ' ')}") or (lambda d, t: None)
        bars[stage](done, total)

    return progress


def _nlu_suite(model, tokenizer, config: EvalConfig, reporter: EvalReporter) -> dict:
    from .metrics.nlu import PAPER_NLU_AVG, evaluate_nlu

    progress = _staged_progress(reporter, "NLU")
    return evaluate_nlu(
        model, tokenizer, config.nlu_tasks or PAPER_NLU_AVG,
        nlu_dir=Path(config.nlu_dir) if config.nlu_dir else None, limit=config.nlu_limit,
        progress=progress,
    )


def _nlg_suite(model, tokenizer, config: EvalConfig, reporter: EvalReporter, judge=None, encoder=None) -> dict:
    from .metrics.nlg import evaluate_nlg

    progress = _staged_progress(reporter, "NLG")
    judge_model, judge_tokenizer = judge if judge is not None else (None, None)
    return evaluate_nlg(
        model, tokenizer, judge=judge_model, judge_tokenizer=judge_tokenizer,
        prompts_source=config.nlg_prompts, limit=config.nlg_limit,
        max_new_tokens=config.nlg_max_new_tokens, seed=config.seed,
        heldout_limit=config.nlg_heldout_limit, encoder=encoder, progress=progress,
    )


def run_eval(config: EvalConfig, reporter: EvalReporter | None = None) -> dict:
    """Evaluate ``config.model`` (and ``config.original`` beside it) on the chosen suites."""
    from .models import default_device, load_model

    reporter = reporter or EvalReporter()
    config.validate()
    check_inputs(config)
    started = time.time()
    device = config.device or default_device()
    labels = {"model": config.model}
    if config.original:
        labels = {"original": config.original, "unlearned": config.model}
    loaded = {}
    for label, name in labels.items():
        loaded[label] = load_model(name, device=device, allow_pickle=config.allow_pickle,
                                   trust_remote_code=config.trust_remote_code, progress=reporter.message)
    encoder = None
    if "nlg" in config.suites:
        from .metrics.nlg import load_encoder

        encoder = load_encoder()
    # The judge of generation perplexity is the original model when there is one.
    judge = loaded.get("original", next(iter(loaded.values())))
    if config.judge and "nlg" in config.suites:
        same = [label for label, name in labels.items() if name == config.judge]
        judge = loaded[same[0]] if same else load_model(
            config.judge, device=device, allow_pickle=config.allow_pickle,
            trust_remote_code=config.trust_remote_code, progress=reporter.message)
    results: dict[str, Any] = {label: {} for label in labels}
    timings: dict[str, dict[str, float]] = {label: {} for label in labels}
    for label, lm in loaded.items():
        for suite in config.suites:
            reporter.message(f"{suite} suite on {labels[label]}")
            suite_started = time.time()
            if suite == "memorization":
                results[label][suite] = _memorization_suite(lm.model, lm.tokenizer, config, reporter)
            elif suite == "nlu":
                results[label][suite] = _nlu_suite(lm.model, lm.tokenizer, config, reporter)
            else:
                results[label][suite] = _nlg_suite(lm.model, lm.tokenizer, config, reporter,
                                                   judge=(judge.model, judge.tokenizer), encoder=encoder)
            timings[label][suite] = round(time.time() - suite_started, 1)
    return {
        "config": asdict(config),
        "models": labels,
        "judge": config.judge or labels.get("original", config.model),
        "device": device,
        "results": results,
        "timings_s": timings,
        "wall_time_s": round(time.time() - started, 1),
    }


def flatten(results: dict, prefix: str = "") -> dict[str, float]:
    """Dotted keys for every number: ``memorization.forget.ma``, ``nlu.piqa.acc_norm``."""
    flat: dict[str, float] = {}
    for key, value in results.items():
        name = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(value, dict):
            flat.update(flatten(value, name))
        elif isinstance(value, bool):
            continue
        elif isinstance(value, (int, float)):
            flat[name] = float(value)
    return flat


# Rows a person reads first; everything else follows in key order.
HEADLINE = (
    "memorization.forget.ma", "memorization.reference.ma", "memorization.forget.el_10",
    "memorization.reference.el_10", "memorization.forget.el_10_paper_code",
    "memorization.extraction.fraction_extractable", "memorization.mia.loss.auc",
    "memorization.mia.zlib.auc", "memorization.mia.min_k.auc", "memorization.mia.min_k_plus_plus.auc",
    "nlu.paper_avg.acc", "nlg.mauve", "nlg.heldout_ppl", "nlg.gen_ppl",
)
SKIPPED_IN_TABLE = ("_stderr", ".n", ".samples", "prefix_tokens", "suffix_tokens", "forget_samples", "paper_el_samples")


def comparison_rows(report: dict) -> list[tuple[str, list[float | None]]]:
    """(metric, [value per model]) rows, headline metrics first."""
    flats = [flatten(report["results"][label]) for label in report["models"]]
    keys = [k for k in flats[-1] if not any(s in k for s in SKIPPED_IN_TABLE)]
    ordered = [k for k in HEADLINE if k in keys] + sorted(k for k in keys if k not in HEADLINE)
    return [(k, [flat.get(k) for flat in flats]) for k in ordered]


def write_json(report: dict, path: Path) -> None:
    write_atomic(path, json.dumps(report, indent=2, default=lambda v: None if isinstance(v, float) and math.isnan(v) else str(v)))
