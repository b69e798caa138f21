"""One training loop for every unlearning method.

The whole optimizer step is in `_optimizer_step`: teacher forward (when the method needs one),
student forward, the method's loss sum divided by the step's total target weight, backward,
clipping, update. Everything else here is set-up (model, data, focus, LoRA or a frozen teacher)
and bookkeeping (memorization after each epoch, early stop, checkpoints, atomic output).

A run can be killed at any moment: with ``checkpoint_every`` it leaves a checkpoint (see
`checkpoint`) that ``resume`` continues to the same final weights, bit for bit on a CPU."""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import math
import resource
import shutil
import signal
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import torch
from torch.utils.data import DataLoader

from . import __version__
from . import checkpoint
from .data import collate, load_examples, tokenize_examples
from .errors import UserError
from .focus import Focus, focus_spans, target_weights
from .methods import UnlearningMethod, get_method, method_parameters
from .metrics.memorization import MemorizationResult, memorization
from .models import load_model
from .paths import publish_directory, staging_directory
from .report import DEFAULT_REPORT_SAMPLES, MODEL_CARD, SAMPLES_FILE, data_summary, forget_continuations, model_card


@dataclass
class UnlearnConfig:
    """Every knob of an unlearning run. Serialized as ``unlearn_config.json`` in the output."""

    forget: str
    model: str = "gemma-3-270m"
    out: str | None = None
    overwrite: bool = False
    method: str = "di"
    # Method hyper-parameters. None: the method's own default (the resolved value is recorded);
    # a value given for a method that does not take it is refused (see `build_method`).
    imagination_strength: float | None = None  # di: γ (default 3)
    beta: float | None = None  # npo (default 0.1), simnpo (default 2.5)
    margin: float | None = None  # simnpo (default 0)
    task_vector_alpha: float | None = None  # task-vector: α (default 1)
    dpd_lambda: float | None = None  # dpd: λ (default 0.75)
    # Text to keep: every forget micro-batch comes with one of its micro-batches (cycled), and
    # the retain term (NLL, or KL to the original for kl) enters with weight retain_weight.
    retain: str | None = None
    retain_weight: float = 1.0
    focus: str = "all"
    focus_mode: str = "hard"
    focus_weight: float = 10.0
    lora: bool = True
    lora_r: int = 8
    lora_alpha: float = 16.0
    lora_dropout: float = 0.05
    lora_targets: list[str] | None = None  # None: the attention projections the model has
    save_adapter: bool = False
    optimizer: str = "adamw"
    lr: float = 1e-4
    epochs: int = 1
    max_steps: int | None = None
    batch_size: int = 8
    grad_accum: int = 1
    warmup_steps: int = 0
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    seed: int = 42
    max_length: int = 200
    split: str = "lines"
    text_column: str = "text"
    npy_tokenizer: str | None = None
    limit: int | None = None
    el_n: list[int] = field(default_factory=lambda: [10])
    # Exact EL generates ~T²/2 tokens per sequence (minutes per sequence for a 262k-vocabulary
    # model on a CPU), so unlearning scores every 10th prefix unless told otherwise, and scores
    # EL before and after only, unless --el-every-epoch or --stop-el asks for it each epoch.
    el_stride: int = 10
    el_every_epoch: bool = False
    # False: MA only before and after (a caller that measures EL itself, e.g. compare's evaluation).
    measure_el: bool = True
    eval_batch_size: int = 8
    el_batch_size: int = 64
    # A number, or "auto": the model's own level on unseen text (--reference), Jang et al.'s
    # "forgotten" threshold.
    stop_ma: float | str | None = None
    stop_el: float | str | None = None
    reference: str | None = None  # default: reference/pile.csv under the data location
    reference_limit: int = 32
    allow_pickle: bool = False
    trust_remote_code: bool = False
    cpu: bool = False
    max_examples: int | None = None  # refuse a larger forget set (--limit truncates instead)
    checkpoint_every: int | None = None  # optimizer steps between checkpoints
    checkpoint_dir: str | None = None  # default: <out>.checkpoint
    resume: bool = False
    # The report's before/after continuations of the first forget prefixes. Without show_text
    # only their token match masks are stored: no forget-set text is written to the output.
    report_samples: int = DEFAULT_REPORT_SAMPLES
    show_text: bool = False

    def validate(self) -> None:
        positive = {
            "lr": self.lr, "epochs": self.epochs, "batch_size": self.batch_size,
            "grad_accum": self.grad_accum, "lora_r": self.lora_r, "lora_alpha": self.lora_alpha,
            "el_stride": self.el_stride, "eval_batch_size": self.eval_batch_size,
            "el_batch_size": self.el_batch_size,
        }
        for name, value in positive.items():
            if not value > 0:
                raise UserError(f"--{name.replace('_', '-')} must be positive, not {value}")
        non_negative = {
            "warmup_steps": self.warmup_steps, "weight_decay": self.weight_decay,
            "max_grad_norm": self.max_grad_norm, "retain_weight": self.retain_weight,
        }
        for name, value in non_negative.items():
            if not value >= 0:
                raise UserError(f"--{name.replace('_', '-')} must be >= 0, not {value}")
        for name in ("max_steps", "limit", "max_examples", "checkpoint_every"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise UserError(f"--{name.replace('_', '-')} must be at least 1, not {value}")
        if self.report_samples < 0:
            raise UserError(f"--report-samples must be >= 0, not {self.report_samples}")
        if self.max_length < 2:
            raise UserError(f"--max-length must be at least 2, not {self.max_length}")
        if not 0 <= self.lora_dropout < 1:
            raise UserError(f"--lora-dropout must be in [0, 1), not {self.lora_dropout}")
        if self.optimizer not in ("adamw", "sgd"):
            raise UserError(f"--optimizer must be 'adamw' or 'sgd', not {self.optimizer!r}")
        if any(n < 1 for n in self.el_n):
            raise UserError(f"--el-n must be at least 1, not {self.el_n}")
        if not self.measure_el and (self.stop_el is not None or self.el_every_epoch):
            raise UserError("--no-el leaves nothing for --stop-el / --el-every-epoch to read; drop one")
        for name in ("stop_ma", "stop_el"):
            value = getattr(self, name)
            if isinstance(value, str):
                if value != "auto":
                    try:
                        value = float(value)
                    except ValueError:
                        raise UserError(f"--{name.replace('_', '-')} takes a number or 'auto', not {value!r}") from None
                    setattr(self, name, value)
            if isinstance(value, float) and not 0 <= value <= 1:
                raise UserError(f"--{name.replace('_', '-')} must be in [0, 1], not {value}")
        if self.reference_limit < 1:
            raise UserError(f"--reference-limit must be at least 1, not {self.reference_limit}")
        if self.save_adapter and not self.lora:
            raise UserError("--save-adapter needs --lora (a full fine-tune has no adapter)")
        if (self.checkpoint_every or self.resume) and not (self.out or self.checkpoint_dir):
            flag = "--resume" if self.resume else "--checkpoint-every"
            raise UserError(f"{flag} needs --out or --checkpoint-dir: checkpoints live in <out>.checkpoint")
        Focus.parse(self.focus)


class TrainingDiverged(UserError):
    """The loss or a weight stopped being finite; the message names the last good checkpoint."""


class Interrupted(KeyboardInterrupt):
    """Ctrl-C during training; the message says where the checkpoint to resume from is."""


@dataclass
class StepRecord:
    step: int
    epoch: int
    loss: float
    lr: float
    tokens_per_s: float
    retain_loss: float | None = None  # the retain term's part of loss (with --retain)


class Reporter:
    """What the loop tells the user; the CLI supplies a rich implementation."""

    def message(self, text: str) -> None:
        pass

    def start_training(self, total_steps: int) -> None:
        pass

    def step(self, record: StepRecord) -> None:
        pass

    def end_training(self) -> None:
        pass

    def evaluation(self, label: str) -> Callable[[int, int], None] | None:
        return None

    def memorization(self, label: str, means: dict[str, float]) -> None:
        pass


def attention_projections(model: torch.nn.Module) -> list[str]:
    """Leaf names of the linear layers inside attention blocks (q/k/v/o on Llama and Gemma,
    q/k/v/out_proj on GPT-Neo, c_attn/c_proj on GPT-2): the paper's LoRA targets."""
    from transformers.pytorch_utils import Conv1D

    names = set()
    for full_name, module in model.named_modules():
        if isinstance(module, (torch.nn.Linear, Conv1D)) and ("attn" in full_name or "attention" in full_name):
            names.add(full_name.rsplit(".", 1)[-1])
    if not names:
        raise UserError("no attention projections found for LoRA; pass --lora-targets")
    return sorted(names)


def _peak_memory_mb() -> float:
    # ru_maxrss is in KiB on Linux; CUDA peak added when a GPU was used.
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    if torch.cuda.is_available():
        peak += torch.cuda.max_memory_allocated() / 2**20
    return peak


def _inside(path: Path, directory: Path) -> bool:
    return path == directory or directory in path.parents


def _check_paths(config: UnlearnConfig) -> tuple[Path | None, Path | None]:
    """Where the output and the checkpoints go. Refuses any place whose writing or replacing
    (--overwrite) would touch the input model or the forget data."""
    inputs = {}
    for label, given in (("the input model", config.model), ("the forget data", config.forget),
                         ("the retain data", config.retain)):
        if given is None:
            continue
        path = Path(given).expanduser()
        if not str(given).startswith("hf:") and path.exists():
            inputs[label] = path.resolve()
    out = checkpoints = None
    if config.out is not None:
        out = Path(config.out).expanduser().resolve()
        for label, path in inputs.items():
            if _inside(out, path):
                raise UserError(f"--out {out} is {label} or inside its directory; inputs are never modified")
            if _inside(path, out):
                raise UserError(f"--out {out} contains {label}; writing the output there would replace it")
        if out.exists() and not out.is_dir():
            raise UserError(f"--out {out} is a file; pass a directory")
        if out.exists() and any(out.iterdir()) and not config.overwrite:
            raise UserError(f"--out {out} exists and is not empty; pass --overwrite to replace it")
    if config.checkpoint_dir is not None:
        checkpoints = Path(config.checkpoint_dir).expanduser().resolve()
    elif out is not None:
        checkpoints = out.with_name(out.name + ".checkpoint")
    if checkpoints is not None:
        for label, path in inputs.items():
            if _inside(checkpoints, path):
                raise UserError(f"--checkpoint-dir {checkpoints} is {label} or inside its directory; inputs are never modified")
        if out is not None and (_inside(checkpoints, out) or _inside(out, checkpoints)):
            raise UserError(f"--checkpoint-dir {checkpoints} and --out {out} must be separate directories")
        if checkpoints.exists() and not checkpoints.is_dir():
            raise UserError(f"--checkpoint-dir {checkpoints} is a file; pass a directory")
    return out, checkpoints


# Options that may change between a run and its --resume: where things go, how evaluation is
# batched, what may be loaded. Everything else shapes the training trajectory and must match.
# The forget and retain files are compared by the tokens they give (the data fingerprint), not
# by their paths.
_RESUME_MAY_CHANGE = {
    "out", "overwrite", "checkpoint_every", "checkpoint_dir", "resume", "eval_batch_size",
    "el_batch_size", "cpu", "allow_pickle", "trust_remote_code", "max_examples", "forget", "retain",
    "report_samples", "show_text",
}
# Config fields whose command-line option is named otherwise.
OPTION_NAMES = {"imagination_strength": "strength", "task_vector_alpha": "alpha"}
# Config fields that are method hyper-parameters (each method declares the ones it takes).
METHOD_OPTIONS = ("imagination_strength", "beta", "margin", "task_vector_alpha", "dpd_lambda")


def _option(name: str) -> str:
    return "--" + OPTION_NAMES.get(name, name).replace("_", "-")


def build_method(config: UnlearnConfig) -> UnlearningMethod:
    """The configured method, given only the hyper-parameters it declares. A hyper-parameter set
    for a method that does not take it is an error rather than silently ignored (``--strength``
    with ``ga`` does nothing); the values used, defaults included, are written back to
    ``config`` so ``unlearn_config.json`` records them."""
    declared = method_parameters(config.method)
    for name in METHOD_OPTIONS:
        if getattr(config, name) is not None and name not in declared:
            takes = ", ".join(_option(n) for n in declared) or "no hyper-parameters"
            raise UserError(f"{_option(name)} does not apply to --method {config.method} (it takes {takes})")
    method = get_method(config.method, **{n: getattr(config, n) for n in declared if getattr(config, n) is not None})
    for name in declared:
        setattr(config, name, getattr(method, name))
    if config.retain is None and method.requires_retain:
        raise UserError(f"--method {config.method} needs --retain FILE: the text whose likelihood it keeps")
    if config.retain is not None and not method.trains:
        raise UserError(f"--retain does not apply to --method {config.method}: it trains nothing")
    if not method.trains:
        config.lora = False  # nothing is trained, so there is no adapter to add or merge
    return method


def _check_resume_config(saved: dict, requested: dict, path: Path) -> None:
    requested = json.loads(json.dumps(requested))  # the same types the checkpoint holds
    for name, value in requested.items():
        if name in _RESUME_MAY_CHANGE or saved.get(name) == value:
            continue
        raise UserError(
            f"--resume: {_option(name)} is {value!r} here but {saved.get(name)!r} in the checkpoint {path}; "
            "resume with the same value (or start over with --overwrite)"
        )


def _find_resume(config: UnlearnConfig, directory: Path | None, requested: dict) -> Path | None:
    """The checkpoint to resume from (None for a fresh run); refuses to silently discard one."""
    found = checkpoint.latest(directory) if directory is not None else None
    if config.resume:
        if found is None:
            raise UserError(f"--resume: no checkpoint in {directory}; run without --resume to start")
        _check_resume_config(checkpoint.read_state(found).get("config", {}), requested, found)
        return found
    if found is not None and not config.overwrite:
        raise UserError(
            f"{directory} holds a checkpoint of an unfinished run ({found.name}); pass --resume to "
            "continue it, or --overwrite to discard it and start over"
        )
    return None


def _data_fingerprint(tokenized: list, weights: list[list[float]], trainable: list[int],
                      retain: list | None = None) -> str:
    """A hash of exactly what training sees (token ids and target weights, and the retain set's
    token ids): resuming on other data, another tokenizer or another focus is refused. A hash,
    so no text is stored."""
    digest = hashlib.sha256()
    for i in trainable:
        digest.update(json.dumps([tokenized[i].input_ids, weights[i]]).encode())
    for item in retain or []:
        digest.update(json.dumps(["retain", item.input_ids]).encode())
    return digest.hexdigest()


def seeded_permutation(size: int, *key: int) -> list[int]:
    """A permutation of range(size) drawn from the integer ``key`` alone: the same in every process
    and run (hash() of a tuple of ints is not randomized)."""
    generator = torch.Generator().manual_seed(hash(key) & 0xFFFF_FFFF_FFFF_FFFF)
    return torch.randperm(size, generator=generator).tolist()


class EpochShuffle(torch.utils.data.Sampler):
    """A fresh permutation each epoch, drawn from (seed, epoch) alone: a resumed run finds the
    order of any epoch without replaying the ones before it. Accelerate calls set_epoch."""

    def __init__(self, size: int, seed: int) -> None:
        self.size, self.seed, self.epoch = size, seed, 1

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self):
        return iter(seeded_permutation(self.size, self.seed, self.epoch))

    def __len__(self) -> int:
        return self.size


class RetainStream:
    """Retain micro-batches drawn alongside the forget micro-batches, cycling the retain set: an
    endless stream of seeded permutations of it (a new one each pass). The forget micro-batch
    number k of the run, on process r of P, gets stream items [(k·P + r)·b, (k·P + r + 1)·b).
    A pure function of k: a resumed run draws the same retain batches, and P processes or
    gradient accumulation see the same items as one process with the whole batch."""

    def __init__(self, items: list, batch_size: int, seed: int, pad_id: int) -> None:
        self.items, self.batch_size, self.seed, self.pad_id = items, batch_size, seed, pad_id
        self._cycle, self._order = -1, []  # the permutation of the current pass

    def _item(self, position: int):
        cycle, offset = divmod(position, len(self.items))
        if cycle != self._cycle:
            # The key's -1 keeps it distinct from the forget order's (seed, epoch).
            self._cycle, self._order = cycle, seeded_permutation(len(self.items), self.seed, -1, cycle)
        return self.items[self._order[offset]]

    def batch(self, k: int, rank: int = 0, processes: int = 1) -> dict[str, torch.Tensor]:
        start = (k * processes + rank) * self.batch_size
        rows = [self._item(position) for position in range(start, start + self.batch_size)]
        return collate(rows, [[1.0] * len(row.input_ids) for row in rows], self.pad_id)


class _DeferSigint:
    """Ctrl-C during an optimizer step takes effect once the step is complete, so a checkpoint
    never holds half an update. A second Ctrl-C aborts at once (and nothing is saved)."""

    def __enter__(self) -> "_DeferSigint":
        self.received = False
        try:
            self.previous = signal.signal(signal.SIGINT, self._handler)
        except ValueError:  # not the main thread: Python delivers signals elsewhere
            self.previous = None
        return self

    def _handler(self, signum, frame) -> None:
        if self.received:
            raise KeyboardInterrupt
        self.received = True

    def __exit__(self, exc_type, exc, tb) -> bool:
        if self.previous is not None:
            signal.signal(signal.SIGINT, self.previous)
        if self.received and exc_type is None:
            raise KeyboardInterrupt
        return False


def _lr_lambda(warmup_steps: int) -> Callable[[int], float]:
    # Linear warm-up, then constant: unlearning runs are short and stop on a memorization target.
    return lambda step: min(1.0, (step + 1) / warmup_steps) if warmup_steps else 1.0


def unlearn(config: UnlearnConfig, reporter: Reporter | None = None) -> dict:
    """Run unlearning as configured; returns the metrics that are also written to ``--out``."""
    from accelerate import Accelerator
    from accelerate.utils import broadcast_object_list, set_seed

    reporter = reporter or Reporter()
    config.validate()
    started = time.time()
    method = build_method(config)
    out_dir, checkpoint_dir = _check_paths(config)
    requested = asdict(config)  # as given: before 'auto' thresholds and LoRA targets are resolved
    resume_from = _find_resume(config, checkpoint_dir, requested)
    accelerator = Accelerator(cpu=config.cpu)
    set_seed(config.seed)

    # --- data and model (data first: a bad file fails before a large model loads) ---------
    examples = load_examples(
        config.forget, split=config.split, text_column=config.text_column,
        npy_tokenizer=config.npy_tokenizer, limit=config.limit,
    )
    if config.max_examples is not None and len(examples) > config.max_examples:
        raise UserError(
            f"the forget set has {len(examples)} examples, more than --max-examples {config.max_examples}; "
            "pass a smaller set, --limit N to use the first N, or a larger --max-examples"
        )
    retain_examples = None
    if config.retain is not None:
        retain_examples = load_examples(config.retain, split=config.split, text_column=config.text_column,
                                        npy_tokenizer=config.npy_tokenizer)
    focus = Focus.parse(config.focus)
    loaded = load_model(
        config.model, device=str(accelerator.device), allow_pickle=config.allow_pickle,
        trust_remote_code=config.trust_remote_code, progress=reporter.message,
    )
    model, tokenizer = loaded.model, loaded.tokenizer
    tokenized = tokenize_examples(examples, tokenizer, config.max_length)
    weights, without_focus = target_weights(
        tokenized, focus_spans(examples, focus), config.focus_mode, config.focus_weight
    )
    trainable = list(range(len(tokenized)))
    if focus.kind != "all" and without_focus:
        ids = ", ".join(tokenized[i].example.id for i in without_focus[:20])
        if config.focus_mode == "hard":
            trainable = [i for i in trainable if i not in set(without_focus)]
            reporter.message(
                f"{len(without_focus)} of {len(tokenized)} sequences have no token in focus "
                f"({focus}) and are not trained on (hard focus): ids {ids}"
            )
            if not trainable:
                raise UserError(f"no sequence has a token in focus ({focus}); nothing to unlearn")
        else:
            reporter.message(f"{len(without_focus)} sequences have no token in focus ({focus}): ids {ids}")
    sequences = [t.input_ids for t in tokenized]
    pad_id = tokenizer.pad_token_id
    retain_stream = None
    if retain_examples is not None:
        retain_tokenized = tokenize_examples(retain_examples, tokenizer, config.max_length)
        retain_stream = RetainStream(retain_tokenized, config.batch_size, config.seed, pad_id)
        reporter.message(
            f"retain set: {len(retain_tokenized)} sequences, {sum(len(t.input_ids) for t in retain_tokenized)} "
            f"tokens; retain term weight {config.retain_weight}"
        )
    fingerprint = _data_fingerprint(tokenized, weights, trainable, retain_stream.items if retain_stream else None)
    reporter.message(
        f"forget set: {len(tokenized)} sequences, {sum(map(len, sequences))} tokens "
        f"(max {config.max_length} per sequence); training on {len(trainable)}"
    )

    def evaluate(label: str, with_el: bool = True, on: list[list[int]] | None = None) -> MemorizationResult:
        result = None
        if accelerator.is_main_process:
            net = accelerator.unwrap_model(model)
            result = memorization(
                net, on or sequences, ns=tuple(config.el_n), el_stride=config.el_stride,
                batch_size=config.eval_batch_size, el_batch_size=config.el_batch_size,
                pad_token_id=pad_id, compute_el=with_el and config.measure_el,
                progress=reporter.evaluation(label),
            )
            if on is None:
                reporter.memorization(label, result.means())
        # Every process needs the numbers for the stop rule; only one computes them.
        return broadcast_object_list([result])[0]

    def finish(after: dict, history: list[dict], steps: list[dict], stopped_because: str,
               resumed_step: int | None, earlier_wall_time: float, net, original=None) -> dict:
        """The run's metrics, written with the model (``net``) to --out."""
        metrics = {
            "model": loaded.name,
            "method": config.method,
            "before": before_json,
            "epochs": history,
            "after": after,
            "steps": steps,
            "stopped_because": stopped_because,
            "resumed_from_step": resumed_step,
            "reference_levels": reference_levels,
            "thresholds": {"ma": config.stop_ma, "el": config.stop_el},
            "wall_time_s": round(earlier_wall_time + time.time() - started, 2),
            "peak_memory_mb": round(_peak_memory_mb(), 1),
            "sequences_without_focus": [tokenized[i].example.id for i in without_focus],
            "unmemorize_version": __version__,
            "data": data_summary(config, tokenized, weights, trainable, fingerprint),
        }
        if out_dir is not None and accelerator.is_main_process:
            files = dict(method.saved_files())
            if config.report_samples and method.trains:
                # Before = the original: the same net with its LoRA adapters off, or the frozen copy.
                samples = forget_continuations(
                    net, tokenizer, tokenized[: config.report_samples], original=original,
                    adapters_off=config.lora, show_text=config.show_text)
                files[SAMPLES_FILE] = json.dumps(samples)
            try:
                files[MODEL_CARD] = model_card(metrics, asdict(config), out_dir.name)
            except Exception as error:  # noqa: BLE001 - the card must never cost the run
                reporter.message(f"warning: no model card ({type(error).__name__}: {error})")
            _save(out_dir, net, tokenizer, config, metrics, files)
            if checkpoint_dir is not None:
                checkpoint.remove(checkpoint_dir)  # the finished output supersedes it
        accelerator.wait_for_everyone()
        return metrics

    resumed = None
    if resume_from is not None:
        resumed = checkpoint.load(resume_from)
        if resumed.state["data_fingerprint"] != fingerprint:
            raise UserError(
                f"--resume: the forget set, tokenizer or focus gives other training data than the run "
                f"in {resume_from}; resume with the same --forget, --retain, --model and focus options"
            )
        # What the interrupted run resolved ('auto' thresholds, LoRA targets) and measured.
        for name in ("stop_ma", "stop_el", "lora_targets"):
            setattr(config, name, resumed.state["resolved_config"][name])
        before_json, reference_levels = resumed.state["before"], resumed.state["reference_levels"]
        reporter.message(f"resuming from step {resumed.state['step']} ({resume_from})")
    else:
        before_json = evaluate("before").to_json()
        reference_levels = _resolve_auto_thresholds(
            config, tokenizer, reporter, lambda seqs, with_el: evaluate("unseen text", with_el, on=seqs)
        )
    if not method.trains:
        # An inference-time method (dpd): the model is wrapped, measured and saved as it is.
        method.wrap(model)
        return finish(evaluate("after").to_json(), [], [], "inference-time method (no training)",
                      None, 0.0, model)

    # --- student and teacher --------------------------------------------------------------
    teacher = None
    if config.lora:
        from peft import LoraConfig, get_peft_model

        targets = config.lora_targets or attention_projections(model)
        config.lora_targets = targets
        model = get_peft_model(model, LoraConfig(
            r=config.lora_r, lora_alpha=config.lora_alpha, lora_dropout=config.lora_dropout,
            target_modules=targets, task_type="CAUSAL_LM",
        ))
    elif method.needs_teacher or (retain_stream is not None and method.retain_needs_teacher):
        # A frozen copy costs one model's weights (1 GiB for Gemma-3 270M in fp32). Precomputed
        # teacher logits would cost sequences x length x vocabulary floats instead: 6.7 GB for 32
        # sequences of 200 tokens over Gemma's 262k vocabulary, and grow with the forget set.
        teacher = copy.deepcopy(model).eval().requires_grad_(False)
    named_trainable = {name: p for name, p in model.named_parameters() if p.requires_grad}
    parameters = list(named_trainable.values())
    # Task arithmetic needs the weights before training (a resumed run still starts from these).
    initial_weights = None
    if method.keeps_initial_weights:
        initial_weights = {name: p.detach().clone() for name, p in named_trainable.items()}
    if resumed is not None:
        if set(resumed.trainable) != set(named_trainable):
            raise UserError(f"--resume: the checkpoint {resume_from} holds other parameters than this model trains")
        with torch.no_grad():
            for name, p in named_trainable.items():
                p.copy_(resumed.trainable[name])
    reporter.message(
        f"trainable parameters: {sum(p.numel() for p in parameters):,} "
        f"({'LoRA r=%d on %s' % (config.lora_r, ', '.join(config.lora_targets)) if config.lora else 'full fine-tuning'})"
    )
    if config.optimizer == "adamw":
        optimizer = torch.optim.AdamW(parameters, lr=config.lr, weight_decay=config.weight_decay)
    else:
        optimizer = torch.optim.SGD(parameters, lr=config.lr, weight_decay=config.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _lr_lambda(config.warmup_steps))

    dataset = [(tokenized[i], weights[i]) for i in trainable]
    loader = DataLoader(
        dataset, batch_size=config.batch_size, sampler=EpochShuffle(len(dataset), config.seed),
        # The loader's own seed draw comes from here, not from the global RNG that dropout uses.
        generator=torch.Generator().manual_seed(config.seed),
        collate_fn=lambda rows: collate([r[0] for r in rows], [r[1] for r in rows], pad_id),
    )
    model, optimizer, loader, scheduler = accelerator.prepare(model, optimizer, loader, scheduler)
    if resumed is not None:
        optimizer.load_state_dict(resumed.trainer["optimizer"])
        scheduler.load_state_dict(resumed.trainer["scheduler"])
    if teacher is not None:
        teacher = teacher.to(accelerator.device)

    def teacher_logits(batch) -> torch.Tensor:
        with torch.no_grad():
            if teacher is not None:
                return teacher(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
            # LoRA: the teacher is the same network with its adapters off, in eval mode.
            net = accelerator.unwrap_model(model)
            net.eval()
            try:
                with net.disable_adapter():
                    return net(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
            finally:
                net.train()

    def step_total(values) -> torch.Tensor:
        """A normalizer summed over the step's micro-batches and over every process."""
        return accelerator.reduce(torch.as_tensor(sum(values), device=accelerator.device, dtype=torch.float32), "sum")

    def backward_term(batch: dict, loss_sum: Callable, needs_teacher: bool, norm: torch.Tensor,
                      weight: float = 1.0) -> torch.Tensor:
        """Forward one micro-batch, backward its share of the step's loss; the share, detached."""
        target = teacher_logits(batch) if needs_teacher else None
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        # DDP averages gradients over processes; multiplying by their number turns the average
        # back into the sum that Σ w ℓ / Σ w over the whole step needs.
        loss = weight * loss_sum(logits, batch, target) / norm * accelerator.num_processes
        accelerator.backward(loss)
        return loss.detach() / accelerator.num_processes

    def _optimizer_step(micro_batches: list[dict], retain_batches: list[dict]) -> tuple[float | None, float | None]:
        """One update; returns the step's loss (forget term + retain term) and its retain term."""
        total_norm = step_total(method.normalizer(b) for b in micro_batches)
        if total_norm.item() == 0:
            return None, None
        step_loss = torch.zeros((), device=accelerator.device)
        retain_loss = torch.zeros((), device=accelerator.device)
        retain_norm = step_total(method.retain_normalizer(b) for b in retain_batches) if retain_batches else None
        for index, batch in enumerate(micro_batches):
            sync = index == len(micro_batches) - 1
            if retain_batches:
                # Never synced itself: the forget term's last backward below syncs the whole step.
                with accelerator.no_sync(model):
                    retain_loss += backward_term(retain_batches[index], method.retain_loss_sum,
                                                 method.retain_needs_teacher, retain_norm, config.retain_weight)
            with contextlib.nullcontext() if sync else accelerator.no_sync(model):
                step_loss += backward_term(batch, method.loss_sum, method.needs_teacher, total_norm)
        if config.max_grad_norm > 0:
            accelerator.clip_grad_norm_(parameters, config.max_grad_norm)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        if not retain_batches:  # no retain term: one reduction less on every step
            return accelerator.reduce(step_loss, "sum").item(), None
        retain_total = accelerator.reduce(retain_loss, "sum").item()
        return accelerator.reduce(step_loss, "sum").item() + retain_total, retain_total

    steps_per_epoch = math.ceil(len(loader) / config.grad_accum)
    total_steps = config.epochs * steps_per_epoch
    if config.max_steps is not None:
        total_steps = min(total_steps, config.max_steps)
    epoch_el = config.el_every_epoch or config.stop_el is not None
    history: list[dict] = []
    steps: list[StepRecord] = []
    step, stopped_because, last_eval = 0, "epochs", None
    # Where the last completed step left off: its epoch, the batches of that epoch it consumed,
    # and the random state after it. A checkpoint is always of this point.
    position = {"epoch": 1, "batches": 0, "rng": checkpoint.capture_rng()}
    newest_checkpoint = None  # (path, step) of the newest checkpoint on disk
    earlier_wall_time = 0.0
    pending_rng = None
    if resumed is not None:
        state = resumed.state
        step, history = state["step"], state["history"]
        steps = [StepRecord(**s) for s in state["steps"]]
        position = {"epoch": state["epoch"], "batches": state["batches_done"], "rng": resumed.trainer["rng"]}
        newest_checkpoint = (resume_from, step)
        earlier_wall_time = state["wall_time_s"]
        pending_rng = resumed.trainer["rng"]
    elif checkpoint_dir is not None and accelerator.is_main_process:
        checkpoint.remove(checkpoint_dir)  # an unfinished run's, discarded with --overwrite

    def save_checkpoint() -> Path:
        net = accelerator.unwrap_model(model)
        state = {
            "step": step, "epoch": position["epoch"], "batches_done": position["batches"],
            # An epoch's evaluation is redone on resume when the checkpoint is inside that epoch.
            "history": [h for h in history if h["epoch"] < position["epoch"]],
            "steps": [asdict(s) for s in steps], "before": before_json,
            "reference_levels": reference_levels, "config": requested, "resolved_config": asdict(config),
            "data_fingerprint": fingerprint, "wall_time_s": earlier_wall_time + time.time() - started,
        }
        trainer = {"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "rng": position["rng"]}
        trainable_now = {name: p for name, p in net.named_parameters() if p.requires_grad}
        return checkpoint.save(checkpoint_dir, step, trainable_now, trainer, state)

    def stop_if_not_finite(loss: float | None) -> None:
        bad = None
        if loss is not None and not math.isfinite(loss):
            bad = f"the loss is {loss}"
        else:
            bad = next((f"weight {name} is not finite" for name, p in named_trainable.items()
                        if not torch.isfinite(p).all()), None)
        if bad is None:
            return
        if newest_checkpoint is not None:
            kept = f"last good checkpoint: {newest_checkpoint[0]} (step {newest_checkpoint[1]})"
        else:
            kept = "no checkpoint was written (--checkpoint-every N keeps one)"
        raise TrainingDiverged(f"training diverged at step {step}: {bad}; lower --lr; {kept}")

    def load_trainable(weights: dict[str, torch.Tensor]) -> None:
        with torch.no_grad():
            for name, value in weights.items():
                named_trainable[name].copy_(value)

    def put_final_weights() -> dict[str, torch.Tensor]:
        """Put the method's final weights in place (task arithmetic: θ − α·(θ_ft − θ)); returns
        the trained weights they replace."""
        trained = {name: p.detach().clone() for name, p in named_trainable.items()}
        load_trainable(method.final_weights(trained, initial_weights))
        return trained

    @contextlib.contextmanager
    def as_final_weights():
        """Memorization is measured on the final weights; training goes on from the trained ones."""
        if initial_weights is None:
            yield
            return
        trained = put_final_weights()
        try:
            yield
        finally:
            load_trainable(trained)

    start_epoch, skip_batches = position["epoch"], position["batches"]
    in_step = False
    reporter.start_training(total_steps)
    model.train()
    try:
        for epoch in range(start_epoch, config.epochs + 1):
            loader.set_epoch(epoch)
            micro: list[dict] = []
            retain_micro: list[dict] = []
            window_tokens, window_start = 0, time.time()
            for index, batch in enumerate(loader):
                if epoch == start_epoch and index < skip_batches:
                    continue  # done before the resume; skipping costs only the collation
                if step >= total_steps:
                    break
                if pending_rng is not None:
                    checkpoint.restore_rng(pending_rng)
                    pending_rng = None
                micro.append(batch)
                if retain_stream is not None:  # a function of the micro-batch's place in the run
                    retain_micro.append(retain_stream.batch(
                        (epoch - 1) * len(loader) + index, accelerator.process_index, accelerator.num_processes))
                window_tokens += int(batch["attention_mask"].sum())
                if len(micro) < config.grad_accum and index < len(loader) - 1:
                    continue
                with _DeferSigint():
                    in_step = True
                    loss, retain_loss = _optimizer_step(micro, retain_micro)
                    micro, retain_micro = [], []
                    step += 1
                    elapsed = max(time.time() - window_start, 1e-9)
                    record = StepRecord(step, epoch, loss if loss is not None else float("nan"),
                                        scheduler.get_last_lr()[0],
                                        window_tokens * accelerator.num_processes / elapsed, retain_loss)
                    steps.append(record)
                    position = {"epoch": epoch, "batches": index + 1, "rng": checkpoint.capture_rng()}
                    in_step = False
                stop_if_not_finite(loss)  # before the checkpoint: the last good one is kept
                if config.checkpoint_every and step % config.checkpoint_every == 0 and accelerator.is_main_process:
                    newest_checkpoint = (save_checkpoint(), step)
                reporter.step(record)
                window_tokens, window_start = 0, time.time()
                if step >= total_steps:
                    break
            if pending_rng is not None:  # resumed at the end of an epoch: its evaluation is next
                checkpoint.restore_rng(pending_rng)
                pending_rng = None
            reporter.end_training()
            with as_final_weights():
                last_eval = evaluate(f"epoch {epoch}", with_el=epoch_el)
            history.append({"epoch": epoch, "step": step, **last_eval.means()})
            if _below_thresholds(last_eval.means(), config):
                stopped_because = "memorization below --stop-ma/--stop-el"
                break
            if step >= total_steps:
                stopped_because = "max steps" if config.max_steps and step >= config.max_steps else "epochs"
                break
            reporter.start_training(total_steps)
            model.train()
    except KeyboardInterrupt:
        reporter.end_training()
        raise Interrupted(_interrupted_message(
            step, in_step, checkpoint_dir, newest_checkpoint,
            save_checkpoint if accelerator.is_main_process else None,
        )) from None
    except BaseException:
        reporter.end_training()
        raise

    if initial_weights is not None:
        put_final_weights()  # from here on (evaluation after, saving) the model is the final one
    after = last_eval.to_json() if last_eval is not None and epoch_el else evaluate("after").to_json()
    return finish(after, history, [asdict(s) for s in steps], stopped_because,
                  resumed.state["step"] if resumed is not None else None, earlier_wall_time,
                  accelerator.unwrap_model(model), original=teacher)


def _interrupted_message(step: int, in_step: bool, directory: Path | None,
                         newest: tuple[Path, int] | None, save: Callable[[], Path] | None) -> str:
    """Save the last completed step (when there is a place for it) and say how to go on."""
    if in_step:  # a second Ctrl-C broke off a step: its state is half-updated, keep the old one
        where = f"newest checkpoint: {newest[0]} (step {newest[1]})" if newest else "nothing saved"
        return f"interrupted during step {step + 1}; {where}"
    if newest is not None and newest[1] == step:
        path = newest[0]
    elif directory is not None and step > 0 and save is not None:
        path = save()
    elif step == 0:
        return "interrupted before the first training step; nothing to resume"
    else:
        return f"interrupted at step {step}; no checkpoint was written (pass --out or --checkpoint-dir to keep one)"
    return f"interrupted at step {step}; resume with --resume (checkpoint: {path})"


def _resolve_auto_thresholds(config: UnlearnConfig, tokenizer, reporter: Reporter, evaluate_sequences) -> dict | None:
    """Replace ``auto`` thresholds by the model's MA / EL on unseen reference text."""
    wants = {name for name in ("stop_ma", "stop_el") if getattr(config, name) == "auto"}
    if not wants:
        return None
    from .paths import data_path

    reference = config.reference or data_path("reference/pile.csv")
    if reference is None:
        raise UserError("--stop-ma/--stop-el auto need unseen text: pass --reference FILE "
                        "(or set UNMEMORIZE_DATA to the shared data folder)")
    examples = load_examples(reference, limit=config.reference_limit)
    sequences = [t.input_ids for t in tokenize_examples(examples, tokenizer, config.max_length)]
    result = evaluate_sequences(sequences, "stop_el" in wants).means()
    if "stop_ma" in wants:
        config.stop_ma = result["ma"]
    if "stop_el" in wants:
        config.stop_el = result[f"el_{config.el_n[0]}"]
    reporter.message(
        f"unseen-text level ({len(sequences)} sequences of {Path(str(reference)).name}): "
        + ", ".join(f"{k.upper()} {v:.3f}" for k, v in result.items())
    )
    return {"source": str(reference), "sequences": len(sequences), **result}


def _below_thresholds(means: dict[str, float], config: UnlearnConfig) -> bool:
    if config.stop_ma is None and config.stop_el is None:
        return False
    ok_ma = config.stop_ma is None or means["ma"] <= config.stop_ma
    ok_el = config.stop_el is None or means[f"el_{config.el_n[0]}"] <= config.stop_el
    return ok_ma and ok_el


def _save(out_dir: Path, model, tokenizer, config: UnlearnConfig, metrics: dict,
          extra_files: dict[str, str] | None = None) -> None:
    """Write everything under a temporary name beside ``out_dir``, then rename: a crash never
    leaves a directory that looks finished."""
    tmp = staging_directory(out_dir)
    try:
        if config.lora:
            if config.save_adapter:
                model.save_pretrained(tmp / "adapter")
            model = model.merge_and_unload()
        # GGUF-loaded weights are already dequantized floats; the marker only blocks saving.
        for attr in ("quantization_config",):
            if hasattr(model.config, attr):
                delattr(model.config, attr)
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        (tmp / "unlearn_config.json").write_text(json.dumps(asdict(config), indent=2))
        (tmp / "metrics.json").write_text(json.dumps(metrics, indent=2))
        for name, text in (extra_files or {}).items():  # e.g. dpd.json, read back by load_model
            (tmp / name).write_text(text)
        publish_directory(tmp, out_dir)  # --overwrite keeps one complete copy on disk
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
