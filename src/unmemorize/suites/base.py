"""What a suite is, and what the suites of one evaluation share."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..config import EvalConfig
from ..events import Events
from ..models import LoadedModel


@dataclass
class Shared:
    """Loaded once per evaluation and used by every model's suites: the judge of generation
    perplexity, the sentence encoder of MAUVE and coherence, and the "forgotten" thresholds
    (MA and EL on unseen text) and robustness results of the first model measured — the
    original when there is one."""

    judge: LoadedModel
    encoder: Any = None
    thresholds: dict | None = None
    # The robustness suite's results on the first model measured (the original): the "before"
    # of every recovery, and the original under the same attacks.
    robustness: dict | None = None


@dataclass(frozen=True)
class Suite:
    name: str
    run: Callable[[LoadedModel, EvalConfig, Events, Shared], dict]
    missing_inputs: Callable[[EvalConfig], list[str]]
    needs_encoder: bool = False


def staged_progress(events: Events, suite: str) -> Callable[[str, int, int], None]:
    """A ``progress(stage, done, total)`` callback drawing one bar per stage (task, step)."""
    bars: dict[str, Callable[[int, int], None]] = {}

    def progress(stage: str, done: int, total: int) -> None:
        if stage not in bars:
            bars[stage] = events.progress(f"{suite} {stage.replace('_', ' ')}")
        bars[stage](done, total)

    return progress
