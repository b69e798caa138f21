"""The NLU suite: zero-shot multiple-choice benchmarks from local files (see metrics.nlu)."""

from __future__ import annotations

from pathlib import Path

from ..config import EvalConfig
from ..errors import UserError
from ..events import Events
from ..models import LoadedModel
from .base import Shared, Suite, staged_progress


def missing_inputs(config: EvalConfig) -> list[str]:
    from ..metrics.nlu import NLU_AVG6_TASKS, check_task_names, resolve_nlu_dir

    try:
        resolve_nlu_dir(config.nlu_dir, check_task_names(config.nlu_tasks or NLU_AVG6_TASKS))
    except UserError as error:
        return [str(error)]
    return []


def run(lm: LoadedModel, config: EvalConfig, events: Events, shared: Shared) -> dict:
    """Each task's metrics and the two six-task averages (metrics.nlu.evaluate_nlu), plus
    ``measurements``: the per-item 0/1 values behind ``{task}.{metric}`` (headline metric and
    acc) and behind ``avg6_lm_eval``/``avg6_summed_acc`` (one stratum per task), in the same
    item order for every model given the same limit, so two models can be compared with a
    paired bootstrap; and ``intervals``: the 95 % bootstrap interval of each."""
    from ..metrics.nlu import NLU_AVG6_TASKS, measure_nlu
    from ..metrics.uncertainty import attach_intervals

    evaluation = measure_nlu(
        lm.model, lm.tokenizer, config.nlu_tasks or NLU_AVG6_TASKS,
        nlu_dir=Path(config.nlu_dir) if config.nlu_dir else None, limit=config.nlu_limit,
        progress=staged_progress(events, "NLU"),
    )
    return attach_intervals(evaluation.results, evaluation.measurements)


SUITE = Suite("nlu", run, missing_inputs)
