"""Every option of every command, declared once.

An option is a field of a frozen dataclass with its type, default, help and allowed range in the
field's metadata (`option`). From these declarations come:

- the command-line options (`unmemorize.cli.options` turns each field into a click option);
- the YAML loader (`from_mapping`: ``--config run.yaml`` and the runs of ``compare``), which
  coerces each value to the field's type;
- the checks (`check_fields`, run when a config is built: a config object is always valid).

Configs are frozen: resolving one (auto thresholds, a method's defaults, LoRA targets, the quick
evaluation setting) returns a new object with `dataclasses.replace`; the caller's is never changed.
"""

from __future__ import annotations

import dataclasses
import os
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import UserError

DEFAULT_MODEL = "gemma-3-270m"
DEFAULT_FORGET = "extraction/forget_sets/lm_extraction_8_0.csv"
DEFAULT_REFERENCE = "reference/pile.csv"
SUITES = ("memorization", "nlu", "nlg", "dialogue", "robustness")
DEFAULT_SUITES = ("memorization", "nlu", "nlg")


@dataclass(frozen=True)
class Option:
    """How a config field appears to a user. ``flag``: the long option's name when it is not the
    field's (``imagination_strength`` is ``--strength``); ``negative``: a boolean's off switch
    (``--no-lora``); bounds (``gt``, ``ge``, ``lt``, ``le``) and ``choices`` are checked whenever a
    config is built; ``argument``: a positional argument instead of an option."""

    help: str
    flag: str | None = None
    negative: str | None = None
    gt: float | None = None
    ge: float | None = None
    lt: float | None = None
    le: float | None = None
    choices: tuple[str, ...] | None = None
    words: tuple[str, ...] = ()  # words a number field also takes ("auto")
    argument: bool = False
    required: bool = False
    metavar: str | None = None


def option(default: Any, help: str, **settings: Any) -> Any:
    """A config field with its user-facing declaration (see `Option`)."""
    meta = {"option": Option(help=help, **settings)}
    if isinstance(default, (list, dict, set)):
        raise TypeError("use a tuple for a sequence default: configs are immutable")
    return field(default=default, metadata=meta)


def declaration(item: dataclasses.Field) -> Option:
    return item.metadata["option"]


def flag_name(item: dataclasses.Field) -> str:
    """The long option of a field, with its dashes: ``--strength``."""
    return "--" + (declaration(item).flag or item.name).replace("_", "-")


def field_types(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def base_type(annotation: Any) -> tuple[Any, bool, bool]:
    """(element type, optional, sequence) of ``int``, ``str | None``, ``tuple[int, ...]``..."""
    optional = False
    args = typing.get_args(annotation)
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        optional = type(None) in args
        rest = [a for a in args if a is not type(None)]
        annotation = rest[0] if len(rest) == 1 else float  # float | str: a number or a word
        args = typing.get_args(annotation)
    if typing.get_origin(annotation) is tuple:
        return args[0], optional, True
    return annotation, optional, False


# --- checks ----------------------------------------------------------------------------------


def _bounds_text(spec: Option) -> str:
    if spec.gt == 0 and spec.lt is None and spec.le is None:
        return "positive"
    if spec.ge is not None and spec.lt is None and spec.le is None and spec.gt is None:
        return ">= 0" if spec.ge == 0 else f"at least {spec.ge:g}"
    low = f"[{spec.ge:g}" if spec.ge is not None else f"({spec.gt:g}" if spec.gt is not None else "(-inf"
    high = f"{spec.le:g}]" if spec.le is not None else f"{spec.lt:g})" if spec.lt is not None else "inf)"
    return f"in {low}, {high}"


def _in_bounds(value: float, spec: Option) -> bool:
    return ((spec.gt is None or value > spec.gt) and (spec.ge is None or value >= spec.ge)
            and (spec.lt is None or value < spec.lt) and (spec.le is None or value <= spec.le))


def check_fields(config: Any) -> None:
    """Every field as its type, in its declared range and choices; a UserError naming the option
    otherwise. Called by each config's ``__post_init__``."""
    normalize(config)
    for item in dataclasses.fields(config):
        spec, value = declaration(item), getattr(config, item.name)
        values = value if isinstance(value, tuple) else (value,)
        for single in values:
            if single is None or isinstance(single, bool):
                continue
            if spec.choices is not None and single not in spec.choices:
                allowed = " or ".join(repr(c) for c in spec.choices) if len(spec.choices) < 4 \
                    else "one of " + ", ".join(spec.choices)
                raise UserError(f"{flag_name(item)} must be {allowed}, not {single!r}")
            if isinstance(single, str) and single in spec.words:
                continue
            if isinstance(single, (int, float)) and not _in_bounds(single, spec):
                shown = list(value) if isinstance(value, tuple) else value
                raise UserError(f"{flag_name(item)} must be {_bounds_text(spec)}, not {shown}")


# --- reading values: YAML files and the command line -------------------------------------------


def _number(value: Any, integer: bool) -> float | int:
    if isinstance(value, bool):
        raise ValueError
    number = float(value)
    if integer:
        if not number.is_integer():
            raise ValueError
        return int(number)
    return number


def coerce(item: dataclasses.Field, annotation: Any, value: Any, where: str = "") -> Any:
    """A value as the field's type, whether read from YAML, the command line or given in Python:
    YAML reads ``2e-3`` as a string and ``[10]`` as a list, a comma-separated string is a list
    too, and a sequence becomes a tuple (configs are immutable)."""
    if value is None:
        return None
    kind, _optional, sequence = base_type(annotation)
    spec = declaration(item)

    def one(v: Any) -> Any:
        if kind is bool:
            if not isinstance(v, bool):
                raise ValueError
            return v
        if kind in (int, float):
            if isinstance(v, str) and v in spec.words:
                return v
            return _number(v, kind is int)
        return str(v)

    try:
        if sequence:
            items = [s.strip() for s in value.split(",") if s.strip()] if isinstance(value, str) \
                else list(value) if isinstance(value, (list, tuple)) else [value]
            return tuple(one(v) for v in items)
        return one(value)
    except (TypeError, ValueError):
        kind_name = {int: "an integer", float: "a number", bool: "true or false"}.get(kind, "text")
        expected = f"{kind_name} or {' / '.join(repr(w) for w in spec.words)}" if spec.words else kind_name
        expected = f"a list of {expected.removeprefix('a ').removeprefix('an ')}s" if sequence else expected
        place = f" (in {where})" if where else ""
        raise UserError(f"{flag_name(item)} takes {expected}, not {value!r}{place}") from None


def normalize(config: Any) -> None:
    """Each field's value as its type (see `coerce`), in place: for ``__post_init__`` only."""
    hints = field_types(type(config))
    for item in dataclasses.fields(config):
        value = coerce(item, hints[item.name], getattr(config, item.name))
        object.__setattr__(config, item.name, value)


def key_to_field(key: Any, classes: tuple[type, ...]) -> str | None:
    """A YAML key as written (``--max-length``, ``max-length``, ``max_length``, or an option's
    flag such as ``strength``) as the name of a field of one of ``classes``; None if unknown."""
    name = str(key).lstrip("-").replace("-", "_")
    for cls in classes:
        for item in dataclasses.fields(cls):
            if name == item.name or name == (declaration(item).flag or "").replace("-", "_"):
                return item.name
    return None


def from_mapping(classes: tuple[type, ...] | type, mapping: dict, where: str,
                 refused: frozenset[str] = frozenset()) -> dict[str, Any]:
    """Field values from a mapping of option names, coerced to each field's type. Unknown keys,
    and keys in ``refused`` (set by the caller itself), are errors."""
    classes = classes if isinstance(classes, tuple) else (classes,)
    if not isinstance(mapping, dict):
        raise UserError(f"{where} must be a mapping of option names to values")
    fields_by_name = {item.name: (item, field_types(cls)[item.name])
                      for cls in classes for item in dataclasses.fields(cls)}
    values = {}
    for key, value in mapping.items():
        name = key_to_field(key, classes)
        if name is None or name in refused:
            raise UserError(f"unknown key {key!r} in {where}; keys are the long option names")
        item, annotation = fields_by_name[name]
        values[name] = coerce(item, annotation, value, where)
    return values


_ENV = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^{}]*))?\}")


def expand_env(value: Any, source: str = "") -> Any:
    """``${VAR}`` and ``${VAR:-default}`` replaced in every string of ``value`` (nested defaults
    work: the innermost reference is replaced first)."""
    if isinstance(value, dict):
        return {k: expand_env(v, source) for k, v in value.items()}
    if isinstance(value, list):
        return [expand_env(v, source) for v in value]
    if not isinstance(value, str):
        return value

    def replace(match: re.Match) -> str:
        name, default = match.group(1), match.group(2)
        if os.environ.get(name):
            return os.environ[name]
        if default is not None:
            return default
        raise UserError(f"environment variable {name} is not set (used in {source or 'the config'}); "
                        f"set it or write ${{{name}:-default}}")

    while True:
        expanded = _ENV.sub(replace, value)
        if expanded == value:
            return expanded
        value = expanded


def read_yaml(path: str | Path) -> Any:
    """A YAML file with ``${VAR:-default}`` expanded: the one reader of every config file."""
    import yaml

    try:
        data = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as error:
        raise UserError(f"cannot read config {path}: {error}") from None
    return expand_env(data if data is not None else {}, str(path))


def defaults(cls: type) -> dict[str, Any]:
    return {item.name: item.default for item in dataclasses.fields(cls)}


def as_json(config: Any) -> dict:
    """A config as JSON-ready values (tuples as lists)."""
    return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(config).items()}


# --- option groups shared by several commands --------------------------------------------------


class Checked:
    """Base of every config: its fields are converted and checked when it is made."""

    def __post_init__(self) -> None:
        check_fields(self)


@dataclass(frozen=True, kw_only=True)
class ModelOptions(Checked):
    model: str = option(DEFAULT_MODEL, "Registry name, local directory, .gguf file or hub id.")
    allow_pickle: bool = option(False, "Allow loading pickle-based weights (.bin): runs code in the file.")
    trust_remote_code: bool = option(False, "Allow model code from the model's repository to run.")


@dataclass(frozen=True, kw_only=True)
class RuntimeOptions(Checked):
    threads: int | None = option(None, "Torch threads. Default: OMP_NUM_THREADS when set, else the cores other processes leave free (sampled from /proc/stat for half a second): on a core shared with another job, every thread of an op waits for the slowest. Give the same number to a run and its --resume for bitwise-equal weights.", ge=1)


@dataclass(frozen=True, kw_only=True)
class SourceOptions(Checked):
    """How a text file is read into examples."""

    split: str = option("lines", "Plain text: one example per 'lines' or 'paragraphs'.",
                        choices=("lines", "paragraphs"))
    text_column: str = option("text", "Column holding the text (CSV, datasets).")
    npy_tokenizer: str | None = option(None, "Tokenizer that produced .npy token ids (default: GPT-2 under the data location).")
    limit: int | None = option(None, "Use only the first N examples.", ge=1)


@dataclass(frozen=True, kw_only=True)
class LengthOption(Checked):
    max_length: int = option(200, "Truncate sequences to this many tokens.", ge=2)


@dataclass(frozen=True, kw_only=True)
class ReadOptions(SourceOptions, LengthOption):
    """How a text file is read into examples and tokens."""


@dataclass(frozen=True, kw_only=True)
class ExtractionOptions(Checked):
    el_n: tuple[int, ...] = option((10,), "n of the extraction likelihood EL_n (repeatable).", ge=1)
    el_batch_size: int = option(128, "Prefixes decoded together when measuring EL (each keeps its keys and values: about 1 GB for 128 rows of 200 tokens on Gemma-3 270M).", ge=1)


@dataclass(frozen=True, kw_only=True)
class AttackOptions(Checked):
    """The extraction attack and the membership scores (eval's memorization suite, scan)."""

    extraction_prefix: int = option(50, "Prefix tokens of the extraction attack (text tokens; BOS not counted).", ge=1)
    extraction_suffix: int = option(50, "Suffix tokens that must be reproduced exactly; shorter samples are excluded and counted.", ge=1)
    mia_k_percent: float = option(20.0, "k of min-k% and min-k%++.", gt=0, le=100)


# --- unlearn -----------------------------------------------------------------------------------

# Method hyper-parameters: None means the method's own default (each method declares its
# defaults as dataclass fields; the resolved value is recorded in unlearn_config.json).
METHOD_PARAMETERS = ("imagination_strength", "beta", "margin", "task_vector_alpha", "dpd_lambda")
# Options that may change between a run and its --resume: where things go, how evaluation is
# batched, what may be loaded. Everything else shapes the training trajectory and must match.
# The forget and retain files are compared by the tokens they give (the data fingerprint).
RESUME_MAY_CHANGE = frozenset({
    "out", "overwrite", "checkpoint_every", "checkpoint_dir", "resume", "eval_batch_size",
    "el_batch_size", "cpu", "allow_pickle", "trust_remote_code", "max_examples", "forget", "retain",
    "report_samples", "show_text", "threads", "record_key",
})


@dataclass(frozen=True, kw_only=True)
class TrainingShape(Checked):
    """The options that decide what a training process holds in memory (unlearn, plan)."""

    method: str = option("di", "Unlearning method: di, ga, gd, kl, npo, simnpo, task-vector, dpd, finetune (uniform imagination: di --focus all).")
    lora: bool = option(True, "LoRA adapters (teacher = adapters off) or full fine-tuning (teacher = frozen copy).", negative="no-lora")
    lora_r: int = option(8, "LoRA rank.", gt=0)
    optimizer: str = option("adamw", "Optimizer.", choices=("adamw", "sgd"))
    batch_size: int = option(8, "Sequences per micro-batch.", gt=0)
    grad_accum: int = option(1, "Micro-batches per optimizer step.", gt=0)
    precision: str | None = option(None, "Matrix products in fp32, or bf16 (autocast; the loss and the weights stay float32). Default: bf16 on a GPU, fp32 on a CPU (without AMX, bf16 is slower there).", choices=("fp32", "bf16"))


@dataclass(frozen=True, kw_only=True)
class UnlearnConfig(ModelOptions, ReadOptions, ExtractionOptions, RuntimeOptions, TrainingShape):
    """Every knob of an unlearning run. Serialized as ``unlearn_config.json`` in the output."""

    forget: str | None = option(None, f"Texts to forget (.jsonl/.csv/.txt/.npy, datasets dir, hf:NAME). Default: {DEFAULT_FORGET} under the data location.")
    out: str | None = option(None, "Output directory for the unlearned model, config and metrics.")
    overwrite: bool = option(False, "Replace a non-empty --out directory.")
    imagination_strength: float | None = option(None, "di: imagination strength γ, how far the memorized token's logit is lowered.", flag="strength")
    beta: float | None = option(None, "npo, simnpo: β.")
    margin: float | None = option(None, "simnpo: margin γ.")
    task_vector_alpha: float | None = option(None, "task-vector: final weights θ − α·(θ_ft − θ).", flag="alpha")
    dpd_lambda: float | None = option(None, "dpd: next-token distribution λ·p + (1−λ)·uniform; no training.")
    # Text to keep: every forget micro-batch comes with one of its micro-batches (cycled), and
    # the retain term (NLL, or KL to the original for kl) enters with weight retain_weight.
    retain: str | None = option(None, "Text to keep (same formats as --forget): adds an NLL term (KL to the original for kl); gd and kl need it.")
    retain_weight: float = option(1.0, "Weight of the retain term.", ge=0)
    focus: str = option("all", "Tokens that get imagination: all, entities, nouns, pii (names, e-mails, phones, addresses, account and other numbers), spans, regex:PATTERN.")
    focus_mode: str = option("hard", "hard: train only on focus tokens; soft: weight them by --focus-weight.", choices=("hard", "soft"))
    focus_weight: float = option(10.0, "Weight of focus tokens in soft mode.", gt=0)
    # Records in one template share contexts ("Customer record: Norma Fisher, e-mail "): each
    # record's own target there keeps the others' memorized tokens likely, so one batch's
    # targets pull against each other.
    joint_lowering: bool = option(False, "di: where several forget texts share a context (the same tokens before a position in focus), lower every one of their next tokens there in each text's target, not its own token alone (records in one template).")
    softmax_vocabulary: int | None = option(None, "finetune: the softmax spans only the training texts' own tokens and the first N token ids: an approximation of the NLL that fine-tunes a large-vocabulary model about twice as fast (the demo's simulated leak uses 32768).", ge=1)
    lora_alpha: float = option(16.0, "LoRA alpha.", gt=0)
    lora_dropout: float = option(0.05, "LoRA dropout.", ge=0, lt=1)
    lora_targets: tuple[str, ...] | None = option(None, "Module names for LoRA (repeatable; 'all-linear' for every linear layer). Default: the attention projections.")
    save_adapter: bool = option(False, "Also save the LoRA adapter alone (OUT/adapter).")
    lr: float | None = option(None, "Learning rate. Default: the method's measured one: 2e-3 with LoRA and 2e-5 for full fine-tuning (ga 2e-4, npo 5e-4 with LoRA).", gt=0)
    lr_schedule: str = option("constant", "After warm-up: 'constant', or 'linear' decay to a tenth of --lr at the last step.", choices=("constant", "linear"))
    epochs: int = option(1, "Passes over the forget set.", gt=0)
    max_steps: int | None = option(None, "Stop after this many optimizer steps.", ge=1)
    warmup_steps: int = option(0, "Linear learning-rate warm-up steps.", ge=0)
    weight_decay: float = option(0.0, "Weight decay.", ge=0)
    max_grad_norm: float = option(1.0, "Gradient clipping norm (0 disables clipping).", ge=0)
    seed: int = option(42, "Random seed.")
    # Exact EL generates ~T²/2 tokens per sequence (minutes per sequence for a 262k-vocabulary
    # model on a CPU), so unlearning scores every 10th prefix unless told otherwise, and scores
    # EL before and after only, unless --el-every-epoch or --stop-el asks for it each epoch.
    el_stride: int = option(10, "Score EL on every k-th prefix (1 = exact; exact costs ~T²/2 generated tokens per sequence).", gt=0)
    el_every_epoch: bool = option(False, "Also score EL after every epoch (MA always is).")
    measure_el: bool = option(True, "Score EL before and after training (greedy decoding: the slow part on CPU); --no-el scores MA only.", flag="el", negative="no-el")
    eval_batch_size: int = option(8, "Sequences per teacher-forced pass when measuring memorization.", gt=0)
    # A number, or "auto": the model's own level on unseen text (--reference), Jang et al.'s
    # "forgotten" threshold.
    stop_ma: float | None = option(None, "Stop once MA is at or below this number (at or above it for finetune), or 'auto': the model's MA on unseen text (--reference).", ge=0, le=1, words=("auto",))
    stop_el: float | None = option(None, "Stop once EL (first --el-n) is at or below this number, or 'auto'.", ge=0, le=1, words=("auto",))
    reference: str | None = option(None, f"Unseen text for 'auto' thresholds (default: {DEFAULT_REFERENCE} under the data location).")
    reference_limit: int = option(32, "Reference sequences used for 'auto' thresholds.", ge=1)
    unseen_every_epoch: bool = option(False, "Also measure MA on the unseen reference text after every epoch: how much of its general next-token accuracy the model keeps while it forgets (compare's trade-off curves).")
    cpu: bool = option(False, "Run on the CPU even when a GPU is present.")
    max_examples: int | None = option(None, "Refuse a forget set of more than N examples (--limit truncates instead).", ge=1)
    checkpoint_every: int | None = option(None, "Write a checkpoint every N optimizer steps (to --checkpoint-dir).", ge=1)
    checkpoint_dir: str | None = option(None, "Where checkpoints go (default: OUT.checkpoint). Removed once OUT is written.")
    resume: bool = option(False, "Continue the run whose checkpoint is in --checkpoint-dir (default OUT.checkpoint); training options must be the same.")
    # The report's before/after continuations of the first forget prefixes. Without show_text
    # only their token match masks are stored: no forget-set text is written to the output.
    report_samples: int = option(3, "Forget prefixes whose continuations before and after the report shows (0: none).", ge=0)
    show_text: bool = option(False, "Store and show forget-set text in OUT (samples.json, report); by default only token match masks.")
    record_key: str | None = option(None, "A file holding a secret key, kept outside the output: metrics.json and the model card then carry HMAC-SHA256 digests of the forget data and of each record, which only the key's holder can check; without it no digest of the forget data is written (a plain hash lets anyone confirm a guessed record).")

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.record_key is not None:
            key = Path(self.record_key).expanduser()
            if not key.is_file() or key.stat().st_size == 0:
                raise UserError(f"--record-key {self.record_key}: not a readable, non-empty file")
        if not self.measure_el and (self.stop_el is not None or self.el_every_epoch):
            raise UserError("--no-el leaves nothing for --stop-el / --el-every-epoch to read; drop one")
        if self.joint_lowering and self.method != "di":
            raise UserError(f"--joint-lowering shapes deliberate imagination's targets; --method {self.method} has none")
        if self.save_adapter and not self.lora:
            raise UserError("--save-adapter needs --lora (a full fine-tune has no adapter)")
        if (self.checkpoint_every or self.resume) and not (self.out or self.checkpoint_dir):
            flag = "--resume" if self.resume else "--checkpoint-every"
            raise UserError(f"{flag} needs --out or --checkpoint-dir: checkpoints live in <out>.checkpoint")
        from .focus import Focus  # a bad regex or an unknown focus fails when the config is made

        Focus.parse(self.focus)


@dataclass(frozen=True, kw_only=True)
class FollowUpEvaluation(Checked):
    """``unlearn --eval``: the evaluation suite on the result, beside the original."""

    run_eval: bool = option(False, "Run the evaluation suite on the result beside the original (writes OUT/eval.json).", flag="eval")
    eval_suites: tuple[str, ...] = option(DEFAULT_SUITES, "Suites for --eval (comma-separated or repeated).", choices=SUITES)
    eval_quick: bool = option(True, "--eval with the quick setting of `unmemorize eval --quick`.", flag="eval-quick", negative="eval-full")


# --- eval --------------------------------------------------------------------------------------

DIALOGUE_FILES = ("reference/wizard_of_wikipedia.json", "reference/empathetic_dialogues.json",
                  "reference/blended_skill_talk.json", "reference/wizard_of_internet.json")


@dataclass(frozen=True, kw_only=True)
class ForgetMeasurement(AttackOptions):
    """How the forget set is read and measured, shared by `eval` and `attack`."""

    original: str | None = option(None, "The model it came from: evaluated beside it, and the judge of generation perplexity.")
    forget: str | None = option(None, "The texts that were to be forgotten (needed by the memorization and robustness suites); read with --split, --text-column, --npy-tokenizer.")
    reference: str | None = option(None, f"Unseen text: the 'forgotten' level and the MIA non-members (default {DEFAULT_REFERENCE}).")
    el_stride: int = option(10, "Score EL on every k-th prefix (1 = exact).", ge=1)
    seed: int = option(0, "Seed of every sampled quantity.")
    batch_size: int = option(8, "Sequences per teacher-forced pass.", ge=1)
    device: str | None = option(None, "cpu, cuda or cuda:N (default: the GPU when there is one).")


ROBUSTNESS_ATTACKS = ("quantize", "relearn", "prefix", "logit-lens")
QUANTIZATIONS = ("gguf-q8_0", "gguf-q4_0", "int8", "int4")


@dataclass(frozen=True, kw_only=True)
class RobustnessOptions(Checked):
    """The robustness suite's attacks (`eval --suites robustness`, `attack`)."""

    attacks: tuple[str, ...] = option(ROBUSTNESS_ATTACKS, "Attacks that try to bring forgotten text back: quantize, relearn, prefix, logit-lens (comma-separated).", choices=ROBUSTNESS_ATTACKS)
    quantizations: tuple[str, ...] = option(QUANTIZATIONS, "quantize: GGUF types round-tripped by the gguf package's quantizers (gguf-q8_0, gguf-q4_0) and optimum-quanto's weight-only int8 / int4 (the 'attack' extra).", choices=QUANTIZATIONS)
    relearn_steps: tuple[int, ...] = option((1, 5, 20), "relearn: measure the forget set after these fine-tuning steps.", ge=1)
    relearn_modes: tuple[str, ...] = option(("lora", "full"), "relearn: LoRA (attention projections) and/or full fine-tuning.", choices=("lora", "full"))
    relearn_data: tuple[str, ...] = option(("forget-half", "retain"), "relearn on: forget-half (every other forget sample; the other half is measured) and/or retain (unrelated text, --relearn-retain; the whole forget set is measured).", choices=("forget-half", "retain"))
    relearn_lr: float = option(1e-3, "relearn: learning rate of LoRA fine-tuning.", gt=0)
    relearn_full_lr: float = option(2e-5, "relearn: learning rate of full fine-tuning.", gt=0)
    relearn_batch_size: int = option(4, "relearn: sequences per step.", ge=1)
    relearn_vocabulary: int | None = option(32768, "relearn: the softmax spans the training texts' tokens and the first N ids (finetune --softmax-vocabulary, about twice as fast on Gemma's 262k vocabulary); 0: the whole vocabulary.", ge=0)
    relearn_retain: str | None = option(None, "relearn: unrelated text to fine-tune on (default reference/wikitext.csv under the data location).")
    relearn_retain_limit: int = option(16, "relearn: documents of --relearn-retain used.", ge=1)
    prefix_lengths: tuple[int, ...] = option((16, 32, 100, 150), "prefix: extraction prompts of these lengths (the suffix shortened where a sample has no room).", ge=1)
    prefix_shifts: tuple[int, ...] = option((25, 50), "prefix: prompts starting this many tokens into the text.", ge=1)
    prefix_changes: tuple[str, ...] = option(("lower", "upper", "single-spaced"), "prefix: the text changed: lower, upper, single-spaced (every whitespace run one space).", choices=("lower", "upper", "single-spaced"))
    context_samples: tuple[int, ...] = option((1, 2), "prefix: k other forget samples placed before each sample (in-context relearning).", ge=1)
    context_tokens: int = option(64, "prefix: tokens of each in-context forget sample.", ge=1)
    lens_samples: int = option(8, "logit-lens: forget samples read through every layer (each layer costs an output-layer pass).", ge=1)
    robustness_el: bool = option(False, "Also score greedy EL_n (with --el-stride) wherever an attack is scored: up to ~T²/2 generated tokens per sample each time (about 15 min per scoring of 32 samples of 200 tokens on one CPU core with --el-stride 1); off: MA and extraction.", negative="no-robustness-el")


@dataclass(frozen=True, kw_only=True)
class EvalConfig(ModelOptions, ReadOptions, ExtractionOptions, RuntimeOptions, ForgetMeasurement, RobustnessOptions):
    """Every knob of an evaluation; serialized beside the results."""

    model: str = option(DEFAULT_MODEL, "The model to evaluate (registry name, directory, .gguf, hub id).")
    judge: str | None = option(None, "Model that scores the perplexity of generations (default: --original, else --model).")
    suites: tuple[str, ...] = option(DEFAULT_SUITES, "Suites, comma-separated: memorization, nlu, nlg, dialogue, robustness.", choices=SUITES)
    reference_limit: int | None = option(None, "Reference documents used (default: as many as the forget set).", ge=1)
    greedy_el: bool = option(True, "Score greedy EL_n (--no-greedy-el: MA only; greedy decoding is the slow part on CPU).", negative="no-greedy-el")
    undial_el: bool = option(True, "Also report EL as the UNDIAL paper's code computes it (200 sampled tokens, top-k 50, top-p 0.95, cut every 40 tokens, n-gram precision).", negative="no-undial-el")
    undial_el_limit: int | None = option(None, "Score the UNDIAL-code EL on the first N forget samples only (the code's first batch of 32 pairs covers 8 samples of 200 tokens).", ge=1)
    nlu_tasks: tuple[str, ...] | None = option(None, "NLU tasks, comma-separated (default: the paper's six).")
    nlu_limit: int | None = option(None, "A fixed seeded subset of N instances per task.", ge=1)
    nlu_dir: str | None = option(None, "Folder of NLU files (default nlu/ under the data location).")
    nlg_prompts: str | None = option(None, "Prompt documents for generation (default reference/wikitext.csv).")
    nlg_limit: int = option(100, "Prompts to continue.", ge=1)
    nlg_max_new_tokens: int = option(128, "Tokens generated per prompt.", ge=1)
    nlg_heldout_limit: int = option(200, "WikiText documents for held-out perplexity (0 skips it).", ge=0)
    dialogue_files: tuple[str, ...] = option(DIALOGUE_FILES, "Dialogue files of the dialogue suite (comma-separated; relative paths are under the data location when not found as given).")
    dialogue_limit: int = option(100, "Dialogues per file in the dialogue suite.", ge=1)
    dialogue_max_new_tokens: int = option(32, "Tokens generated per dialogue response.", ge=1)
    setting: str = option("custom", "Sizing: quick (smoke runs, too small to separate methods), standard (every NLU item but HellaSwag's beyond 2,000, 500 generations, exact EL) or custom (the options as given); options given explicitly win.", choices=("custom", "quick", "standard"))

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.suites:
            raise UserError(f"no suite given; choose from {', '.join(SUITES)}")
        for suite in ("memorization", "robustness"):
            if suite in self.suites and self.forget is None:
                raise UserError(f"the {suite} suite needs --forget FILE (the texts that were to be forgotten)")


# The evaluation settings. Options set explicitly win over a setting's values.
# quick: a smoke run, a few minutes for one 270M model on 2 CPU cores and labelled as such in
# every table: no greedy EL (MA, the extraction attack and membership inference stay complete;
# EL as the UNDIAL code samples it, on the first 8 forget samples), 20 items per NLU task (the
# average's 95 % interval is about ±0.09), 32 generations of 48 tokens (MAUVE is degenerate
# below 500) and 10 held-out documents.
# standard: sized to separate methods: every NLU item except HellaSwag's beyond 2,000 (the
# six-task lm-eval average's 95 % interval is then ±0.019 at p = 0.5, ±0.017 at Gemma-3 270M's
# accuracies; COPA's 100 items alone hold it above ±0.016, so ±0.015 is out of reach for this
# average; a paired difference between two models on the same items is far narrower), 500
# generations of 128 tokens (MAUVE's quantization is no longer degenerate), 200 held-out
# documents, exact greedy EL and 200 unseen reference documents.
EVALUATION_SETTINGS: dict[str, dict[str, Any]] = {
    "quick": {"nlu_limit": 20, "nlg_limit": 32, "nlg_max_new_tokens": 48, "nlg_heldout_limit": 10,
              "greedy_el": False, "el_stride": 100, "undial_el_limit": 8},
    "standard": {"nlu_limit": 2000, "nlg_limit": 500, "nlg_max_new_tokens": 128,
                 "nlg_heldout_limit": 200, "greedy_el": True, "el_stride": 1,
                 "undial_el_limit": None, "reference_limit": 200},
    "custom": {},
}
QUICK_EVALUATION = EVALUATION_SETTINGS["quick"]


def evaluation_setting(config: EvalConfig, setting: str | None = None,
                       explicit: frozenset[str] | set[str] = frozenset()) -> EvalConfig:
    """``config`` with the values of ``setting`` (default ``config.setting``), except for the
    fields in ``explicit``; the setting's name is recorded in ``config.setting``."""
    setting = setting or config.setting
    values = {k: v for k, v in EVALUATION_SETTINGS[setting].items() if k not in explicit}
    return dataclasses.replace(config, setting=setting, **values)


def quick_evaluation(config: EvalConfig, explicit: frozenset[str] | set[str] = frozenset()) -> EvalConfig:
    """``config`` with the quick setting, except for the fields in ``explicit``."""
    return evaluation_setting(config, "quick", explicit)


@dataclass(frozen=True, kw_only=True)
class EvalOutputs(Checked):
    """Where `unmemorize eval` writes, and the quick setting it may apply."""

    quick: bool = option(False, "--setting quick: " + ", ".join(
        f"--{k.replace('_', '-')} {v}" if not isinstance(v, bool) else f"--{'' if v else 'no-'}{k.replace('_', '-')}"
        for k, v in QUICK_EVALUATION.items()) + " (a smoke run; options given explicitly win).")
    standard: bool = option(False, "--setting standard: sized so that differences between methods show (see --setting).")
    json_path: str | None = option(None, "Write the results here (keyed suite.task.metric); report.md/html go beside it.", flag="json")
    out: str | None = option(None, "Write OUT/eval.json (unless --json) and the report to this directory.")
    show_text: bool = option(False, "Show forget-set text the directory's run stored (unlearn --show-text) in the report.")


@dataclass(frozen=True, kw_only=True)
class AttackConfig(ModelOptions, ReadOptions, ExtractionOptions, RuntimeOptions, ForgetMeasurement, RobustnessOptions):
    """`unmemorize attack`: the robustness suite on an unlearned model beside its original."""

    model: str = option(None, "The unlearned model (directory, .gguf, registry name or hub id).", required=True)
    out: str = option(None, "Write OUT/eval.json (the robustness suite's results) and the report here.", required=True)

    def __post_init__(self) -> None:
        super().__post_init__()
        missing = [flag for flag, value in (("--original", self.original), ("--forget", self.forget)) if value is None]
        if missing:
            raise UserError(f"attack needs {' and '.join(missing)}: recovery is measured against the original on the forget set")


# --- audit, report, compare, demo ------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class AuditConfig(ModelOptions, ReadOptions, ExtractionOptions, RuntimeOptions):
    data: str = option(None, "Texts to measure (.jsonl/.csv/.txt/.npy, datasets dir, hf:NAME).", required=True)
    el_stride: int = option(1, "Score EL on every k-th prefix (1 = exact).", ge=1)
    batch_size: int = option(8, "Sequences per teacher-forced pass.", ge=1)
    json_path: str | None = option(None, "Write per-sample and mean results here.", flag="json")


# The flag score: loss by default, the best of the four membership scores at telling Gemma-3
# 270M's 32 extraction samples from unseen Pile text (AUC 0.80; min-k% 0.76, min-k%++ 0.74, zlib
# 0.70: benchmarks/results/paired_comparison, the original model).
SCAN_SCORES = ("loss", "min_k_plus_plus", "min_k", "zlib", "ma")


@dataclass(frozen=True, kw_only=True)
class ScanConfig(ModelOptions, SourceOptions, AttackOptions, RuntimeOptions):
    """Every knob of `unmemorize scan`; recorded in OUT/scan.json."""

    corpus: tuple[str, ...] = option((), "Corpus files or globs (.jsonl/.csv/.txt/.npy, datasets dirs; comma-separated or repeated), read as a stream.", required=True)
    out: str = option(None, "Output directory: forget.jsonl, scan.jsonl, scan.json, report.md/html.", required=True)
    window: int = option(200, "Tokens per window (the tokenizer's BOS included); longer documents are cut into several.", ge=2)
    stride: int | None = option(None, "Tokens between the starts of consecutive windows of a document (default: the window's text tokens, no overlap).", ge=1)
    reference: str | None = option(None, f"Unseen text the flags are calibrated on (default {DEFAULT_REFERENCE}, as eval's); the first window of each document.")
    reference_limit: int = option(500, "Reference documents scored (at --fpr 0.01, 500 put the threshold at the 6th highest reference score).", ge=1)
    score: str = option("loss", "The score that flags a window (higher: more likely memorized).", choices=SCAN_SCORES)
    fpr: float = option(0.01, "Share of the reference's windows allowed above the flag threshold (false-positive rate).", gt=0, lt=1)
    threshold: float | None = option(None, "Flag windows whose --score exceeds this number instead of calibrating on the reference (which is then not read).")
    attack_fpr: float = option(0.05, "The extraction attack runs on windows above the reference's threshold at this rate (the candidates); a window it extracts is flagged too.", gt=0, lt=1)
    pii: bool = option(False, "Find PII in flagged windows (the --focus pii detector; needs spaCy): their spans go to forget.jsonl, marked reproduced when the model predicts every token.")
    show_text: bool = option(False, "Write window text to scan.jsonl and the report (forget.jsonl always has it).")
    shard_documents: int = option(64, "Documents per shard: the unit of --resume and of data-parallel work.", ge=1)
    batch_size: int = option(8, "Windows per teacher-forced pass.", ge=1)
    resume: bool = option(False, "Continue a killed scan of the same options in --out from its finished shards.")
    overwrite: bool = option(False, "Replace a non-empty --out directory.")
    cpu: bool = option(False, "Run on the CPU even when a GPU is present.")

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.corpus:
            raise UserError("--corpus needs at least one file")
        if self.attack_fpr < self.fpr:
            raise UserError(f"--attack-fpr {self.attack_fpr:g} must be at least --fpr {self.fpr:g}: the attack's candidates include every flagged window")
        if self.resume and self.overwrite:
            raise UserError("--resume continues the scan in --out and --overwrite replaces it: choose one")


@dataclass(frozen=True, kw_only=True)
class PlanConfig(ModelOptions, LengthOption, TrainingShape):
    """`unmemorize plan`: the memory a training process needs, before launching it."""

    strategy: str = option("ddp", "How processes share the work: ddp (each holds everything), zero2 (gradients and optimizer state sharded), fsdp or zero3 (weights too).", choices=("ddp", "zero2", "fsdp", "zero3"))
    processes: int = option(1, "Processes (GPUs) the run is spread over; --gpus sets it.", ge=1)
    device: str = option("cuda", "Where the run trains: cuda, or cpu (fp32, the process's own memory counted).", choices=("cuda", "cpu"))
    full_logits: bool = option(False, "Plan the plain loss path (a [B, T, V] logits tensor) instead of the chunked one, to compare.")
    memory: str | None = option(None, "A budget per process, e.g. 24GB: also print the smallest change to this setting that fits.")
    gpus: str | None = option(None, "COUNTxSIZE, e.g. 8x80GB: the processes and the budget of each.")
    json_path: str | None = option(None, "Write the plan here.", flag="json")

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.memory is not None and self.gpus is not None:
            raise UserError("pass --memory (one process) or --gpus (COUNTxSIZE), not both")


@dataclass(frozen=True, kw_only=True)
class ReportOptions(Checked):
    run_dir: str = option(None, "An unlearn, eval or compare output directory.", argument=True, required=True)
    show_text: bool = option(False, "Show the forget-set text the run stored (unlearn --show-text); redacted otherwise.")


@dataclass(frozen=True, kw_only=True)
class CompareOptions(RuntimeOptions):
    config: str = option(None, "YAML: model, forget, optional retain, shared unlearn options, eval: {quick, suites, ...}, runs: [{name, method, ...}].", required=True)
    out: str = option(None, "Results: comparison.md/csv/json, tradeoff.png/csv, evals/NAME.json (small files only).", required=True)
    runs_dir: str | None = option(None, "Where each run's model weights go (default OUT/runs).")
    table_only: bool = option(False, "Train and evaluate nothing: rewrite the table and plot from the runs already finished.")


@dataclass(frozen=True, kw_only=True)
class DemoConfig(ModelOptions, RuntimeOptions):
    out: str = option("unmemorize-demo", "Output directory (a new or empty one, or an earlier demo's, which is replaced).")
    seed: int = option(0, "Seed of the synthetic corpus and of training.")
    records: int = option(12, "Synthetic customer records the model memorizes.", ge=1)
    forget_customers: int = option(2, "How many of them to forget (the first ones).", ge=1)
    # Step 2, the simulated leak: finetune with LoRA on every linear layer, merged; stops once
    # the share of PII values the audit extracts from the customers' names reaches leak_target.
    leak_max_epochs: int = option(30, "At most this many passes of the leak fine-tune (it stops once the PII is extracted).", ge=1)
    leak_target: float = option(1.0, "Share of the records' PII values the audit must extract for the leak fine-tune to stop.", gt=0, le=1)
    leak_lr: float = option(1e-3, "Learning rate of the leak fine-tune.", gt=0)
    leak_batch_size: int = option(2, "Records per step of the leak fine-tune.", ge=1)
    leak_lora: bool = option(True, "The leak fine-tune trains LoRA adapters on every linear layer (merged), or every weight.", negative="leak-full")
    leak_lora_r: int = option(16, "LoRA rank of the leak fine-tune.", ge=1)
    # Step 3 also scans the records (`unmemorize scan`, OUT/scan): a record is flagged when the
    # model predicts more of its tokens than this share.
    scan_ma: float = option(0.5, "MA above which the audit's scan flags a record as memorized (Gemma-3 270M's MA on unseen Pile text is about 0.41).", gt=0, lt=1)
    # Step 4, unlearning: deliberate imagination on the PII tokens of the forgotten customers.
    strength: float = option(20.0, "Imagination strength of the unlearning step.", gt=0)
    unlearn_lr: float = option(2e-3, "Learning rate of the unlearning step.", gt=0)
    unlearn_epochs: int = option(12, "Passes of each unlearning round over its forget texts (one step each).", ge=1)
    decoys: bool = option(True, "Also unlearn each forgotten customer's name followed by every other customer's PII (what the model would answer instead), in that context only.", negative="no-decoys")
    unlearn_rounds: int = option(3, "At most this many unlearning rounds: after each, what the forgotten customers' completions still give away (own or others' PII) joins the forget set.", ge=1)
    retain_weight: float = option(1.0, "Weight of the kept customers' records as retain text in the unlearning step (0: pure deliberate imagination).", ge=0)
    kept_share: float = option(0.95, "PASS needs at least this share of the kept customers' extracted PII values still extracted after unlearning.", ge=0, le=1)
    # Step 5: general text.
    general_docs: int = option(8, "WikiText documents whose perplexity shows general ability.", ge=1)
    general_max_length: int = option(128, "Tokens per general-text document.", ge=2)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.forget_customers >= self.records:
            raise UserError(
                f"--forget-customers {self.forget_customers} must be fewer than --records {self.records}: "
                "the kept customers show that the removal is targeted"
            )


# The settings an evaluation takes from the unlearning run it follows (`unlearn --eval`, the
# runs of `compare`), so that both read and measure the forget set the same way.
EVAL_FROM_UNLEARN = ("limit", "max_length", "el_n", "el_stride", "seed", "allow_pickle", "trust_remote_code",
                     "split", "text_column", "npy_tokenizer", "reference")


def evaluation_after(config: UnlearnConfig, **settings: Any) -> EvalConfig:
    """The evaluation of an unlearning run's output beside its original (``settings`` override)."""
    shared = {name: getattr(config, name) for name in EVAL_FROM_UNLEARN}
    return EvalConfig(**{"model": config.out, "original": config.model, "forget": config.forget, **shared, **settings})
