"""Unlearning methods: one file each, one loss each, registered by name.

A method turns the student's logits on a batch (and, when it needs one, the frozen teacher's
logits on the same batch) into a *sum* of per-token (or per-sequence) losses, and says what that
sum is normalized by. The training loop adds sums over the micro-batches of one optimizer step and
divides by the total normalizer of that step, so gradient accumulation and multi-process training
give the same step as one big batch.

With a retain set (``--retain``) every forget micro-batch comes with a retain micro-batch; the
retain term (``retain_loss_sum``: plain NLL unless the method says otherwise, KL to the original
model for ``kl``) is normalized the same way, over the whole step, by its own token count.

Built in: ``di`` (deliberate imagination; ``di --focus all`` is uniform imagination), ``ga``,
``gd``, ``kl``, ``npo``, ``simnpo``, ``task-vector`` and the inference-time ``dpd``. A method's
hyper-parameters are its dataclass fields; the training config passes each method only those."""

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


# Registers the built-in methods.
from . import di, dpd, ga, gd, kl, npo, simnpo, task_vector  # noqa: E402,F401
