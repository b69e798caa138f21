"""`unmemorize attack`: the robustness suite on an unlearned model beside its original — does the
forgotten text come back when the model is quantized, fine-tuned again, prompted otherwise, or
read at an inner layer? The same as `unmemorize eval --suites robustness --original ORIGINAL`.

`attack_model_directory` is the entry point for other recipes: quantize and relearn a saved
model and score its forget set again."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from ..config import AttackConfig, EvalConfig
from ..events import Events
from .evaluate import run_eval

EVAL_FIELDS = frozenset(f.name for f in dataclasses.fields(EvalConfig))


def attack_evaluation(config: AttackConfig) -> EvalConfig:
    """The evaluation `attack` runs: its options, the robustness suite alone."""
    shared = {f.name: getattr(config, f.name) for f in dataclasses.fields(config) if f.name in EVAL_FIELDS}
    return EvalConfig(**{**shared, "suites": ("robustness",)})


def run_attack(config: AttackConfig, events: Events | None = None) -> dict:
    """The original and the unlearned model through every attack of ``config.attacks``; the
    results as `run_eval` returns them (``results.unlearned.robustness.recovery`` holds the
    recovery of each attack)."""
    return run_eval(attack_evaluation(config), events or Events())


def attack_model_directory(model: str | Path, original: str | Path, forget: str | Path, *,
                           attacks: tuple[str, ...] = ("quantize", "relearn"), events: Events | None = None,
                           **options) -> dict:
    """Quantize and relearn (or any ``attacks``) the model saved in ``model``, score its forget
    set ``forget`` beside ``original`` and return the robustness results of the unlearned model
    (``recovery``, ``recovery_max``, the scores under each attack). ``options``: any other
    field of `AttackConfig` (``relearn_steps=(1, 5)``, ``quantizations=("gguf-q4_0",)``...)."""
    config = AttackConfig(model=str(model), original=str(original), forget=str(forget), out="-",
                          attacks=attacks, **options)
    return run_attack(config, events)["results"]["unlearned"]["robustness"]
