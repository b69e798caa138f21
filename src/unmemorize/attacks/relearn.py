"""Relearning: fine-tune the unlearned model again for a few steps (the `finetune` method, the
same optimizer step as every training run) and measure the forget set after each chosen step.
Hu et al. (2024) and Deeb & Roger (2024) found a few steps on a small, partly related set
restore most of what was unlearned.

The model passed in is never changed: each curve trains a copy."""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass

import torch

from ..config import UnlearnConfig
from ..data import TokenizedExample
from ..events import Events
from ..methods import get_method
from ..training.components import add_lora, attention_projections, forget_loader, lr_factor, make_optimizer
from ..training.loss import output_head, over_vocabulary
from ..training.step import StepParts, optimizer_step


@dataclass(frozen=True)
class RelearnSetting:
    """One relearning curve: LoRA (on the attention projections, as the unlearning runs) or full
    fine-tuning, its learning rate, micro-batch size, the steps after which the forget set is
    measured, and --softmax-vocabulary (None: the exact NLL)."""

    lora: bool
    lr: float
    batch_size: int
    steps: tuple[int, ...]
    vocabulary: int | None = None
    seed: int = 42

    def unlearn_config(self, model: torch.nn.Module) -> UnlearnConfig:
        """The `unlearn --method finetune` run this curve is the first steps of."""
        return UnlearnConfig(
            method="finetune", lora=self.lora, lr=self.lr, batch_size=self.batch_size,
            max_steps=max(self.steps), epochs=max(self.steps), seed=self.seed,
            softmax_vocabulary=self.vocabulary, warmup_steps=0,
            lora_targets=tuple(attention_projections(model)) if self.lora else None)


def _parts(student: torch.nn.Module, config: UnlearnConfig, texts: list[list[int]]) -> StepParts:
    from accelerate import Accelerator

    named = [p for p in student.parameters() if p.requires_grad]
    optimizer = make_optimizer(named, config)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor(config, config.max_steps))
    head = output_head(student)
    if head is not None and config.softmax_vocabulary:
        head = over_vocabulary(head, texts, config.softmax_vocabulary)
    accelerator = Accelerator(cpu=next(student.parameters()).device.type == "cpu")
    return StepParts(student, None, get_method("finetune"), optimizer, scheduler, accelerator, named,
                     config.retain_weight, config.max_grad_norm, head)


def relearn_curve(model: torch.nn.Module, items: list[TokenizedExample], setting: RelearnSetting, pad_id: int,
                  measure: Callable[[torch.nn.Module], dict], events: Events | None = None) -> list[dict]:
    """Fine-tune a copy of ``model`` on ``items`` (every token a target) and return
    ``{"step": k, "loss": ..., **measure(copy)}`` after each step k of ``setting.steps``. The
    batches, learning-rate schedule and update are those of ``unlearn --method finetune`` with
    ``setting.unlearn_config``: its first k steps give the same weights."""
    from accelerate.utils import set_seed

    events = events or Events()
    config = setting.unlearn_config(model)
    set_seed(config.seed)  # LoRA's initial weights and dropout, as the recipe seeds them
    student = copy.deepcopy(model)
    if config.lora:
        student = add_lora(student, config)
    else:
        student.requires_grad_(True)
    parts = _parts(student, config, [t.input_ids for t in items])
    loader = forget_loader(items, [[1.0] * len(t.input_ids) for t in items], config.batch_size, config.seed, pad_id)
    device = next(student.parameters()).device
    curve, step, epoch, loss = [], 0, 1, None
    progress = events.progress(f"relearning ({'LoRA' if setting.lora else 'full'}, lr {setting.lr:g})")
    while step < config.max_steps:
        loader.sampler.set_epoch(epoch)
        for batch in loader:
            student.train()
            loss, _ = optimizer_step(parts, [{k: v.to(device) for k, v in batch.items()}], [])
            step += 1
            progress(step, config.max_steps)
            if step in setting.steps:
                student.eval()
                curve.append({"step": step, "loss": loss, **measure(student)})
            if step >= config.max_steps:
                break
        epoch += 1
    del parts, student
    return curve
