"""One optimizer step: for each micro-batch, the teacher's logits (when the method needs them),
the student's, the method's loss *sum* divided by the step's total normalizer, backward; then
clipping and the update.

Dividing every micro-batch's sum by the normalizer of the whole step (summed over micro-batches
and processes) makes gradient accumulation and data parallelism take exactly the step one big
batch would."""

from __future__ import annotations

import contextlib
from collections.abc import Iterable
from dataclasses import dataclass

import torch

from ..methods import UnlearningMethod
from . import sharding
from .components import Teacher
from .loss import OutputHead, chunked_loss, final_hidden, objective


@dataclass
class StepParts:
    """What a step needs; assembled once by the recipe."""

    model: torch.nn.Module  # the student, as the accelerator prepared it
    teacher: Teacher | None
    method: UnlearningMethod
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    accelerator: object  # accelerate.Accelerator
    parameters: list[torch.nn.Parameter]
    retain_weight: float
    max_grad_norm: float
    # The student's output layer for the chunked loss path (None: the plain path, full logits).
    head: OutputHead | None = None
    # bfloat16 autocast of the forward passes (None: float32); the loss is float32 either way.
    autocast: torch.dtype | None = None
    sharded: bool = False  # FSDP2 (training.sharding): parameters and gradients are shards


def autocast_dtype(precision: str | None, device: torch.device) -> torch.dtype | None:
    """bfloat16 for --precision bf16 (the default on a GPU), else None (float32)."""
    if precision == "bf16" or (precision is None and device.type == "cuda"):
        return torch.bfloat16
    return None


def _step_total(parts: StepParts, values: Iterable[torch.Tensor]) -> torch.Tensor:
    """A normalizer summed over the step's micro-batches and over every process."""
    total = torch.as_tensor(sum(values), device=parts.accelerator.device, dtype=torch.float32)
    return parts.accelerator.reduce(total, "sum")


def _micro_batch_loss(parts: StepParts, batch: dict, retain: bool, scale: torch.Tensor) -> torch.Tensor:
    """``scale`` × the method's loss sum on one micro-batch, by the chunked path when the
    model's head allows it, else from full logits."""
    method = parts.method
    needs_teacher = method.retain_needs_teacher if retain else method.needs_teacher
    device = batch["input_ids"].device.type
    forward = torch.autocast(device, dtype=parts.autocast) if parts.autocast else contextlib.nullcontext()
    if parts.head is not None:
        with forward:
            teacher = parts.teacher.hidden(batch) if needs_teacher else None
            hidden, _ = final_hidden(parts.model, batch)
        head = parts.head.current(parts.model)  # after the forward: a sharded head is gathered then
        return chunked_loss(objective(method, retain), head, hidden, batch, scale, teacher)
    with forward:
        target = parts.teacher.logits(batch) if needs_teacher else None
        logits = parts.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    loss_sum = method.retain_loss_sum if retain else method.loss_sum
    return loss_sum(logits, batch, target) * scale


def _backward_term(parts: StepParts, batch: dict, retain: bool, norm: torch.Tensor,
                   weight: float = 1.0) -> torch.Tensor:
    """Forward one micro-batch, backward its share of the step's loss; the share, detached."""
    # DDP and FSDP average gradients over processes; multiplying by their number turns the
    # average back into the sum that Σ w ℓ / Σ w over the whole step needs.
    processes = parts.accelerator.num_processes
    loss = _micro_batch_loss(parts, batch, retain, weight / norm * processes)
    parts.accelerator.backward(loss)
    return loss.detach() / processes


def optimizer_step(parts: StepParts, micro_batches: list[dict],
                   retain_batches: list[dict]) -> tuple[float | None, float | None]:
    """One update; returns the step's loss (forget term + retain term) and its retain term.
    (None, None) when the step has no target weight at all (nothing to learn from)."""
    method, accelerator = parts.method, parts.accelerator
    total_norm = _step_total(parts, (method.normalizer(b) for b in micro_batches))
    if total_norm.item() == 0:
        return None, None
    step_loss = torch.zeros((), device=accelerator.device)
    retain_loss = torch.zeros((), device=accelerator.device)
    retain_norm = _step_total(parts, (method.retain_normalizer(b) for b in retain_batches)) if retain_batches else None
    for index, batch in enumerate(micro_batches):
        last = index == len(micro_batches) - 1
        if retain_batches:
            # Never synced itself: the forget term's last backward below syncs the whole step.
            with accelerator.no_sync(parts.model):
                retain_loss += _backward_term(parts, retain_batches[index], True, retain_norm, parts.retain_weight)
        with contextlib.nullcontext() if last else accelerator.no_sync(parts.model):
            step_loss += _backward_term(parts, batch, False, total_norm)
    if parts.max_grad_norm > 0 and parts.sharded:
        sharding.clip_grad_norm_(parts.parameters, parts.max_grad_norm)
    elif parts.max_grad_norm > 0:
        accelerator.clip_grad_norm_(parts.parameters, parts.max_grad_norm)
    parts.optimizer.step()
    parts.scheduler.step()
    parts.optimizer.zero_grad(set_to_none=True)
    if not retain_batches:  # no retain term: one reduction less on every step
        return accelerator.reduce(step_loss, "sum").item(), None
    retain_total = accelerator.reduce(retain_loss, "sum").item()
    return accelerator.reduce(step_loss, "sum").item() + retain_total, retain_total
