"""The NLU suite: zero-shot multiple-choice benchmarks from local files (see metrics.nlu)."""

from __future__ import annotations

from pathlib import Path

from ..config import EvalConfig
from ..errors import UserError
from ..events import Events
from ..models import LoadedModel
from .base import Shared, Suite, staged_progress


def missing_inputs(config: EvalConfig) -> list[str]:
    from ..metrics.nlu import PAPER_NLU_AVG, check_task_names, resolve_nlu_dir

    try:
        resolve_nlu_dir(config.nlu_dir, check_task_names(config.nlu_tasks or PAPER_NLU_AVG))
    except UserError as error:
        return [str(error)]
    return []


def run(lm: LoadedModel, config: EvalConfig, events: Events, shared: Shared) -> dict:
    from ..metrics.nlu import PAPER_NLU_AVG, evaluate_nlu

    return evaluate_nlu(
        lm.model, lm.tokenizer, config.nlu_tasks or PAPER_NLU_AVG,
        nlu_dir=Path(config.nlu_dir) if config.nlu_dir else None, limit=config.nlu_limit,
        progress=staged_progress(events, "NLU"),
    )


SUITE = Suite("nlu", run, missing_inputs)
