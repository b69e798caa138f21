"""Task arithmetic (Ilharco et al. 2023, "Editing Models with Task Arithmetic"): fine-tune on the
forget set with plain NLL (descent), then subtract the resulting task vector:

    θ_final = θ − α·(θ_ft − θ)

With LoRA the task vector is the adapter's merged delta ΔW = s·B·A, and θ − α·ΔW is the adapter
with B scaled by −α: its initial B is zero and A is kept, so the same formula on B (and A left
as trained) gives exactly that. With full fine-tuning it applies to every weight. α = 0 returns
the original weights exactly; α = 1 gives 2θ − θ_ft.

Memorization after each epoch (and so ``--stop-ma``) is measured on θ_final, not on the
fine-tuned weights; checkpoints hold the fine-tuned weights, so a resumed run goes on
fine-tuning."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..errors import UserError
from .base import register
from .finetune import FineTune


def _is_lora_a(name: str) -> bool:
    return "lora_A" in name or "lora_embedding_A" in name


def negated_task_vector(
    trained: dict[str, torch.Tensor], initial: dict[str, torch.Tensor], alpha: float
) -> dict[str, torch.Tensor]:
    """θ − α·(θ_ft − θ) for every weight, except LoRA A matrices, which stay as trained."""
    return {
        name: value if _is_lora_a(name) else initial[name] - alpha * (value - initial[name])
        for name, value in trained.items()
    }


@register
@dataclass
class TaskVector(FineTune):
    """The loss is finetune's (descent: learn the forget set); the final weights negate it."""

    name = "task-vector"
    keeps_initial_weights = True
    lowers_memorization = True  # the final weights, on which memorization is measured
    task_vector_alpha: float = 1.0

    def __post_init__(self) -> None:
        if not math.isfinite(self.task_vector_alpha):
            raise UserError(f"--alpha must be a finite number, not {self.task_vector_alpha}")

    def final_weights(self, trained, initial):
        return negated_task_vector(trained, initial, self.task_vector_alpha)
