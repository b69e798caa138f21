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
``gd``, ``kl``, ``npo``, ``simnpo``, ``task-vector``, the inference-time ``dpd``, and
``finetune`` (plain NLL descent: the opposite of unlearning, for making a model memorize and for
testing whether forgotten text can be learned back). A method's
hyper-parameters are its dataclass fields; the training config passes each method only those."""

from .base import METHODS, UnlearningMethod, get_method, method_parameters, register

# Registers the built-in methods.
from . import di, dpd, finetune, ga, gd, kl, npo, simnpo, task_vector  # noqa: E402,F401

__all__ = ["METHODS", "UnlearningMethod", "get_method", "method_parameters", "register"]
