"""`unmemorize compare`: several unlearning runs of one model on one forget set, each evaluated
with the same suites, side by side with the original model.

The YAML file:

    model: gemma-3-270m
    forget: ${UNMEMORIZE_DATA:-../shared/data}/extraction/forget_sets/lm_extraction_32_0.csv
    retain: retain.txt            # optional, for every run (gd and kl need it)
    lr: 2e-3                      # any `unlearn` option, shared by every run
    stop_ma: auto
    seeds: [42, 43, 44]           # optional: every run once per seed, pooled in the table
    baseline: di-g10              # optional: the run the others are also compared with
    eval:                         # EvalConfig fields; setting: quick | standard | custom
      setting: standard
      suites: [memorization, nlu, nlg]
    runs:
      - {name: di-g10, method: di, strength: 10}
      - {name: ga, method: ga, lr: 2e-4}      # a run's own keys override the shared ones

Keys are the long option names of `unmemorize unlearn` (``strength``, ``alpha``, ``dpd-lambda``,
dashes or underscores). ``${VAR}`` and ``${VAR:-default}`` in values are replaced from the
environment; relative paths are relative to the working directory. Evaluation takes
``max_length``, ``limit``, ``el_n``, ``el_stride`` and ``seed`` from the shared settings unless
``eval:`` sets them; keys given under ``eval:`` win over the setting (``quick: true`` is
``setting: quick``). With ``seeds``, run NAME becomes NAME-sSEED for each seed; the table pools
them (mean over seeds, t interval) and the paired differences average each item over seeds.

What happens: the original model is evaluated once (row ``original``), then each run is trained
with `unlearn` (weights under ``--runs-dir``) and evaluated with `run_eval`, perplexity of
generations judged by the original model for every row. Each finished run leaves
``OUT/evals/NAME.json`` with the request it answers; re-running skips a run whose request is
unchanged ("skip NAME (done)") and redoes one whose settings changed. A run trained but not yet
evaluated keeps its weights (``RUNS/NAME`` and ``RUNS/NAME.request.json``) and is only evaluated.
Results: ``comparison.md`` (values with 95 % intervals, the forgotten verdict against the
original's unseen-text level, paired differences against the original and the baseline),
``comparison.csv``, ``comparison.json`` (one row per run, one pooled row per group) and the
trade-off plot ``tradeoff.png`` (error bars; per-epoch curves of runs trained with
``unseen_every_epoch``) with its data in ``tradeoff.csv``. The results folder holds only
small files; model weights stay under ``--runs-dir``."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..config import (
    EVAL_FROM_UNLEARN, EvalConfig, UnlearnConfig, as_json, defaults, evaluation_setting, expand_env, from_mapping,
    read_yaml,
)
from ..errors import UserError
from ..events import Events
from ..methods import METHODS
from ..paths import data_relative, portable, write_atomic, write_json
from ..reporting.comparison import Finished, build, comparison_markdown
from ..reporting.plots import UTILITY_PANELS, tradeoff_plot
from ..reporting.tables import csv_text
from ..suites import check_inputs
from .evaluate import run_eval
from .unlearn import resolve_method, unlearn

ORIGINAL = "original"
# Keys of the comparison file that are not `unlearn` options.
TOP_LEVEL = ("runs", "eval", "seeds", "baseline")
# Set by compare itself for every run.
RUN_MANAGED = frozenset({"out", "overwrite", "resume", "checkpoint_dir"})
EVAL_MANAGED = frozenset({"model", "original", "judge", "forget"})
_RUN_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


@dataclass
class RunSpec:
    name: str
    method: str
    overrides: dict[str, Any]  # UnlearnConfig fields this run sets
    group: str = ""  # the run's name before a seed suffix


@dataclass
class CompareConfig:
    """A parsed comparison file: shared unlearn settings, evaluation settings, runs."""

    shared: dict[str, Any]  # UnlearnConfig fields (model and forget included)
    eval: dict[str, Any]  # EvalConfig fields given explicitly
    runs: list[RunSpec]
    source: str = ""
    baseline: str | None = None

    @property
    def model(self) -> str:
        return self.shared.get("model", defaults(UnlearnConfig)["model"])


@dataclass
class RunPlan:
    """Everything one row needs, resolved before any work starts."""

    name: str
    method: str
    unlearn: UnlearnConfig | None  # None for the original
    eval: EvalConfig
    request: dict  # what the row's results answer; a different request reruns the row
    params: str = ""  # the key hyper-parameters, for the table
    group: str = ""
    seed: int | None = None


# --- the configuration file --------------------------------------------------------------------


def _run_spec(index: int, run: dict, source: str, seen: set) -> RunSpec:
    where = f"run {index} of {source}"
    name = run.get("name")
    if not isinstance(name, str) or not _RUN_NAME.match(name):
        raise UserError(f"{where} needs a `name` of letters, digits, '.', '_' or '-' (got {name!r})")
    if name == ORIGINAL:
        raise UserError(f"{where}: the name {ORIGINAL!r} is the row of the original model; pick another")
    if name in seen:
        raise UserError(f"duplicate run name {name!r} in {source}; names label rows and files")
    seen.add(name)
    if "method" not in run:
        raise UserError(f"run {name!r} in {source} needs a `method`")
    overrides = from_mapping(UnlearnConfig, {k: v for k, v in run.items() if k != "name"},
                             f"run {name!r} of {source}", refused=RUN_MANAGED)
    return RunSpec(name=name, method=str(overrides["method"]), overrides=overrides, group=name)


def _seeded(specs: list[RunSpec], seeds: Any, source: str) -> list[RunSpec]:
    """Each run once per seed (NAME-sSEED), or as it is without ``seeds``."""
    if seeds is None:
        return specs
    if not isinstance(seeds, list) or not seeds or not all(isinstance(s, int) and not isinstance(s, bool) for s in seeds) \
            or len(set(seeds)) != len(seeds):
        raise UserError(f"`seeds` in {source} must be a list of distinct integers, not {seeds!r}")
    return [RunSpec(f"{spec.name}-s{seed}", spec.method, {**spec.overrides, "seed": seed}, spec.name)
            for spec in specs for seed in seeds]


def parse_config(data: Any, source: str = "the config") -> CompareConfig:
    """Check and normalize a loaded comparison file (see the module docstring)."""
    if not isinstance(data, dict):
        raise UserError(f"{source} must be a mapping with model, forget, eval and runs")
    data = expand_env(data, source)
    runs_data = data.get("runs")
    if not runs_data:
        raise UserError(f"{source} has no runs: add `runs:` with a list of {{name, method, ...}}")
    if not isinstance(runs_data, list) or not all(isinstance(r, dict) for r in runs_data):
        raise UserError(f"`runs` in {source} must be a list of mappings ({{name, method, ...}})")
    eval_data = data.get("eval") or {}
    if not isinstance(eval_data, dict):
        raise UserError(f"`eval` in {source} must be a mapping of evaluation settings")
    shared = from_mapping(UnlearnConfig, {k: v for k, v in data.items() if k not in TOP_LEVEL}, source,
                          refused=RUN_MANAGED)
    if "forget" not in shared:
        raise UserError(f"{source} needs `forget`: the texts to forget")
    quick = eval_data.get("quick", False)
    if not isinstance(quick, bool):
        raise UserError(f"'quick' in eval: of {source} must be true or false, not {quick!r}")
    if quick and eval_data.get("setting", "quick") != "quick":
        raise UserError(f"eval: of {source} sets both quick and setting {eval_data['setting']!r}; keep one")
    explicit_eval = from_mapping(EvalConfig, {**{k: v for k, v in eval_data.items() if k != "quick"},
                                              **({"setting": "quick"} if quick else {})},
                                 f"eval: of {source}", refused=EVAL_MANAGED)
    seen: set[str] = set()
    runs = [_run_spec(index, run, source, seen) for index, run in enumerate(runs_data, 1)]
    baseline = data.get("baseline")
    if baseline is not None and baseline not in {run.name for run in runs}:
        raise UserError(f"`baseline` in {source} must name one of the runs, not {baseline!r}")
    runs = _seeded(runs, data.get("seeds"), source)
    return CompareConfig(shared=shared, eval=explicit_eval, runs=runs, source=source, baseline=baseline)


def load_config(path: Path) -> CompareConfig:
    return parse_config(read_yaml(path), str(path))


# --- plans ----------------------------------------------------------------------------------------


def _eval_config(config: CompareConfig, model: str, judge: str | None) -> EvalConfig:
    # Evaluation takes the shared unlearn settings it has in common with them unless eval: sets them.
    shared = {k: config.shared[k] for k in EVAL_FROM_UNLEARN if k in config.shared}
    cfg = EvalConfig(model=model, forget=config.shared["forget"], judge=judge, **{**shared, **config.eval})
    return evaluation_setting(cfg, explicit=set(config.eval) - {"setting"})


def _hyper_parameters(cfg: UnlearnConfig) -> str:
    """The settings that tell runs apart, e.g. ``γ=10, LoRA, lr=0.002, ≤3 ep``."""
    symbols = {"imagination_strength": "γ", "beta": "β", "margin": "margin", "task_vector_alpha": "α",
               "dpd_lambda": "λ"}
    parts = [f"{symbol}={getattr(cfg, name):g}" for name, symbol in symbols.items() if getattr(cfg, name) is not None]
    if not METHODS[cfg.method].trains:
        return ", ".join(parts)  # nothing is trained
    if cfg.method == "di" and cfg.focus != "all":
        parts.append(f"focus {cfg.focus} ({cfg.focus_mode})")
    parts.append("LoRA" if cfg.lora else "full")
    parts.append(f"lr={METHODS[cfg.method].learning_rate(cfg.lr, cfg.lora):g}")
    parts.append(f"≤{cfg.max_steps} steps" if cfg.max_steps else f"≤{cfg.epochs} ep")
    if cfg.retain:
        parts.append(f"retain×{cfg.retain_weight:g}")
    return ", ".join(parts)


def _run_plan(config: CompareConfig, run: RunSpec, runs_dir: Path) -> RunPlan:
    try:
        cfg = UnlearnConfig(**{**config.shared, **run.overrides, "out": str(runs_dir / run.name), "overwrite": True})
        # Unknown method, an option it does not take, gd without retain; fills in the
        # method's defaults, so `strength: 3` and no strength are the same request for di.
        _, cfg = resolve_method(cfg)
    except UserError as error:
        raise UserError(f"run {run.name!r}: {error}") from None
    run_eval_cfg = _eval_config(config, str(runs_dir / run.name), judge=config.model)
    request = portable({
        "unlearn": {k: v for k, v in as_json(cfg).items() if k not in RUN_MANAGED},
        "eval": {k: v for k, v in as_json(run_eval_cfg).items() if k != "model"},
    })
    return RunPlan(run.name, run.method, cfg, run_eval_cfg, request, _hyper_parameters(cfg), run.group or run.name,
                   cfg.seed if run.group and run.group != run.name else None)


def make_plans(config: CompareConfig, runs_dir: Path) -> list[RunPlan]:
    """Resolve and check every row before anything runs: a typo in the last run fails now, not
    after an hour of training."""
    original_eval = _eval_config(config, config.model, None)
    if "memorization" not in original_eval.suites:
        raise UserError("compare needs the memorization suite: forget-set MA is the comparison's x axis")
    plans = [RunPlan(ORIGINAL, "-", None, original_eval,
                     request=portable({"model": config.model, "eval": as_json(original_eval)}), group=ORIGINAL)]
    return plans + [_run_plan(config, run, runs_dir) for run in config.runs]


# How many sequences a pass holds, and threads: they change the speed, not the results.
SPEED_ONLY = frozenset({"batch_size", "el_batch_size", "eval_batch_size", "threads"})


def same_request(done: dict | None, wanted: dict) -> bool:
    """Whether finished results answer ``wanted``. A key the results lack is an option newer
    than them: they were made with its default. Settings of speed alone are not compared."""
    if not isinstance(done, dict) or set(done) != set(wanted):
        return False
    for part, values in wanted.items():
        if not isinstance(values, dict):
            if done[part] != values:
                return False
            continue
        cls = UnlearnConfig if part == "unlearn" else EvalConfig
        known = _json_defaults(cls)
        if any(done[part].get(k, known.get(k)) != v for k, v in values.items() if k not in SPEED_ONLY):
            return False
    return True


def _json_defaults(cls: type) -> dict:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in defaults(cls).items()}


# --- running ------------------------------------------------------------------------------------


def _read_json(path: Path) -> dict | None:
    import json

    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _unlearn_summary(metrics: dict) -> dict:
    """The numbers of a training run worth keeping beside its evaluation (no per-sample data)."""
    return {
        "method": metrics.get("method"),
        "steps": len(metrics.get("steps", [])),
        "stopped_because": metrics.get("stopped_because"),
        "wall_time_s": metrics.get("wall_time_s"),
        "peak_memory_mb": metrics.get("peak_memory_mb"),
        "reference_levels": metrics.get("reference_levels"),
        "thresholds": metrics.get("thresholds"),
        "before": metrics.get("before", {}).get("mean"),
        "epochs": metrics.get("epochs"),
        "after": metrics.get("after", {}).get("mean"),
        "final_loss": metrics["steps"][-1]["loss"] if metrics.get("steps") else None,
    }


def _thresholds(original: dict | None) -> dict | None:
    """The original row's MA/EL on unseen text: every run's "forgotten" level."""
    if not original:
        return None
    reference = next(iter(original["eval"]["results"].values())).get("memorization", {}).get("reference", {})
    return {k: v for k, v in reference.items() if k != "samples"} or None


def _robustness(original: dict | None) -> dict | None:
    """The original row's robustness results: the before of every run's recovery."""
    if not original:
        return None
    return next(iter(original["eval"]["results"].values())).get("robustness")


def _run_one(plan: RunPlan, index: int, total: int, runs_dir: Path, events: Events,
             thresholds: dict | None = None, robustness: dict | None = None) -> dict:
    label = plan.name if plan.unlearn is None else f"[{index}/{total}] {plan.name}"
    unlearn_summary = None
    if plan.unlearn is not None:
        weights = Path(plan.unlearn.out)
        marker = runs_dir / f"{plan.name}.request.json"
        done = _read_json(marker)
        if done is not None and same_request({"unlearn": done.get("unlearn")}, {"unlearn": plan.request["unlearn"]}) \
                and (weights / "metrics.json").is_file():
            events.message(f"{label}: trained model found in {weights}; evaluating it")
            metrics = _read_json(weights / "metrics.json") or {}
        else:
            events.message(f"{label} ({plan.method}; {plan.params}): unlearning into {weights}")
            metrics = unlearn(plan.unlearn, events)
            write_json(marker, {"unlearn": plan.request["unlearn"]})
        unlearn_summary = _unlearn_summary(metrics)
    events.message(f"{label}: evaluating ({', '.join(plan.eval.suites)})")
    report = run_eval(plan.eval, events, thresholds, robustness)
    return {"name": plan.name, "method": plan.method, "params": plan.params, "request": plan.request,
            "unlearn": unlearn_summary, "eval": report}


def run_compare(config: CompareConfig, out_dir: Path, runs_dir: Path | None = None,
                events: Events | None = None, run_pending: bool = True) -> dict:
    """Evaluate the original, train and evaluate every run (skipping finished ones), and write the
    comparison table, CSV, JSON and trade-off plot to ``out_dir``. Returns the comparison JSON.
    With ``run_pending=False`` nothing is trained or evaluated: the outputs are rewritten from
    the runs already finished."""
    events = events or Events()
    out_dir = Path(out_dir)
    runs_dir = Path(runs_dir) if runs_dir is not None else out_dir / "runs"
    plans = make_plans(config, runs_dir)
    check_inputs(plans[0].eval)  # missing evaluation data fails before any training
    results: dict[str, dict] = {}
    for index, plan in enumerate(plans):
        path = out_dir / "evals" / f"{plan.name}.json"
        previous = _read_json(path)
        if previous is not None and same_request(previous.get("request"), plan.request):
            events.message(f"skip {plan.name} (done)")
            results[plan.name] = previous
            continue
        if not run_pending:
            events.message(f"pending {plan.name} (not run: --table-only)")
            continue
        results[plan.name] = _run_one(plan, index, len(plans) - 1, runs_dir, events,
                                      _thresholds(results.get(ORIGINAL)), _robustness(results.get(ORIGINAL)))
        write_json(path, results[plan.name])
        if index < len(plans) - 1:
            # The table so far after every run: a long comparison shows its finished rows early.
            write_outputs(config, plans, results, out_dir, runs_dir)
    comparison = write_outputs(config, plans, results, out_dir, runs_dir)
    if comparison["rows"]:
        events.message(f"comparison written to {out_dir} (comparison.md, comparison.csv, tradeoff.png)")
    return comparison


def _el_key(plan: RunPlan) -> str:
    # Without greedy EL (cheaper on CPU) the table shows the UNDIAL-code (sampled) EL instead.
    return f"el_{plan.eval.el_n[0]}" + ("" if plan.eval.greedy_el else "_undial_code")


def write_outputs(config: CompareConfig, plans: list[RunPlan], results: dict[str, dict], out_dir: Path,
                  runs_dir: Path) -> dict:
    """comparison.json/csv/md and the trade-off plot from the finished runs; pending runs are named."""
    el_key = _el_key(plans[0])
    comparison = {
        "model": config.model,
        "forget": data_relative(config.shared["forget"]),
        "config": config.source,
        "setting": plans[0].eval.setting,
        "pending": [plan.name for plan in plans if plan.name not in results],
        "rows": [],
    }
    if plans[0].name not in results:  # every row is read against the original
        return comparison
    finished = [Finished(p.name, p.group or p.name, p.method, p.params, p.seed, results[p.name])
                for p in plans if p.name in results]
    comparison.update(build(finished, el_key, config.baseline))
    # The base model's weights, device and versions, as its evaluation recorded them.
    comparison["environment"] = finished[0].result["eval"].get("environment")
    write_json(out_dir / "comparison.json", comparison)
    write_atomic(out_dir / "comparison.csv", csv_text(_flat_rows(comparison["rows"])))
    write_atomic(out_dir / "comparison.md", comparison_markdown(comparison, el_key))
    write_atomic(out_dir / "tradeoff.png", tradeoff_plot(comparison["groups"], ORIGINAL, comparison["curves"]))
    level = comparison["thresholds"].get("ma")
    keys = ["group", "method", "forget_ma", "forget_ma_ci95"] + [k for key, _ in UTILITY_PANELS for k in (key, f"{key}_ci95")] \
        + ["reference_ma", "unseen_ma_at_level"]
    data = [{**{k: g.get(k) for k in keys}, "is_original": g["group"] == ORIGINAL, "forgotten_level_ma": level}
            for g in comparison["groups"]]
    write_atomic(out_dir / "tradeoff.csv", csv_text(_flat_rows(data)))
    return comparison


def _flat_rows(rows: list[dict]) -> list[dict]:
    """CSV cells: intervals as two columns (low, high), verdicts as their words."""
    flat = []
    for row in rows:
        out: dict = {}
        for key, value in row.items():
            if key.endswith("_ci95"):
                low, high = value if value else (None, None)
                out[f"{key.removesuffix('_ci95')}_low"], out[f"{key.removesuffix('_ci95')}_high"] = low, high
            elif isinstance(value, dict):
                out.update({f"{key}_{k}": v for k, v in value.items()})
            elif isinstance(value, list):
                out[key] = " ".join(str(v) for v in value)
            else:
                out[key] = value
        flat.append(out)
    return flat
