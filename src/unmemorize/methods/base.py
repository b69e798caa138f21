"""The method interface and the registry of methods by name (see the package's docstring)."""

from __future__ import annotations

import dataclasses
from abc import ABC, abstractmethod
from typing import Any, ClassVar

import torch

from ..errors import UserError
from .likelihood import weighted_nll_sum

METHODS: dict[str, type["UnlearningMethod"]] = {}


def register(cls: type["UnlearningMethod"]) -> type["UnlearningMethod"]:
    METHODS[cls.name] = cls
    return cls


class UnlearningMethod(ABC):
    name: ClassVar[str]
    needs_teacher: ClassVar[bool] = False  # the original model's logits on forget batches
    retain_needs_teacher: ClassVar[bool] = False  # ... and on retain batches
    requires_retain: ClassVar[bool] = False  # refuses to run without --retain
    trains: ClassVar[bool] = True  # False: an inference-time method (no optimizer steps)
    # True: the loop keeps the trainable weights as they were before training and hands them to
    # `final_weights` (task arithmetic edits the weights once training is done).
    keeps_initial_weights: ClassVar[bool] = False
    # False: training raises memorization (finetune), so the stop rule waits for it to rise.
    lowers_memorization: ClassVar[bool] = True

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

    def retain_normalizer(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """What a retain batch's loss sum is divided by: its number of target tokens."""
        return batch["loss_weights"].sum()

    def retain_loss_sum(
        self,
        logits: torch.Tensor,
        batch: dict[str, torch.Tensor],
        teacher_logits: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Sum of a retain batch's token losses: NLL (keep predicting the retain text)."""
        return weighted_nll_sum(logits, batch)

    def final_weights(
        self, trained: dict[str, torch.Tensor], initial: dict[str, torch.Tensor]
    ) -> dict[str, torch.Tensor]:
        """The weights to evaluate and save, from the trained and the initial trainable weights
        (only called when ``keeps_initial_weights``)."""
        return trained

    def wrap(self, model: torch.nn.Module) -> None:
        """Turn ``model`` into the unlearned model in place (inference-time methods)."""

    def saved_files(self) -> dict[str, str]:
        """Extra files (name -> text) written beside the unlearned model's weights."""
        return {}


def method_parameters(name: str) -> list[str]:
    """The hyper-parameters ``name`` takes: the fields of its dataclass."""
    if name not in METHODS:
        raise UserError(f"unknown method {name!r}; available: {', '.join(sorted(METHODS))}")
    cls = METHODS[name]
    return [f.name for f in dataclasses.fields(cls)] if dataclasses.is_dataclass(cls) else []


def get_method(name: str, **params: Any) -> UnlearningMethod:
    declared = method_parameters(name)
    unknown = sorted(set(params) - set(declared))
    if unknown:
        raise UserError(f"method {name!r} takes no {', '.join(unknown)} (its parameters: {', '.join(declared) or 'none'})")
    return METHODS[name](**params)


