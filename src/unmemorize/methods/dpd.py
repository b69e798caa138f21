"""Differentially private decoding (Majmudar et al. 2022, "Differentially Private Decoding in
Large Language Models"): an inference-time method, no training.

The next-token distribution is mixed with the uniform distribution over the vocabulary V:

    p_dpd(v) = λ·p_model(v) + (1 − λ)/V

and the model's output logits become log p_dpd, so every consumer of ``model(...).logits`` (our
decoding loop, memorization, privacy attacks, NLU scoring, perplexity) sees the mixture. Written
on logits as λ·z + (1 − λ)·mean(z) the same idea would only rescale the logits around a
constant, i.e. change the temperature (softmax is shift-invariant), and never put the uniform
floor under rare tokens; the probability mixture above is what the paper defines.

λ = 1 is the original model (same log-probabilities, same greedy output); λ = 0 is uniform.
The wrapped model is saved as the original weights plus ``dpd.json`` holding λ, and
``load_model`` wraps a folder that has one again."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import UserError
from .base import UnlearningMethod, register
from ..metrics.decoding import at_least_float32

DPD_FILE = "dpd.json"


def dpd_logits(logits: torch.Tensor, dpd_lambda: float) -> torch.Tensor:
    """log(λ·softmax(z) + (1 − λ)/V) over the last dimension, computed in log space."""
    log_probs = at_least_float32(logits).log_softmax(-1)
    if dpd_lambda == 1:
        return log_probs
    uniform = math.log1p(-dpd_lambda) - math.log(logits.shape[-1])
    if dpd_lambda == 0:
        return torch.full_like(log_probs, uniform)
    return torch.logaddexp(log_probs + math.log(dpd_lambda), torch.full_like(log_probs, uniform))


def check_lambda(value: float) -> float:
    if not 0 <= value <= 1:
        raise UserError(f"--dpd-lambda must be in [0, 1], not {value}")
    return float(value)


def apply_dpd(model: torch.nn.Module, dpd_lambda: float) -> torch.nn.Module:
    """Make ``model(...)`` return mixed logits (a forward hook on the whole causal LM, so the
    model's own last steps, e.g. logit soft-capping, come first). In place; returns ``model``."""
    dpd_lambda = check_lambda(dpd_lambda)
    if getattr(model, "dpd_lambda", None) is not None:
        raise UserError(f"the model already decodes privately (lambda {model.dpd_lambda}); start from the original model")

    def mix(_module, _args, output):
        if not hasattr(output, "logits"):
            raise TypeError("private decoding needs outputs with .logits (return_dict=True)")
        output.logits = dpd_logits(output.logits, dpd_lambda)
        return output

    model.register_forward_hook(mix)
    model.dpd_lambda = dpd_lambda
    return model


def read_dpd_file(directory: Path) -> float | None:
    """λ from ``directory/dpd.json``, or None when the folder is a plain model."""
    path = Path(directory) / DPD_FILE
    if not path.is_file():
        return None
    try:
        value = json.loads(path.read_text())["lambda"]
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise UserError(f"{path} is not a private-decoding file ({type(error).__name__})") from None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise UserError(f"{path}: lambda must be a number, not {value!r}")
    return check_lambda(value)


@register
@dataclass
class PrivateDecoding(UnlearningMethod):
    name = "dpd"
    trains = False
    dpd_lambda: float = 0.75

    def __post_init__(self) -> None:
        check_lambda(self.dpd_lambda)

    def token_target(self, targets, teacher_logits=None, overwrite=False):
        raise TypeError("dpd is an inference-time method: it has no training loss")

    def wrap(self, model):
        apply_dpd(model, self.dpd_lambda)

    def saved_files(self):
        return {DPD_FILE: json.dumps({"method": "dpd", "lambda": self.dpd_lambda}, indent=2)}
