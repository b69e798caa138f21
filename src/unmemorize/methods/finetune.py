"""Fine-tuning: plain next-token NLL *descent* on the given texts, the opposite of unlearning.

loss = Σ_t w_t·ℓ_t / Σ_t w_t with ℓ_t = −log p(x_t | x_<t). It makes a model memorize (the
demo's simulated leak) and tests whether forgotten text comes back when a model is trained on it
again (relearning). Its stop rule points the other way: ``--stop-ma X`` stops once MA is at or
above X."""

from __future__ import annotations

from dataclasses import dataclass

from .base import UnlearningMethod, register
from .likelihood import SoftTarget


@register
@dataclass
class FineTune(UnlearningMethod):
    name = "finetune"
    lowers_memorization = False

    def token_target(self, targets, teacher_logits=None, overwrite=False):
        return SoftTarget()  # −log p(x): the NLL
