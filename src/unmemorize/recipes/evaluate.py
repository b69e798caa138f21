"""`unmemorize eval`: how much of the forget set a model still leaks (memorization and privacy
attacks), and how much ability it kept (NLU, generation, dialogue).

`run_eval` measures one model, or an unlearned model beside the original it came from, with the
suites of `unmemorize.suites`, and returns nested results keyed by suite, task and metric
(``memorization.forget.ma``, ``nlu.piqa.acc_norm``, ``nlg.mauve``...) with each suite's wall time.

Under ``accelerate launch`` / ``torchrun`` its (model, suite) jobs are shared among the processes
(`mine`) and the results merged in the single-process order: the same results as one process."""

from __future__ import annotations

import time
from typing import Any

from ..config import EvalConfig, as_json
from ..events import Events
from ..metrics.distributed import gather_objects, join_launch
from ..models import default_device, environment, load_model
from ..suites import Shared, Suite, check_inputs, get_suites


def _load(name: str, config: EvalConfig, device: str, events: Events):
    return load_model(name, device=device, allow_pickle=config.allow_pickle,
                      trust_remote_code=config.trust_remote_code, progress=events.message)


# Suites whose later models read what the first model's run left in `Shared` (the "forgotten"
# thresholds; the original's scores under each attack, the "before" of every recovery).
FIRST_PROCESS_SUITES = ("memorization", "robustness")


def mine(jobs: list[tuple[str, Suite]], rank: int, count: int) -> list[tuple[str, Suite]]:
    """This process's (model, suite) jobs of a launch, in the single-process order. Every
    memorization and robustness job goes to the first process: the first model's sets the
    "forgotten" thresholds and the attacks' "before" the next one is judged by (`Shared`); the
    other jobs are dealt in turn. Each suite seeds its own generators, so a job gives the same result on any process."""
    if count == 1:
        return jobs
    others = [job for job in jobs if job[1].name not in FIRST_PROCESS_SUITES]
    return [job for job in jobs if (job[1].name in FIRST_PROCESS_SUITES and rank == 0)
            or (job in others and others.index(job) % count == rank)]


def run_eval(config: EvalConfig, events: Events | None = None, thresholds: dict | None = None,
             robustness: dict | None = None) -> dict:
    """Evaluate ``config.model`` (and ``config.original`` beside it) on the chosen suites.
    ``thresholds`` (MA/EL on unseen text, e.g. the original's from an earlier evaluation) is
    the "forgotten" level, and ``robustness`` (the original's robustness results) the before of
    every recovery; without them the first model evaluated here sets them."""
    events = events or Events()
    suites = get_suites(config.suites)
    check_inputs(config)
    started = time.time()
    launch = join_launch()
    device = config.device or (str(launch.device) if launch.num_processes > 1 else default_device())
    labels = {"model": config.model}
    if config.original:
        labels = {"original": config.original, "unlearned": config.model}
    loaded = {label: _load(name, config, device, events) for label, name in labels.items()}
    # The judge of generation perplexity is the original model when there is one.
    judge = loaded.get("original", next(iter(loaded.values())))
    if config.judge and any(s.needs_encoder for s in suites):
        same = [label for label, name in labels.items() if name == config.judge]
        judge = loaded[same[0]] if same else _load(config.judge, config, device, events)
    shared = Shared(judge=judge, thresholds=dict(thresholds) if thresholds else None, robustness=robustness)
    if any(s.needs_encoder for s in suites):
        from ..metrics.nlg import load_encoder

        shared.encoder = load_encoder()  # a missing package fails now, not after other suites
    results: dict[str, Any] = {label: {} for label in labels}
    timings: dict[str, dict[str, float]] = {label: {} for label in labels}
    jobs = [(label, suite) for label in loaded for suite in suites]
    done = []
    for label, suite in mine(jobs, launch.process_index, launch.num_processes):
        events.message(f"{suite.name} suite on {labels[label]}")
        suite_started = time.time()
        done.append((label, suite.name, suite.run(loaded[label], config, events, shared),
                     round(time.time() - suite_started, 1)))
    finished = {(label, name): (result, secs) for part in gather_objects(done) for label, name, result, secs in part}
    for label, suite in jobs:  # in the single-process order
        results[label][suite.name], timings[label][suite.name] = finished[(label, suite.name)]
    return {
        "config": as_json(config),
        "models": labels,
        "judge": config.judge or labels.get("original", config.model),
        "device": device,
        "environment": environment(labels, device),
        "results": results,
        "timings_s": timings,
        "wall_time_s": round(time.time() - started, 1),
    }
