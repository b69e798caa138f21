"""Memorization measured by several processes (``accelerate launch`` / ``torchrun``), merged to
the single-process result.

A single process measures its samples in batches of similar length (`memorization.
teacher_forced_pass` sorts them, stably, by length). Here those same batches are dealt to the
processes in turn: every batch is formed and computed exactly as one process would, so each
sample's teacher-forced predictions — MA, and the first mismatches EL starts from — are
bitwise those of a single process. Greedy EL continues each prefix from its own keys and
values, batched with whichever prefixes the process holds; its argmax is exact up to the
float32 rounding of a row computed in another batch (a near-tie of the two best tokens)."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from .memorization import MemorizationResult, memorization


def processes() -> tuple[int, int]:
    """(this process's rank, the number of processes); (0, 1) outside a process group."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def join_launch():
    """Accelerate's state of this launch (one process without one): it joins the process group
    ``accelerate launch`` / ``torchrun`` set up (gloo on CPUs) and names this process's device."""
    from accelerate import PartialState

    return PartialState()


def gather_objects(value) -> list:
    """``value`` of every process, in rank order (every process must call it)."""
    rank, count = processes()
    if count == 1:
        return [value]
    gathered: list = [None] * count
    torch.distributed.all_gather_object(gathered, value)
    return gathered


def dealt_batches(lengths: Sequence[int], batch_size: int, count: int) -> list[list[int]]:
    """The sample indices of each of ``count`` processes: one process's batches (samples sorted
    stably by length, ``batch_size`` at a time) dealt in turn, each in that sorted order."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    shares: list[list[int]] = [[] for _ in range(count)]
    for number, start in enumerate(range(0, len(order), batch_size)):
        shares[number % count].extend(order[start : start + batch_size])
    return shares


def merge(parts: Sequence[tuple[list[int], MemorizationResult]], total: int) -> MemorizationResult:
    """One result in input order from each process's (sample indices, result on them)."""
    ma: list[float] = [0.0] * total
    el: dict[int, list[float]] = {}
    for indices, part in parts:
        for position, index in enumerate(indices):
            ma[index] = part.ma[position]
            for n, values in part.el.items():
                el.setdefault(n, [0.0] * total)[index] = values[position]
    return MemorizationResult(ma=ma, el=el)


def sharded_memorization(model: torch.nn.Module, sequences: Sequence[Sequence[int]], *, batch_size: int = 8,
                         **options) -> MemorizationResult:
    """`memorization.memorization` of ``sequences`` with their batches shared among the
    processes (every process calls it; each gets the whole result)."""
    rank, count = processes()
    if count == 1:
        return memorization(model, sequences, batch_size=batch_size, **options)
    mine = dealt_batches([len(s) for s in sequences], batch_size, count)[rank]
    part = memorization(model, [sequences[i] for i in mine], batch_size=batch_size, **options) if mine \
        else MemorizationResult(ma=[], el={n: [] for n in options.get("ns", (10,))} if options.get("compute_el", True) else {})
    return merge(gather_objects((mine, part)), len(sequences))
