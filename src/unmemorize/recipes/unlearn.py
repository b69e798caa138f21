"""`unmemorize unlearn`: one unlearning run, from a config to an output directory.

The recipe orchestrates; the work is in the components it calls, in this order:

1. the method and its hyper-parameters (`resolve_method`), the output paths, a checkpoint to
   resume from (`training.resume`);
2. the forget set (`training.forget_set`: tokens, focus weights, retain set, fingerprint), then
   the model;
3. memorization before training and the 'auto' stop thresholds (or both from the checkpoint);
4. the student (LoRA adapters, or every weight) and its teacher (the adapters switched off, or a
   frozen copy), optimizer, schedule, batches (`training.components`);
5. the loop (`training.loop`), whose epoch callback measures memorization and applies the stop
   rule, while the checkpointer and the divergence guard act after each step;
6. the final weights, memorization after, and the output directory (`training.outputs`) with
   ``metrics.json``, the continuations the report shows, and the model card.

A run can be killed at any moment: with ``checkpoint_every`` it leaves a checkpoint that
``resume`` continues to the same final weights, bit for bit on a CPU."""

from __future__ import annotations

import dataclasses
import json
import math
import resource
import time
from collections.abc import Callable
from pathlib import Path

import torch

from .. import __version__
from ..config import DEFAULT_REFERENCE, METHOD_PARAMETERS, UnlearnConfig, as_json, flag_name
from ..data import load_examples, tokenize_examples
from ..errors import UserError
from ..events import Events
from ..methods import UnlearningMethod, get_method, method_parameters
from ..metrics.memorization import MemorizationResult, memorization
from ..models import LoadedModel, environment, load_model, provenance
from ..paths import data_path
from ..training import checkpoint, forget_set, resume, sharding
from ..training.components import (
    FinalWeights, RetainStream, Teacher, add_lora, attention_projections, forget_loader, frozen_copy,
    lr_factor, make_optimizer, needs_teacher,
)
from ..training.loss import OutputHead, head_matches, output_head, over_vocabulary, release_buffers
from ..training.loop import Checkpointer, DivergenceGuard, Loop, TrainState, train
from ..training.outputs import output_paths, save_model_directory
from ..training.step import StepParts, autocast_dtype

SAMPLES_FILE = "samples.json"
MODEL_CARD = "README.md"


def _option(name: str) -> str:
    return flag_name(next(f for f in dataclasses.fields(UnlearnConfig) if f.name == name))


def resolve_method(config: UnlearnConfig) -> tuple[UnlearningMethod, UnlearnConfig]:
    """The configured method, given only the hyper-parameters it declares, and the config with
    the values it uses (its defaults included) so ``unlearn_config.json`` records them. A
    hyper-parameter set for a method that does not take it is an error rather than silently
    ignored (``--strength`` with ``ga`` does nothing)."""
    declared = method_parameters(config.method)
    for name in METHOD_PARAMETERS:
        if getattr(config, name) is not None and name not in declared:
            takes = ", ".join(_option(n) for n in declared) or "no hyper-parameters"
            raise UserError(f"{_option(name)} does not apply to --method {config.method} (it takes {takes})")
    method = get_method(config.method, **{n: getattr(config, n) for n in declared if getattr(config, n) is not None})
    if config.retain is None and method.requires_retain:
        raise UserError(f"--method {config.method} needs --retain FILE: the text whose likelihood it keeps")
    if config.retain is not None and not method.trains:
        raise UserError(f"--retain does not apply to --method {config.method}: it trains nothing")
    if config.softmax_vocabulary is not None and config.method != "finetune":
        raise UserError("--softmax-vocabulary applies to --method finetune only (it approximates the NLL)")
    # An inference-time method trains nothing, so there is no adapter to add or merge.
    lora = config.lora and method.trains
    resolved = dataclasses.replace(config, **{n: getattr(method, n) for n in declared}, lora=lora,
                                   lr=method.learning_rate(config.lr, lora))
    return method, resolved


def peak_memory_mb() -> float:
    # ru_maxrss is in KiB on Linux; CUDA peak added when a GPU was used.
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    if torch.cuda.is_available():
        peak += torch.cuda.max_memory_allocated() / 2**20
    return peak


class ForgetMemorization:
    """MA/EL of the forget set (or other sequences) on the main process, shared with all."""

    def __init__(self, accelerator, network: Callable[[], torch.nn.Module], config: UnlearnConfig,
                 sequences: list[list[int]], pad_id: int, events: Events) -> None:
        self.accelerator, self.network, self.config = accelerator, network, config
        self.sequences, self.pad_id, self.events = sequences, pad_id, events

    def __call__(self, label: str, with_el: bool = True, on: list[list[int]] | None = None) -> MemorizationResult:
        network = self.network()
        # A sharded network is whole on every process for the measurement; the main process runs it.
        with sharding.gathered(network):
            return self._measure(network, label, with_el, on)

    def _measure(self, network, label: str, with_el: bool, on: list[list[int]] | None) -> MemorizationResult:
        from accelerate.utils import broadcast_object_list

        result = None
        if self.accelerator.is_main_process and network is not None:
            config = self.config
            result = memorization(
                network, on or self.sequences, ns=config.el_n, el_stride=config.el_stride,
                batch_size=config.eval_batch_size, el_batch_size=config.el_batch_size,
                pad_token_id=self.pad_id, compute_el=with_el and config.measure_el,
                progress=self.events.progress(f"memorization ({label})"),
            )
            if on is None:
                self.events.memorization(label, result.means())
        # Every process needs the numbers for the stop rule; only one computes them.
        return broadcast_object_list([result])[0]


def resolve_auto_thresholds(config: UnlearnConfig, tokenizer, measure: ForgetMemorization,
                            events: Events) -> tuple[UnlearnConfig, dict | None]:
    """``auto`` thresholds replaced by the model's MA / EL on unseen reference text."""
    wants = {name for name in ("stop_ma", "stop_el") if getattr(config, name) == "auto"}
    if not wants:
        return config, None
    reference, sequences = reference_sequences(config, tokenizer)
    result = measure("unseen text", "stop_el" in wants, on=sequences).means()
    levels = {"stop_ma": result["ma"]} if "stop_ma" in wants else {}
    if "stop_el" in wants:
        levels["stop_el"] = result[f"el_{config.el_n[0]}"]
    events.message(f"unseen-text level ({len(sequences)} sequences of {Path(str(reference)).name}): "
                   + ", ".join(f"{k.upper()} {v:.3f}" for k, v in result.items()))
    return dataclasses.replace(config, **levels), {"source": str(reference), "sequences": len(sequences), **result}


def reference_sequences(config: UnlearnConfig, tokenizer) -> tuple[str, list[list[int]]]:
    """The unseen reference text (--reference, default under the data location), tokenized."""
    reference = config.reference or data_path(DEFAULT_REFERENCE)
    if reference is None:
        raise UserError("--stop-ma/--stop-el auto and --unseen-every-epoch need unseen text: pass "
                        "--reference FILE (or set UNMEMORIZE_DATA to the shared data folder)")
    examples = load_examples(reference, limit=config.reference_limit)
    return str(reference), [t.input_ids for t in tokenize_examples(examples, tokenizer, config.max_length)]


def thresholds_reached(means: dict[str, float], config: UnlearnConfig, lowers: bool = True) -> bool:
    """Jang et al.'s stop rule: MA and EL both at or below their thresholds (at or above them
    for a method that raises memorization). False when no threshold is set."""
    if config.stop_ma is None and config.stop_el is None:
        return False

    def reached(value: float, threshold: float | None) -> bool:
        return threshold is None or (value <= threshold if lowers else value >= threshold)

    return reached(means["ma"], config.stop_ma) and reached(means.get(f"el_{config.el_n[0]}", math.nan), config.stop_el)


@dataclasses.dataclass
class _Run:
    """What the stages of one run share."""

    config: UnlearnConfig
    method: UnlearningMethod
    loaded: LoadedModel
    data: forget_set.ForgetSet
    accelerator: object
    out_dir: Path | None
    checkpoint_dir: Path | None
    measure: ForgetMemorization
    events: Events
    started: float
    identity: resume.RunIdentity | None = None
    unseen: list[list[int]] | None = None  # --unseen-every-epoch: the reference sequences


def _prepare(config: UnlearnConfig, events: Events) -> tuple[_Run, Path | None, dict]:
    from accelerate import Accelerator
    from accelerate.utils import set_seed

    started = time.time()
    method, config = resolve_method(config)
    out_dir, checkpoint_dir = output_paths(config)
    requested = as_json(config)  # as given: before 'auto' thresholds and LoRA targets are resolved
    resume_from = resume.find_checkpoint(config, checkpoint_dir, requested)
    engine = sharding.check_launch()
    accelerator = Accelerator(cpu=config.cpu)
    if engine == "fsdp" and not method.trains:
        raise UserError(f"--method {config.method} trains nothing: launch it without FSDP")
    if engine == "fsdp" and method.keeps_initial_weights:
        raise UserError(f"--method {config.method} edits whole weights after training: launch it with DDP, not FSDP")
    set_seed(config.seed)
    examples, retain_examples = forget_set.read_forget_examples(config)  # a bad file fails before the model loads
    loaded = load_model(config.model, device=str(accelerator.device), allow_pickle=config.allow_pickle,
                        trust_remote_code=config.trust_remote_code, progress=events.message)
    data = forget_set.prepare(config, examples, retain_examples, loaded.tokenizer, events)
    run = _Run(config, method, loaded, data, accelerator, out_dir, checkpoint_dir, None, events, started)
    run.measure = ForgetMemorization(accelerator, lambda: accelerator.unwrap_model(run.loaded.model), config,
                                     data.sequences, loaded.tokenizer.pad_token_id, events)
    if config.unseen_every_epoch:
        run.unseen = reference_sequences(config, loaded.tokenizer)[1]
    return run, resume_from, requested


def _start(run: _Run, resume_from: Path | None, requested: dict) -> tuple[TrainState, checkpoint.Checkpoint | None]:
    """Memorization before and the resolved thresholds, or both from the checkpoint."""
    if resume_from is None:
        before = run.measure("before").to_json()
        if run.unseen is not None:  # epoch 0 of the trade-off curve
            before["mean"]["unseen_ma"] = run.measure("unseen text", False, on=run.unseen).means()["ma"]
        config, levels = resolve_auto_thresholds(run.config, run.loaded.tokenizer, run.measure, run.events)
        run.config = run.measure.config = config
        run.identity = resume.RunIdentity(requested, config, run.data.fingerprint, before, levels)
        if run.checkpoint_dir is not None and run.accelerator.is_main_process:
            checkpoint.remove(run.checkpoint_dir)  # an unfinished run's, discarded with --overwrite
        return TrainState(), None
    saved = resume.load_checked(resume_from, run.data.fingerprint)
    resolved = saved.state["resolved_config"]
    run.config = run.measure.config = dataclasses.replace(
        run.config, stop_ma=resolved["stop_ma"], stop_el=resolved["stop_el"],
        lora_targets=tuple(resolved["lora_targets"]) if resolved["lora_targets"] else None)
    run.identity = resume.identity(saved, requested, run.config)
    run.events.message(f"resuming from step {saved.state['step']} ({resume_from})")
    return resume.train_state(saved), saved


def _student_and_teacher(run: _Run) -> Teacher | None:
    """LoRA adapters on the model (teacher: adapters off), or every weight trained (teacher: a
    frozen copy when the method needs one). Replaces ``run.loaded.model`` by the student."""
    model, config = run.loaded.model, run.config
    if config.lora:
        if config.lora_targets is None:
            run.config = run.measure.config = config = dataclasses.replace(
                config, lora_targets=tuple(attention_projections(model)))
            run.identity.resolved = config
        run.loaded.model = add_lora(model, config)
        return Teacher(lambda: run.accelerator.unwrap_model(run.loaded.model), None) \
            if needs_teacher(run.method, run.data.retain is not None) else None
    if needs_teacher(run.method, run.data.retain is not None):
        return Teacher(lambda: None, frozen_copy(model).to(run.accelerator.device))
    return None


def _loop(run: _Run, state: TrainState, saved: checkpoint.Checkpoint | None,
          epoch_check: EpochCheck | None) -> tuple[Loop, FinalWeights, Teacher | None]:
    config, accelerator, data = run.config, run.accelerator, run.data
    teacher = _student_and_teacher(run)
    config = run.config
    model = run.loaded.model
    named = {name: p for name, p in model.named_parameters() if p.requires_grad}
    final = FinalWeights(run.method, named)  # task arithmetic needs the weights before training
    if saved is not None:
        if set(saved.trainable) != set(named):
            raise UserError(f"--resume: the checkpoint {saved.path} holds other parameters than this model trains")
        final.load(saved.trainable)  # whole tensors, loaded before any sharding
    sharded = sharding.active(accelerator)
    if sharded:
        named, final = _shard(run, teacher)
    run.events.message(f"trainable parameters: {sum(p.numel() for p in named.values()):,} ("
                       + (f"LoRA r={config.lora_r} on {', '.join(config.lora_targets)}" if config.lora else "full fine-tuning")
                       + (f"; FSDP over {accelerator.num_processes} processes" if sharded else "") + ")")
    pad_id = run.loaded.tokenizer.pad_token_id
    loader = forget_loader([data.tokenized[i] for i in data.trainable], [data.weights[i] for i in data.trainable],
                           config.batch_size, config.seed, pad_id,
                           [data.lowered[i] for i in data.trainable] if data.lowered is not None else None)
    steps_per_epoch = math.ceil(len(loader) / config.grad_accum)
    total_steps = min(config.epochs * steps_per_epoch, config.max_steps or math.inf)
    optimizer = make_optimizer(list(named.values()), config)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor(config, total_steps))
    if sharded:  # the model is sharded already: Accelerate only splits the batches
        loader = accelerator.prepare(loader)
    else:
        model, optimizer, loader, scheduler = accelerator.prepare(model, optimizer, loader, scheduler)
    run.loaded.model = model
    if saved is not None:
        sharding.load_optimizer_state(model, optimizer, saved.trainer["optimizer"])
        scheduler.load_state_dict(saved.trainer["scheduler"])
    parts = StepParts(model, teacher, run.method, optimizer, scheduler, accelerator, list(named.values()),
                      config.retain_weight, config.max_grad_norm, _chunked_head(run, model),
                      autocast_dtype(config.precision, accelerator.device), sharded)
    retain = RetainStream(data.retain, config.batch_size, config.seed, pad_id) if data.retain else None

    def save(state: TrainState) -> Path | None:
        # A sharded run gathers whole tensors on every process; the main process writes them.
        trainable = sharding.full_state(named) if sharded else dict(named)
        optimizer_state = sharding.full_optimizer_state(model, optimizer) if sharded else optimizer.state_dict()
        if not accelerator.is_main_process:
            return None
        return resume.save(run.checkpoint_dir, state, run.identity, state.earlier_wall_time_s + time.time() - run.started,
                           trainable, optimizer_state, scheduler)

    newest = (saved.path, saved.state["step"]) if saved is not None else None
    writes = run.checkpoint_dir is not None and (accelerator.is_main_process or sharded)
    checkpointer = Checkpointer(run.checkpoint_dir, config.checkpoint_every, save if writes else None, newest)
    agree = (lambda flag: sharding.any_process(flag, accelerator.device)) if sharded else None
    loop = Loop(parts, loader, retain, config.epochs, int(total_steps), config.max_steps, config.grad_accum,
                _epoch_end(run, final, epoch_check), run.events, checkpointer, DivergenceGuard(named, agree))
    return loop, final, teacher


def _shard(run: _Run, teacher: Teacher | None) -> tuple[dict[str, torch.nn.Parameter], FinalWeights]:
    """Shard the student (and a frozen teacher, the same way) over every process; the trainable
    parameters are the shards from here on."""
    device = run.accelerator.device
    model = sharding.shard(run.loaded.model, device)
    if teacher is not None and teacher.frozen is not None:
        sharding.shard(teacher.frozen, device)
    named = {name: p for name, p in model.named_parameters() if p.requires_grad}
    return named, FinalWeights(run.method, named)


def _chunked_head(run: _Run, model: torch.nn.Module) -> OutputHead | None:
    """The student's output layer for the chunked loss path, once checked on a few tokens to give
    the model's own logits; None (full logits) otherwise."""
    sample = torch.tensor([run.data.sequences[run.data.trainable[0]][:16]], device=run.accelerator.device)
    with sharding.gathered(model):
        head = output_head(model)
        matches = head is not None and head_matches(model, head, sample)
    if not matches:
        if run.config.softmax_vocabulary:
            raise UserError("--softmax-vocabulary needs a model whose output layer is a plain linear head")
        run.events.message("the model's output layer is not a plain linear head: the loss uses full logits")
        return None
    if run.config.softmax_vocabulary:
        texts = [t.input_ids for t in run.data.tokenized + (run.data.retain or [])]
        head = over_vocabulary(head, texts, run.config.softmax_vocabulary)
        run.events.message(f"softmax over {len(head.rows):,} of {head.weight.shape[0]:,} vocabulary rows")
    return head


EpochCheck = Callable[[torch.nn.Module], tuple[dict[str, float], str | None]]


def _epoch_end(run: _Run, final: FinalWeights, epoch_check: EpochCheck | None) -> Callable[[TrainState], str | None]:
    """Memorization after each epoch (on the final weights) and the stop rule; or the caller's
    own measurement and rule."""
    config = run.config
    with_el = config.el_every_epoch or config.stop_el is not None

    def on_epoch_end(state: TrainState) -> str | None:
        with final.in_place():
            if epoch_check is not None:
                means, reason = epoch_check(run.accelerator.unwrap_model(run.loaded.model))
            else:
                result = run.measure(f"epoch {state.epoch}", with_el=with_el)
                state.last_evaluation, means = result, result.means()
                if run.unseen is not None:
                    means["unseen_ma"] = run.measure("unseen text", False, on=run.unseen).means()["ma"]
                reason = None
                if thresholds_reached(means, run.config, run.method.lowers_memorization):
                    reason = "memorization below --stop-ma/--stop-el" if run.method.lowers_memorization \
                        else "memorization reached --stop-ma/--stop-el"
        state.history.append({"epoch": state.epoch, "step": state.step, **means})
        return reason

    return on_epoch_end


def unlearn(config: UnlearnConfig, events: Events | None = None, epoch_check: EpochCheck | None = None) -> dict:
    """Run unlearning as configured; returns the metrics that are also written to ``--out``.
    ``epoch_check(network) -> (means, reason to stop or None)`` replaces the memorization
    measurement and stop rule after each epoch (the demo's leak measures how much of the records'
    PII the model predicts instead, and stops once it is all memorized)."""
    events = events or Events()
    if config.forget is None:
        raise UserError("no --forget file given: pass the texts to forget")
    run, resume_from, requested = _prepare(config, events)
    state, saved = _start(run, resume_from, requested)
    if not run.method.trains:
        # An inference-time method (dpd): the model is wrapped, measured and saved as it is.
        run.method.wrap(run.loaded.model)
        state.stopped_because = "inference-time method (no training)"
        return _finish(run, run.measure("after").to_json(), state, run.loaded.model, None)
    loop, final, teacher = _loop(run, state, saved, epoch_check)
    state = train(loop, state)
    release_buffers()
    final.put_in_place()  # from here on (evaluation after, saving) the model is the final one
    with_el = run.config.el_every_epoch or run.config.stop_el is not None
    after = state.last_evaluation.to_json() if state.last_evaluation is not None and with_el \
        else run.measure("after").to_json()
    network = run.accelerator.unwrap_model(run.loaded.model)
    original = teacher.frozen if teacher is not None else None
    if loop.parts.sharded:
        # Whole weights for the output, on the main process (None elsewhere). The sharded teacher
        # is not gathered: the report then shows continuations after unlearning only.
        network, original = sharding.plain_copy(network, lambda: _rebuilt(run, network),
                                                run.accelerator.is_main_process), None
    return _finish(run, after, state, network, original)


def _rebuilt(run: _Run, network: torch.nn.Module) -> torch.nn.Module:
    """A fresh float32 model of ``network``'s architecture (with its LoRA adapters)."""
    base = network.get_base_model() if hasattr(network, "get_base_model") else network
    fresh = sharding.fresh_architecture(base.config)
    return add_lora(fresh, run.config) if run.config.lora else fresh


def _finish(run: _Run, after: dict, state: TrainState, network, original) -> dict:
    """The run's metrics, written with the model (``network``) to --out."""
    config, data = run.config, run.data
    metrics = {
        "model": run.loaded.name,
        "provenance": provenance(run.loaded.name),
        # When, on what and with which libraries; the base weights' SHA-256.
        "environment": environment({"base model": run.loaded.name}, str(run.accelerator.device)),
        "method": config.method,
        "before": run.identity.before,
        "epochs": state.history,
        "after": after,
        "steps": [dataclasses.asdict(s) for s in state.steps],
        "stopped_because": state.stopped_because,
        "resumed_from_step": state.resumed_from_step,
        "reference_levels": run.identity.reference_levels,
        "thresholds": {"ma": config.stop_ma, "el": config.stop_el},
        "wall_time_s": round(state.earlier_wall_time_s + time.time() - run.started, 2),
        "peak_memory_mb": round(peak_memory_mb(), 1),
        "sequences_without_focus": [data.tokenized[i].example.id for i in data.without_focus],
        "unmemorize_version": __version__,
        "data": forget_set.summary(config, data),
    }
    if run.out_dir is not None and run.accelerator.is_main_process:
        files = dict(run.method.saved_files())
        if config.report_samples and run.method.trains:
            from ..metrics.continuations import forget_continuations

            # Before = the original: the same net with its LoRA adapters off, or the frozen copy.
            files[SAMPLES_FILE] = json.dumps(forget_continuations(
                network, run.loaded.tokenizer, data.tokenized[: config.report_samples], original=original,
                adapters_off=config.lora, show_text=config.show_text))
        try:
            from ..reporting.report import model_card

            files[MODEL_CARD] = model_card(metrics, as_json(config), run.out_dir)
        except Exception as error:  # noqa: BLE001 - the card must never cost the run
            run.events.message(f"warning: no model card ({type(error).__name__}: {error})")
        save_model_directory(run.out_dir, network, run.loaded.tokenizer, config, metrics, files)
        if run.checkpoint_dir is not None:
            checkpoint.remove(run.checkpoint_dir)  # the finished output supersedes it
    run.accelerator.wait_for_everyone()
    return metrics
