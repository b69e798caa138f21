"""The dialogue suite: the model writes the last turn of each dialogue from the earlier turns,
scored by unigram F1 against the true turn (Jang et al. 2022's dialogue tasks: Wizard of
Wikipedia, Empathetic Dialogues, Blended Skill Talk, Wizard of the Internet; see
metrics.nlg.dialogue_f1). Greedy decoding, so the scores are deterministic."""

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
    from ..metrics.nlg import dialogue_f1

    results = {}
    for given in config.dialogue_files:
        path = dialogue_path(given)
        name = path.stem
        progress = events.progress(f"dialogue {name}")
        results[name] = {"f1": dialogue_f1(lm.model, lm.tokenizer, path, limit=config.dialogue_limit,
                                           max_new_tokens=config.dialogue_max_new_tokens,
                                           progress=lambda _stage, done, total: progress(done, total))}
    results["average"] = {"f1": sum(r["f1"] for r in results.values()) / len(results)}
    return results


SUITE = Suite("dialogue", run, missing_inputs)
