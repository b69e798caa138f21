"""`TrainState` to a checkpoint and back, and the checks that make a resumed run the same run.

A checkpoint's ``state.json`` is the TrainState (position, loss and memorization history, wall
time) plus the run's identity (the options as given and as resolved, the data fingerprint, the
memorization before training); ``trainer.pt`` holds the optimizer, the scheduler and the random
state; ``trainable.safetensors`` the weights being trained (see `checkpoint`)."""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import torch

from ..config import RESUME_MAY_CHANGE, UnlearnConfig, as_json, flag_name
from ..errors import UserError
from ..events import StepRecord
from . import checkpoint
from .loop import TrainState


@dataclass
class RunIdentity:
    """What a checkpoint must agree with to be resumed, and what the run measured before it
    started (a resumed run does not measure it again)."""

    requested: dict  # the options as the user gave them (JSON values)
    resolved: UnlearnConfig  # after 'auto' thresholds, method defaults and LoRA targets
    fingerprint: str  # of the training data (see forget_set.data_fingerprint)
    before: dict  # memorization before training
    reference_levels: dict | None  # the unseen-text level behind 'auto' thresholds


def save(directory: Path, state: TrainState, identity: RunIdentity, wall_time_s: float,
         trainable: dict[str, torch.Tensor], optimizer_state: dict, scheduler) -> Path:
    """A checkpoint of ``state`` (the last completed step) in ``directory``. ``optimizer_state``
    is ``optimizer.state_dict()``, or a sharded run's whole state keyed by parameter name."""
    data = {
        "step": state.step, "epoch": state.epoch, "batches_done": state.batches_done,
        # An epoch's evaluation is redone on resume when the checkpoint is inside that epoch.
        "history": [h for h in state.history if h["epoch"] < state.epoch],
        "steps": [asdict(s) for s in state.steps], "before": identity.before,
        "reference_levels": identity.reference_levels, "config": identity.requested,
        "resolved_config": as_json(identity.resolved), "data_fingerprint": identity.fingerprint,
        "wall_time_s": wall_time_s, "processes": launched_processes(),
    }
    trainer = {"optimizer": optimizer_state, "scheduler": scheduler.state_dict(), "rng": state.rng}
    return checkpoint.save(directory, state.step, trainable, trainer, data)


def train_state(saved: checkpoint.Checkpoint) -> TrainState:
    """The TrainState a checkpoint holds; its random state is restored before the next step."""
    data = saved.state
    return TrainState(
        step=data["step"], epoch=data["epoch"], batches_done=data["batches_done"],
        rng=saved.trainer["rng"], history=data["history"], steps=[StepRecord(**s) for s in data["steps"]],
        earlier_wall_time_s=data["wall_time_s"], resumed_from_step=data["step"], rng_pending=True,
    )


def identity(saved: checkpoint.Checkpoint, requested: dict, resolved: UnlearnConfig) -> RunIdentity:
    data = saved.state
    return RunIdentity(requested, resolved, data["data_fingerprint"], data["before"], data["reference_levels"])


def _option(name: str) -> str:
    item = next((f for f in fields(UnlearnConfig) if f.name == name), None)
    return flag_name(item) if item is not None else "--" + name.replace("_", "-")


def launched_processes() -> int:
    """The processes of this launch (torchrun and accelerate launch set WORLD_SIZE)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def check_same_run(saved: dict, requested: dict, path: Path, saved_processes: int = 1) -> None:
    """Every option that shapes training must be as it was; the first that is not is named.
    The batch may be split over another number of processes: a step takes the same sequences
    when --batch-size × processes is the same (each process's loader takes whole batches in
    turn, and the retain stream is a function of the step alone)."""
    requested = json.loads(json.dumps(requested))  # the same types the checkpoint holds
    # An option newer than the checkpoint had its default there.
    known = as_json(UnlearnConfig())
    processes = launched_processes()
    for name, value in requested.items():
        if name == "batch_size" and saved.get(name, known[name]) * saved_processes == value * processes:
            continue
        if name == "batch_size" and processes != saved_processes:
            raise UserError(
                f"--resume: --batch-size × processes is {value} × {processes} here but {saved.get(name)} × "
                f"{saved_processes} in the checkpoint {path}; keep the product (each step's sequences)")
        if name in RESUME_MAY_CHANGE or saved.get(name, known.get(name)) == value:
            continue
        raise UserError(
            f"--resume: {_option(name)} is {value!r} here but {saved.get(name)!r} in the checkpoint {path}; "
            "resume with the same value (or start over with --overwrite)"
        )


def find_checkpoint(config: UnlearnConfig, directory: Path | None, requested: dict) -> Path | None:
    """The checkpoint to resume from (None for a fresh run); refuses to silently discard one."""
    found = checkpoint.latest(directory) if directory is not None else None
    if config.resume:
        if found is None:
            raise UserError(f"--resume: no checkpoint in {directory}; run without --resume to start")
        state = checkpoint.read_state(found)
        check_same_run(state.get("config", {}), requested, found, state.get("processes", 1))
        return found
    if found is not None and not config.overwrite:
        raise UserError(
            f"{directory} holds a checkpoint of an unfinished run ({found.name}); pass --resume to "
            "continue it, or --overwrite to discard it and start over"
        )
    return None


def load_checked(path: Path, fingerprint: str) -> checkpoint.Checkpoint:
    """The checkpoint at ``path``, refused when it was trained on other data."""
    saved = checkpoint.load(path)
    if saved.state["data_fingerprint"] != fingerprint:
        raise UserError(
            f"--resume: the forget set, tokenizer or focus gives other training data than the run "
            f"in {path}; resume with the same --forget, --retain, --model and focus options"
        )
    return saved
