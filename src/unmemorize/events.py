"""What long-running work tells its user: one protocol for every recipe.

Recipes and components call these methods; they never print. The command line renders them
with Rich (`unmemorize.cli.render`); a library user passes nothing (everything is silent) or a
subclass of `Events` that overrides what it wants to see."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

# progress(done, total): called as work advances; done == total at the end.
Progress = Callable[[int, int], None]


def no_progress(_done: int, _total: int) -> None:
    pass


@dataclass
class StepRecord:
    """One optimizer step, as training reports it (and keeps it in ``metrics.json``)."""

    step: int
    epoch: int
    loss: float
    lr: float
    tokens_per_s: float
    retain_loss: float | None = None  # the retain term's part of loss (with --retain)


class Events:
    """Every method does nothing here; a renderer overrides them."""

    def message(self, text: str) -> None:
        """A line of information (never forget-set text: ids and counts only)."""

    def stage(self, number: int, total: int, title: str) -> None:
        """A recipe of several stages (the demo) starts stage ``number`` of ``total``."""

    def progress(self, label: str) -> Progress:
        """A callback for one long piece of work (a bar labelled ``label``)."""
        return no_progress

    def training_started(self, total_steps: int) -> None:
        """Optimizer steps begin (again, after an epoch's evaluation)."""

    def step(self, record: StepRecord, total_steps: int) -> None:
        """An optimizer step finished."""

    def training_paused(self) -> None:
        """Steps stop for now (evaluation, the end, or an error)."""

    def training_finished(self) -> None:
        """This training is over: a later one (the demo trains twice) starts afresh."""

    def memorization(self, label: str, means: dict[str, float]) -> None:
        """Mean memorization of the forget set at a point of a run (``before``, ``epoch 2``...)."""

    def leaks(self, title: str, entries: list[dict]) -> None:
        """Which PII values a model completed verbatim (the demo's audits)."""
