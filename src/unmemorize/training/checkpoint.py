"""Training checkpoints: everything needed to continue a killed run where it stopped, and reach
the same weights as a run that was never interrupted.

A checkpoint directory (default ``<out>.checkpoint``) holds one complete step directory:

    step-00000012/
        trainable.safetensors   the parameters being trained (LoRA adapters, or every weight)
        trainer.pt              optimizer and scheduler state and the RNG states (plain tensors
                                and numbers: loaded with ``weights_only=True``, no pickle code)
        state.json              position (step, epoch, batches done in the epoch), loss and
                                memorization history, the run's config, a fingerprint of the data

No forget-set text is stored, only numbers.

Resuming reaches bitwise the same weights as a run that was never interrupted when both parts
run on a CPU with the same number of threads (the thread count changes the order of float
sums). On a GPU, kernels that add with atomics (embedding gradients, for one) make even two
uninterrupted runs differ in the last bits; resuming is then as exact as the hardware allows. A step directory is written under a temporary name
and renamed when complete, so whatever moment a run is killed at, the newest ``step-*``
directory is a complete checkpoint. Older ones are removed only after the new one is in place.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from ..errors import UserError

STEP_PREFIX = "step-"
TMP_PREFIX = ".tmp-"
FORMAT = 1


@dataclass
class Checkpoint:
    path: Path
    trainable: dict[str, torch.Tensor]
    trainer: dict  # optimizer, scheduler, rng
    state: dict  # the JSON part


def step_dirs(directory: Path) -> list[Path]:
    """Complete checkpoints in ``directory``, oldest first."""
    if not directory.is_dir():
        return []
    found = [p for p in directory.iterdir() if p.is_dir() and p.name.startswith(STEP_PREFIX)
             and p.name[len(STEP_PREFIX):].isdigit()]
    return sorted(found, key=lambda p: int(p.name[len(STEP_PREFIX):]))


def latest(directory: Path) -> Path | None:
    found = step_dirs(directory)
    return found[-1] if found else None


def capture_rng() -> dict:
    """Every random state training can draw from: dropout (torch, CUDA), Python, NumPy."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "python": random.getstate(),
        # Plain lists: weights_only loading refuses NumPy arrays.
        "numpy": [kind, keys.tolist(), int(pos), int(has_gauss), float(cached)],
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, np.array(keys, dtype=np.uint32), pos, has_gauss, cached))
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])


def _fsync(path: Path) -> None:
    # Renames are atomic against a killed process already; fsync makes them survive a power cut.
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        if path.is_dir():  # some systems cannot open a directory: its entry is then best effort
            return
        raise
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def save(directory: Path, step: int, trainable: dict[str, torch.Tensor], trainer: dict, state: dict) -> Path:
    """Write a checkpoint of ``step`` atomically; then drop the older ones. Returns its path."""
    directory.mkdir(parents=True, exist_ok=True)
    final = directory / f"{STEP_PREFIX}{step:08d}"
    if final.exists():  # a step's state is written once (interrupted right after its checkpoint)
        return final
    tmp = Path(tempfile.mkdtemp(prefix=f"{TMP_PREFIX}{final.name}-", dir=directory))
    try:
        # safetensors refuses tensors that share memory or are views; contiguous copies are cheap
        # next to a training step.
        save_file({k: v.detach().contiguous().cpu() for k, v in trainable.items()}, tmp / "trainable.safetensors")
        torch.save(trainer, tmp / "trainer.pt")
        (tmp / "state.json").write_text(json.dumps({"format": FORMAT, **state}, indent=1))
        for name in ("trainable.safetensors", "trainer.pt", "state.json"):
            _fsync(tmp / name)
        os.replace(tmp, final)
        _fsync(directory)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    for old in step_dirs(directory):
        if old != final:
            shutil.rmtree(old, ignore_errors=True)
    _remove_temporaries(directory)
    return final


def load(path: Path) -> Checkpoint:
    try:
        state = json.loads((path / "state.json").read_text())
        trainable = load_file(path / "trainable.safetensors")
        trainer = torch.load(path / "trainer.pt", weights_only=True)
    except (OSError, ValueError, RuntimeError) as error:
        raise UserError(f"checkpoint {path} cannot be read ({type(error).__name__}); "
                        "start over without --resume (and with --overwrite)") from None
    if state.get("format") != FORMAT:
        raise UserError(f"checkpoint {path} was written by an incompatible version (format {state.get('format')})")
    return Checkpoint(path, trainable, trainer, state)


def read_state(path: Path) -> dict:
    """Only the JSON part: enough to check a resume before loading any model."""
    try:
        return json.loads((path / "state.json").read_text())
    except (OSError, ValueError) as error:
        raise UserError(f"checkpoint {path} cannot be read ({type(error).__name__})") from None


def remove(directory: Path) -> None:
    """Remove the checkpoints this module wrote, and the directory when nothing else is in it.
    Never a whole tree: --checkpoint-dir may point at a folder that holds other things."""
    for old in step_dirs(directory):
        shutil.rmtree(old, ignore_errors=True)
    _remove_temporaries(directory)
    try:
        directory.rmdir()
    except OSError:
        pass  # not empty (someone else's files) or already gone


def _remove_temporaries(directory: Path) -> None:
    # Left by a process killed while writing; only one run writes a checkpoint directory.
    for leftover in directory.glob(f"{TMP_PREFIX}*"):
        if leftover.is_dir():
            shutil.rmtree(leftover, ignore_errors=True)
