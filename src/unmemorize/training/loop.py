"""The training loop: epochs of optimizer steps, a `TrainState` that says where the run is, and
the callbacks that act between steps (divergence guard, checkpointer, events) and after each
epoch (evaluation and the stop rule).

`TrainState` is the whole state of a run apart from the weights and the optimizer: a checkpoint
is this state serialized (see `resume`), and resuming from it reaches the same weights, bit for
bit on a CPU, as a run that was never interrupted."""

from __future__ import annotations

import math
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..errors import UserError
from ..events import Events, StepRecord
from . import checkpoint
from .components import RetainStream
from .step import StepParts, optimizer_step


class TrainingDiverged(UserError):
    """The loss or a weight stopped being finite; the message names the last good checkpoint."""


class Interrupted(KeyboardInterrupt):
    """Ctrl-C during training; the message says where the checkpoint to resume from is."""


@dataclass
class TrainState:
    step: int = 0  # optimizer steps completed
    epoch: int = 1  # the epoch of the last completed step
    batches_done: int = 0  # batches of that epoch consumed
    rng: dict = field(default_factory=checkpoint.capture_rng)  # random state after the last step
    history: list[dict] = field(default_factory=list)  # memorization after each epoch
    steps: list[StepRecord] = field(default_factory=list)
    earlier_wall_time_s: float = 0.0  # spent before a resume
    resumed_from_step: int | None = None
    rng_pending: bool = False  # resumed: ``rng`` is restored before the next step or evaluation
    stopped_because: str | None = None
    last_evaluation: Any = None  # the epoch callback's latest measurement (not checkpointed)


@dataclass
class Loop:
    """Everything the loop runs; assembled by the recipe."""

    parts: StepParts
    loader: torch.utils.data.DataLoader
    retain: RetainStream | None
    epochs: int
    total_steps: int  # the step budget: epochs × steps per epoch, or --max-steps when smaller
    max_steps: int | None
    grad_accum: int
    # After each epoch: evaluate and return why to stop, or None to go on.
    on_epoch_end: Callable[[TrainState], str | None]
    events: Events
    checkpointer: "Checkpointer | None" = None
    guard: "DivergenceGuard | None" = None


class Checkpointer:
    """Writes ``save(state)`` every ``every`` steps (main process only) and remembers the newest."""

    def __init__(self, directory: Path | None, every: int | None, save: Callable[[TrainState], Path] | None,
                 newest: tuple[Path, int] | None = None) -> None:
        self.directory, self.every, self.save, self.newest = directory, every, save, newest

    def after_step(self, state: TrainState) -> None:
        if self.every and self.save is not None and state.step % self.every == 0:
            self.newest = (self.save(state), state.step)

    def describe_newest(self) -> str:
        if self.newest is None:
            return "no checkpoint was written (--checkpoint-every N keeps one)"
        return f"last good checkpoint: {self.newest[0]} (step {self.newest[1]})"


class DivergenceGuard:
    """Stops the run at the first non-finite loss or weight, before its checkpoint is written."""

    def __init__(self, named_trainable: dict[str, torch.nn.Parameter],
                 agree: Callable[[bool], bool] | None = None) -> None:
        # A sharded run checks each process's shards; ``agree`` tells every process whether any
        # found a bad weight, so that all stop together.
        self.named, self.agree = named_trainable, agree

    def check(self, state: TrainState, loss: float | None, checkpointer: Checkpointer | None) -> None:
        if loss is not None and not math.isfinite(loss):
            bad = f"the loss is {loss}"
        else:
            local = {name: p.to_local() if hasattr(p, "to_local") else p for name, p in self.named.items()}
            bad = next((f"weight {name} is not finite" for name, p in local.items()
                        if not torch.isfinite(p).all()), None)
            if self.agree is not None and self.agree(bad is not None) and bad is None:
                bad = "a weight on another process is not finite"
        if bad is None:
            return
        kept = checkpointer.describe_newest() if checkpointer else "no checkpoint was written"
        raise TrainingDiverged(f"training diverged at step {state.step}: {bad}; lower --lr; {kept}")


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


def _restore_pending_rng(state: TrainState) -> None:
    if state.rng_pending:
        checkpoint.restore_rng(state.rng)
        state.rng_pending = False


class _InStep:
    """Whether an optimizer step is under way (a second Ctrl-C then breaks it off)."""

    value = False


def _run_epoch(loop: Loop, state: TrainState, epoch: int, in_step: _InStep) -> None:
    """The optimizer steps of one epoch, from where ``state`` left off."""
    accelerator = loop.parts.accelerator
    skip = state.batches_done if epoch == state.epoch else 0
    micro: list[dict] = []
    retain_micro: list[dict] = []
    window_tokens, window_start = 0, time.time()
    loop.loader.set_epoch(epoch)
    for index, batch in enumerate(loop.loader):
        if index < skip:
            continue  # done before the resume; skipping costs only the collation
        if state.step >= loop.total_steps:
            return
        _restore_pending_rng(state)
        micro.append(batch)
        if loop.retain is not None:  # a function of the micro-batch's place in the run
            retain_micro.append(loop.retain.batch(
                (epoch - 1) * len(loop.loader) + index, accelerator.process_index, accelerator.num_processes))
        window_tokens += int(batch["attention_mask"].sum())
        if len(micro) < loop.grad_accum and index < len(loop.loader) - 1:
            continue
        with _DeferSigint():
            in_step.value = True
            loss, retain_loss = optimizer_step(loop.parts, micro, retain_micro)
            micro, retain_micro = [], []
            elapsed = max(time.time() - window_start, 1e-9)
            record = StepRecord(state.step + 1, epoch, loss if loss is not None else float("nan"),
                                loop.parts.scheduler.get_last_lr()[0],
                                window_tokens * accelerator.num_processes / elapsed, retain_loss)
            state.step, state.epoch, state.batches_done = state.step + 1, epoch, index + 1
            state.steps.append(record)
            state.rng = checkpoint.capture_rng()
            in_step.value = False
        if loop.guard is not None:
            loop.guard.check(state, loss, loop.checkpointer)  # before the checkpoint: the last good one is kept
        if loop.checkpointer is not None:
            loop.checkpointer.after_step(state)
        loop.events.step(record, loop.total_steps)
        window_tokens, window_start = 0, time.time()
        if state.step >= loop.total_steps:
            return


def train(loop: Loop, state: TrainState) -> TrainState:
    """Run epochs from ``state`` until the budget is spent or ``on_epoch_end`` says stop."""
    in_step = _InStep()
    loop.events.training_started(loop.total_steps)
    loop.parts.model.train()
    try:
        for epoch in range(state.epoch, loop.epochs + 1):
            _run_epoch(loop, state, epoch, in_step)
            _restore_pending_rng(state)  # resumed at the end of an epoch: its evaluation is next
            loop.events.training_paused()
            state.epoch, state.batches_done = epoch, len(loop.loader)
            reason = loop.on_epoch_end(state)
            if reason is not None:
                state.stopped_because = reason
                break
            if state.step >= loop.total_steps:
                budget = loop.max_steps is not None and state.step >= loop.max_steps
                state.stopped_because = "max steps" if budget else "epochs"
                break
            loop.events.training_started(loop.total_steps)
            loop.parts.model.train()
    except KeyboardInterrupt:
        loop.events.training_paused()
        raise Interrupted(_interrupted_message(state, in_step.value, loop.checkpointer)) from None
    except BaseException:
        loop.events.training_paused()
        raise
    finally:
        loop.events.training_finished()
    if state.stopped_because is None:
        state.stopped_because = "epochs"
    return state


def _interrupted_message(state: TrainState, in_step: bool, checkpointer: Checkpointer | None) -> str:
    """Save the last completed step (when there is a place for it) and say how to go on."""
    newest = checkpointer.newest if checkpointer else None
    if in_step:  # a second Ctrl-C broke off a step: its state is half-updated, keep the old one
        where = f"newest checkpoint: {newest[0]} (step {newest[1]})" if newest else "nothing saved"
        return f"interrupted during step {state.step + 1}; {where}"
    if newest is not None and newest[1] == state.step:
        path = newest[0]
    elif checkpointer is not None and checkpointer.directory is not None and state.step > 0 \
            and checkpointer.save is not None:
        path = checkpointer.save(state)
    elif state.step == 0:
        return "interrupted before the first training step; nothing to resume"
    else:
        return f"interrupted at step {state.step}; no checkpoint was written (pass --out or --checkpoint-dir to keep one)"
    return f"interrupted at step {state.step}; resume with --resume (checkpoint: {path})"
