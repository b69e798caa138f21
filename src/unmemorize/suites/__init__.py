"""Evaluation suites: a registry of data plus scoring, as lm-evaluation-harness keeps its tasks.

A suite is one file with a function ``run(lm, config, events, shared) -> dict`` (nested results
keyed by task and metric) and a function ``missing_inputs(config) -> list[str]`` (the inputs it
cannot find, each a sentence saying what to pass), registered here by name. `unmemorize eval
--suites a,b` runs them in order on each model."""

from __future__ import annotations

from ..config import EvalConfig
from ..errors import UserError
from .base import Shared, Suite, staged_progress

__all__ = ["Shared", "Suite", "check_inputs", "get_suites", "staged_progress"]


def _registry() -> dict[str, Suite]:
    from . import dialogue, memorization, nlg, nlu, robustness

    return {suite.name: suite for suite in (memorization.SUITE, nlu.SUITE, nlg.SUITE, dialogue.SUITE,
                                            robustness.SUITE)}


def get_suites(names) -> list[Suite]:
    registry = _registry()
    unknown = [n for n in names if n not in registry]
    if unknown:
        raise UserError(f"unknown suite {', '.join(unknown)}; choose from {', '.join(registry)}")
    return [registry[n] for n in names]


def check_inputs(config: EvalConfig) -> None:
    """Fail before loading any model when a needed input is missing, naming each one."""
    missing = [text for suite in get_suites(config.suites) for text in suite.missing_inputs(config)]
    if missing:
        raise UserError("; ".join(missing))
