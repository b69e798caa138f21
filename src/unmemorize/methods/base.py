"""The method interface and the registry of methods by name (see the package's docstring)."""

from __future__ import annotations

import dataclasses
from abc import ABC, abstractmethod
from typing import Any, ClassVar

import torch

from ..errors import UserError
from .likelihood import SoftTarget

METHODS: dict[str, type["UnlearningMethod"]] = {}


def register(cls: type["UnlearningMethod"]) -> type["UnlearningMethod"]:
    METHODS[cls.name] = cls
    return cls


class UnlearningMethod(ABC):
    """A loss written as per-token terms and how they combine.

    ``token_terms(logits, targets, teacher_logits)`` gives one term per predicted position (rows of
    logits ``[n, V]`` and their next tokens ``[n]``); ``loss_from_terms`` turns the ``[B, T−1]``
    terms of a batch into the batch's loss *sum*. The plain path (`loss_sum`) applies both to full
    logits; the training step's chunked path (`training.loss`) computes the same terms a few
    hundred positions at a time, without ever holding a ``[B, T, V]`` tensor, and gets the same
    loss and gradient."""

    name: ClassVar[str]
    needs_teacher: ClassVar[bool] = False  # the original model's logits on forget batches
    retain_needs_teacher: ClassVar[bool] = False  # ... and on retain batches
    # True: token_terms reads the teacher's logits (di); False: the teacher's own token terms
    # enter loss_from_terms (npo's reference log-likelihoods).
    teacher_in_terms: ClassVar[bool] = False
    # True: loss_from_terms is Σ c_t·term_t with c_t independent of the terms (then the chunked
    # path needs one pass); npo and simnpo are not.
    linear_in_terms: ClassVar[bool] = True
    requires_retain: ClassVar[bool] = False  # refuses to run without --retain
    trains: ClassVar[bool] = True  # False: an inference-time method (no optimizer steps)
    # True: the loop keeps the trainable weights as they were before training and hands them to
    # `final_weights` (task arithmetic edits the weights once training is done).
    keeps_initial_weights: ClassVar[bool] = False
    # False: training raises memorization (finetune), so the stop rule waits for it to rise.
    lowers_memorization: ClassVar[bool] = True
    # The learning rate when --lr is not given, (with LoRA, full fine-tuning): the settings that
    # reached the unseen-text level in 3 epochs on Gemma-3 270M (benchmarks/README.md) without
    # diverging; full fine-tuning moves every weight, so it takes a hundredth.
    learning_rates: ClassVar[tuple[float, float]] = (2e-3, 2e-5)

    @classmethod
    def learning_rate(cls, given: float | None, lora: bool) -> float:
        """``--lr`` when given, else the method's measured default for LoRA or full fine-tuning."""
        return given if given is not None else cls.learning_rates[0 if lora else 1]

    def normalizer(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """What this batch's loss sum is divided by: the total target weight by default."""
        return batch["loss_weights"].sum()

    @abstractmethod
    def token_target(self, targets: torch.Tensor, teacher_logits: torch.Tensor | None = None,
                     overwrite: bool = False) -> SoftTarget:
        """Each position's term as a signed cross-entropy to a target distribution, from its
        next token (and the teacher's logits, which ``overwrite`` lets it use as scratch)."""

    def token_terms(self, logits: torch.Tensor, targets: torch.Tensor,
                    teacher_logits: torch.Tensor | None = None) -> torch.Tensor:
        """One term per position: ``logits`` [n, V] predict ``targets`` [n]; returns [n]."""
        return self.token_target(targets, teacher_logits).terms(logits, targets)

    def loss_from_terms(self, terms: torch.Tensor, batch: dict[str, torch.Tensor],
                        teacher_terms: torch.Tensor | None = None) -> torch.Tensor:
        """The batch's loss sum from its token terms [B, T−1] (position t−1 predicts token t):
        Σ_t w_t·term_t by default, w the target weights (0 on padding)."""
        return (terms * batch["loss_weights"][:, 1:]).sum()

    def loss_sum(self, logits: torch.Tensor, batch: dict[str, torch.Tensor],
                 teacher_logits: torch.Tensor | None = None) -> torch.Tensor:
        """Sum of the batch's weighted losses (a scalar), from full logits [B, T, V]."""
        if self.needs_teacher and teacher_logits is None:
            raise ValueError(f"{self.name} needs the original model's logits")
        terms = batch_terms(self.token_terms, logits, forget_targets(batch),
                            teacher_logits if self.teacher_in_terms else None)
        teacher_terms = None
        if self.needs_teacher and not self.teacher_in_terms:
            teacher_terms = batch_terms(self.token_terms, teacher_logits, batch["input_ids"], None)
        return self.loss_from_terms(terms, batch, teacher_terms)

    def loss(self, logits, batch, teacher_logits=None) -> torch.Tensor:
        """The normalized loss of one batch on its own."""
        return self.loss_sum(logits, batch, teacher_logits) / self.normalizer(batch)

    def retain_normalizer(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """What a retain batch's loss sum is divided by: its number of target tokens."""
        return batch["loss_weights"].sum()

    def retain_token_target(self, targets: torch.Tensor, teacher_logits: torch.Tensor | None = None,
                            overwrite: bool = False) -> SoftTarget:
        """A retain batch's token terms: NLL (keep predicting the retain text)."""
        return SoftTarget()

    def retain_token_terms(self, logits: torch.Tensor, targets: torch.Tensor,
                           teacher_logits: torch.Tensor | None = None) -> torch.Tensor:
        return self.retain_token_target(targets, teacher_logits).terms(logits, targets)

    def retain_loss_sum(self, logits: torch.Tensor, batch: dict[str, torch.Tensor],
                        teacher_logits: torch.Tensor | None = None) -> torch.Tensor:
        """Sum of a retain batch's weighted token terms, from full logits."""
        terms = batch_terms(self.retain_token_terms, logits, batch["input_ids"], teacher_logits)
        return (terms * batch["loss_weights"][:, 1:]).sum()

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


def forget_targets(batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """What a forget batch's terms read at each position: the next token [B, T], or with
    --joint-lowering every token deliberate imagination lowers there [B, T, K]."""
    return batch.get("lowered_ids", batch["input_ids"])


def batch_terms(token_terms, logits: torch.Tensor, input_ids: torch.Tensor,
                teacher_logits: torch.Tensor | None) -> torch.Tensor:
    """``token_terms`` at every predicting position of a batch: [B, T−1] (position t−1's logits
    predict token t)."""
    batch, length, vocab = logits.shape
    rows = logits[:, :-1].reshape(-1, vocab)
    teacher = teacher_logits[:, :-1].reshape(-1, vocab) if teacher_logits is not None else None
    targets = input_ids[:, 1:].reshape(-1, *input_ids.shape[2:])  # [n], or [n, K] lowered tokens
    return token_terms(rows, targets, teacher).reshape(batch, length - 1)


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


