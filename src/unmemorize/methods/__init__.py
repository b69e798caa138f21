"""Unlearning methods: one file each, one loss each, registered by name.

A method turns the student's logits on a batch (and, when it needs one, the frozen teacher's
logits on the same batch) into a *sum* of per-token (or per-sequence) losses, and says what that
sum is normalized by. The training loop adds sums over the micro-batches of one optimizer step and
divides by the total normalizer of that step, so gradient accumulation and multi-process training
give the same step as one big batch."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, ClassVar

import torch

from ..errors import UserError

METHODS: dict[str, type["UnlearningMethod"]] = {}


def register(cls: type["UnlearningMethod"]) -> type["UnlearningMethod"]:
    METHODS[cls.name] = cls
    return cls


class UnlearningMethod(ABC):
    name: ClassVar[str]
    needs_teacher: ClassVar[bool] = False

    def normalizer(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """What this batch's loss sum is divided by: the total target weight by default."""
        return batch["loss_weights"].sum()

    @abstractmethod
    def loss_sum(
        self,
        logits: torch.Tensor,
        batch: dict[str, torch.Tensor],
        teacher_logits: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Sum of the batch's weighted losses (a scalar)."""

    def loss(self, logits, batch, teacher_logits=None) -> torch.Tensor:
        """The normalized loss of one batch on its own."""
        return self.loss_sum(logits, batch, teacher_logits) / self.normalizer(batch)


def get_method(name: str, **params: Any) -> UnlearningMethod:
    if name not in METHODS:
        raise UserError(f"unknown method {name!r}; available: {', '.join(sorted(METHODS))}")
    return METHODS[name](**params)


from . import di  # noqa: E402,F401  (registers the built-in methods)
