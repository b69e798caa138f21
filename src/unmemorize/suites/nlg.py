"""The NLG suite: continuations of WikiText prompts scored by MAUVE, repetition, diversity,
coherence and the perplexity the original model gives them, plus held-out perplexity (see
metrics.nlg.evaluate_nlg). Its result holds each metric's per-item ``measurements`` and 95 %
bootstrap ``intervals`` (uncertainty.attach_intervals; MAUVE's interval recomputes the score),
and ``mauve_clusters`` / ``mauve_note``: MAUVE is degenerate below 500 generations per side."""

from __future__ import annotations

from ..config import EvalConfig
from ..events import Events
from ..models import LoadedModel
from ..paths import data_path
from .base import Shared, Suite, staged_progress


def missing_inputs(config: EvalConfig) -> list[str]:
    from ..metrics.nlg import DEFAULT_PROMPTS

    if config.nlg_prompts is None and data_path(DEFAULT_PROMPTS) is None:
        return [f"the nlg suite needs prompts: pass --nlg-prompts FILE (default {DEFAULT_PROMPTS} "
                "under UNMEMORIZE_DATA or ../shared/data was not found)"]
    return []


def run(lm: LoadedModel, config: EvalConfig, events: Events, shared: Shared) -> dict:
    from ..metrics.nlg import evaluate_nlg

    return evaluate_nlg(
        lm.model, lm.tokenizer, judge=shared.judge.model, judge_tokenizer=shared.judge.tokenizer,
        prompts_source=config.nlg_prompts, limit=config.nlg_limit,
        max_new_tokens=config.nlg_max_new_tokens, seed=config.seed,
        heldout_limit=config.nlg_heldout_limit, encoder=shared.encoder, progress=staged_progress(events, "NLG"),
    )


SUITE = Suite("nlg", run, missing_inputs, needs_encoder=True)
