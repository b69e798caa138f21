"""One training loop for every unlearning method.

The whole optimizer step is in `_optimizer_step`: teacher forward (when the method needs one),
student forward, the method's loss sum divided by the step's total target weight, backward,
clipping, update. Everything else here is set-up (model, data, focus, LoRA or a frozen teacher)
and bookkeeping (memorization after each epoch, early stop, atomic output)."""

from __future__ import annotations

import contextlib
import copy
import json
import math
import os
import resource
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import torch
from torch.utils.data import DataLoader

from . import __version__
from .data import collate, load_examples, tokenize_examples
from .errors import UserError
from .focus import Focus, focus_spans, target_weights
from .methods import get_method
from .metrics.memorization import MemorizationResult, memorization
from .models import load_model


@dataclass
class UnlearnConfig:
    """Every knob of an unlearning run. Serialized as ``unlearn_config.json`` in the output."""

    forget: str
    model: str = "gemma-3-270m"
    out: str | None = None
    overwrite: bool = False
    method: str = "di"
    imagination_strength: float = 3.0
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
            "max_grad_norm": self.max_grad_norm, "strength": self.imagination_strength,
        }
        for name, value in non_negative.items():
            if not value >= 0:
                raise UserError(f"--{name.replace('_', '-')} must be >= 0, not {value}")
        if self.max_steps is not None and self.max_steps < 1:
            raise UserError(f"--max-steps must be at least 1, not {self.max_steps}")
        if not 0 <= self.lora_dropout < 1:
            raise UserError(f"--lora-dropout must be in [0, 1), not {self.lora_dropout}")
        if self.optimizer not in ("adamw", "sgd"):
            raise UserError(f"--optimizer must be 'adamw' or 'sgd', not {self.optimizer!r}")
        if any(n < 1 for n in self.el_n):
            raise UserError(f"--el-n must be at least 1, not {self.el_n}")
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
        Focus.parse(self.focus)


@dataclass
class StepRecord:
    step: int
    epoch: int
    loss: float
    lr: float
    tokens_per_s: float


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


def _prepare_output_dir(config: UnlearnConfig, model_path: str) -> Path | None:
    if config.out is None:
        return None
    out = Path(config.out).expanduser().resolve()
    if Path(model_path).exists() and out == Path(model_path).resolve():
        raise UserError(f"--out {out} is the input model's directory; the input is never modified")
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not config.overwrite:
        raise UserError(f"--out {out} exists and is not empty; pass --overwrite to replace it")
    return out


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
    method = get_method(config.method, imagination_strength=config.imagination_strength)
    accelerator = Accelerator(cpu=config.cpu)
    out_dir = _prepare_output_dir(config, config.model)
    set_seed(config.seed)

    # --- model and data -------------------------------------------------------------------
    loaded = load_model(
        config.model, device=str(accelerator.device), allow_pickle=config.allow_pickle,
        trust_remote_code=config.trust_remote_code, progress=reporter.message,
    )
    model, tokenizer = loaded.model, loaded.tokenizer
    examples = load_examples(
        config.forget, split=config.split, text_column=config.text_column,
        npy_tokenizer=config.npy_tokenizer, limit=config.limit,
    )
    tokenized = tokenize_examples(examples, tokenizer, config.max_length)
    focus = Focus.parse(config.focus)
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
                pad_token_id=pad_id, compute_el=with_el, progress=reporter.evaluation(label),
            )
            if on is None:
                reporter.memorization(label, result.means())
        # Every process needs the numbers for the stop rule; only one computes them.
        return broadcast_object_list([result])[0]

    before = evaluate("before")
    reference_levels = _resolve_auto_thresholds(
        config, tokenizer, reporter, lambda seqs, with_el: evaluate("unseen text", with_el, on=seqs)
    )

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
    elif method.needs_teacher:
        # A frozen copy costs one model's weights (1 GiB for Gemma-3 270M in fp32). Precomputed
        # teacher logits would cost sequences x length x vocabulary floats instead: 6.7 GB for 32
        # sequences of 200 tokens over Gemma's 262k vocabulary, and grow with the forget set.
        teacher = copy.deepcopy(model).eval().requires_grad_(False)
    parameters = [p for p in model.parameters() if p.requires_grad]
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
        dataset, batch_size=config.batch_size, shuffle=True,
        generator=torch.Generator().manual_seed(config.seed),
        collate_fn=lambda rows: collate([r[0] for r in rows], [r[1] for r in rows], pad_id),
    )
    model, optimizer, loader, scheduler = accelerator.prepare(model, optimizer, loader, scheduler)
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

    def _optimizer_step(micro_batches: list[dict]) -> float | None:
        local_norm = sum(method.normalizer(b) for b in micro_batches)
        total_norm = accelerator.reduce(torch.as_tensor(local_norm, device=accelerator.device, dtype=torch.float32), "sum")
        if total_norm.item() == 0:
            return None
        step_loss = torch.zeros((), device=accelerator.device)
        for index, batch in enumerate(micro_batches):
            sync = index == len(micro_batches) - 1
            with contextlib.nullcontext() if sync else accelerator.no_sync(model):
                target = teacher_logits(batch) if method.needs_teacher else None
                logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
                # DDP averages gradients over processes; multiplying by their number turns the
                # average back into the sum that Σ w ℓ / Σ w over the whole step needs.
                loss = method.loss_sum(logits, batch, target) / total_norm * accelerator.num_processes
                accelerator.backward(loss)
                step_loss += loss.detach() / accelerator.num_processes
                del logits, target
        if config.max_grad_norm > 0:
            accelerator.clip_grad_norm_(parameters, config.max_grad_norm)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        return accelerator.reduce(step_loss, "sum").item()

    steps_per_epoch = math.ceil(len(loader) / config.grad_accum)
    total_steps = config.epochs * steps_per_epoch
    if config.max_steps is not None:
        total_steps = min(total_steps, config.max_steps)
    epoch_el = config.el_every_epoch or config.stop_el is not None
    history: list[dict] = []
    steps: list[StepRecord] = []
    step, stopped_because, last_eval = 0, "epochs", None
    reporter.start_training(total_steps)
    model.train()
    for epoch in range(1, config.epochs + 1):
        micro: list[dict] = []
        window_tokens, window_start = 0, time.time()
        for index, batch in enumerate(loader):
            micro.append(batch)
            window_tokens += int(batch["attention_mask"].sum())
            if len(micro) < config.grad_accum and index < len(loader) - 1:
                continue
            loss = _optimizer_step(micro)
            micro = []
            step += 1
            if loss is not None and not math.isfinite(loss):
                raise UserError(f"training diverged at step {step}: the loss is {loss}; lower --lr")
            elapsed = max(time.time() - window_start, 1e-9)
            record = StepRecord(step, epoch, loss if loss is not None else float("nan"),
                                scheduler.get_last_lr()[0],
                                window_tokens * accelerator.num_processes / elapsed)
            steps.append(record)
            reporter.step(record)
            window_tokens, window_start = 0, time.time()
            if step >= total_steps:
                break
        reporter.end_training()
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

    after = last_eval if last_eval is not None and epoch_el else evaluate("after")
    metrics = {
        "model": loaded.name,
        "method": config.method,
        "before": before.to_json(),
        "epochs": history,
        "after": after.to_json(),
        "steps": [asdict(s) for s in steps],
        "stopped_because": stopped_because,
        "reference_levels": reference_levels,
        "thresholds": {"ma": config.stop_ma, "el": config.stop_el},
        "wall_time_s": round(time.time() - started, 2),
        "peak_memory_mb": round(_peak_memory_mb(), 1),
        "sequences_without_focus": [tokenized[i].example.id for i in without_focus],
        "unmemorize_version": __version__,
    }
    if out_dir is not None and accelerator.is_main_process:
        _save(out_dir, accelerator.unwrap_model(model), tokenizer, config, metrics)
    accelerator.wait_for_everyone()
    return metrics


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


def _save(out_dir: Path, model, tokenizer, config: UnlearnConfig, metrics: dict) -> None:
    """Write everything under a temporary name beside ``out_dir``, then rename: a crash never
    leaves a directory that looks finished."""
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
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
        if out_dir.exists():
            shutil.rmtree(out_dir)
        os.replace(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
