"""The dialogue suite: the model writes the last turn of each dialogue from the earlier turns,
scored by unigram F1 against the true turn (Jang et al. 2022's dialogue tasks: Wizard of
Wikipedia, Empathetic Dialogues, Blended Skill Talk, Wizard of the Internet; see
metrics.nlg.dialogue_f1_scores). Greedy decoding, so the scores are deterministic. Each F1 is
kept per dialogue, with a bootstrap interval over dialogues."""

from __future__ import annotations

from pathlib import Path

from ..config import EvalConfig
from ..events import Events
from ..models import LoadedModel
from ..paths import data_path
from .base import Shared, Suite


def dialogue_path(given: str) -> Path | None:
    """A dialogue file as given, else under the data location; None when neither exists."""
    path = Path(given).expanduser()
    if path.is_file():
        return path
    return data_path(given)


def missing_inputs(config: EvalConfig) -> list[str]:
    return [f"the dialogue suite cannot find {given} (pass --dialogue-files, or set UNMEMORIZE_DATA)"
            for given in config.dialogue_files if dialogue_path(given) is None]


def run(lm: LoadedModel, config: EvalConfig, events: Events, shared: Shared) -> dict:
    """``{file stem: {"f1", "n"}, "average": {"f1"}}`` with ``measurements`` (each dialogue's F1,
    for paired comparisons) and their bootstrap ``intervals`` (uncertainty.attach_intervals).
    The average is the mean of the files' means, so its bootstrap resamples dialogues within
    each file (statistic ``mean_of_means``, one stratum per file)."""
    from ..metrics.nlg import dialogue_f1_scores
    from ..metrics.uncertainty import Measurement, attach_intervals

    results: dict = {}
    measurements: dict[str, Measurement] = {}
    scores_by_file: dict[str, list[float]] = {}
    for given in config.dialogue_files:
        path = dialogue_path(given)
        name = path.stem
        progress = events.progress(f"dialogue {name}")
        scores = dialogue_f1_scores(
            lm.model, lm.tokenizer, path, limit=config.dialogue_limit,
            max_new_tokens=config.dialogue_max_new_tokens,
            progress=lambda _stage, done, total: progress(done, total),
        )
        scores_by_file[name] = scores
        measurements[f"{name}.f1"] = Measurement.of_mean(scores)
        results[name] = {"f1": measurements[f"{name}.f1"].value(), "n": len(scores)}
    measurements["average.f1"] = Measurement("mean_of_means", scores_by_file)
    results["average"] = {"f1": measurements["average.f1"].value()}
    return attach_intervals(results, measurements)


SUITE = Suite("dialogue", run, missing_inputs)
