"""`unmemorize compare`: several unlearning runs of one model on one forget set, each evaluated
with the same suites, side by side with the original model.

The YAML file:

    model: gemma-3-270m
    forget: ${UNMEMORIZE_DATA:-../shared/data}/extraction/forget_sets/lm_extraction_32_0.csv
    retain: retain.txt            # optional, for every run (gd and kl need it)
    lr: 2e-3                      # any `unlearn` option, shared by every run
    stop_ma: auto
    eval:                         # EvalConfig fields; quick: true applies the quick setting
      quick: true
      suites: [memorization, nlu, nlg]
    runs:
      - {name: di-g10, method: di, strength: 10}
      - {name: ga, method: ga, lr: 2e-4}      # a run's own keys override the shared ones

Keys are the long option names of `unmemorize unlearn` (``strength``, ``alpha``, ``dpd-lambda``,
dashes or underscores). ``${VAR}`` and ``${VAR:-default}`` in values are replaced from the
environment; relative paths are relative to the working directory. Evaluation takes
``max_length``, ``limit``, ``el_n``, ``el_stride`` and ``seed`` from the shared settings unless
``eval:`` sets them; keys given under ``eval:`` win over ``quick``.

What happens: the original model is evaluated once (row ``original``), then each run is trained
with `unlearn` (weights under ``--runs-dir``) and evaluated with `run_eval`, perplexity of
generations judged by the original model for every row. Each finished run leaves
``OUT/evals/NAME.json`` with the request it answers; re-running skips a run whose request is
unchanged ("skip NAME (done)") and redoes one whose settings changed. A run trained but not yet
evaluated keeps its weights (``RUNS/NAME`` and ``RUNS/NAME.request.json``) and is only evaluated.
Results: ``comparison.md``, ``comparison.csv``, ``comparison.json`` (one row per model) and the
trade-off plot ``tradeoff.png`` with its data in ``tradeoff.csv``. The results folder holds only
small files; model weights stay under ``--runs-dir``."""

from __future__ import annotations

import copy
import csv
import io
import json
import math
import os
import re
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import yaml

from .errors import UserError
from .evaluate import EvalConfig, EvalReporter, check_inputs, flatten, quick_settings, run_eval, write_json
from .methods import METHODS
from .paths import write_atomic
from .report import metric_label
from .train import OPTION_NAMES, Reporter, UnlearnConfig, build_method, unlearn

ORIGINAL = "original"
# Option names of `unlearn` whose config field is named otherwise.
ALIASES = {option: field for field, option in OPTION_NAMES.items()}
# Set by compare itself for every run.
RUN_MANAGED = {"out", "overwrite", "resume", "checkpoint_dir"}
# Evaluation settings taken from the shared unlearn settings unless eval: sets them.
EVAL_FROM_SHARED = ("max_length", "limit", "el_n", "el_stride", "seed", "allow_pickle", "trust_remote_code")
EVAL_MANAGED = {"model", "original", "judge", "forget"}
_ENV = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^{}]*))?\}")
_RUN_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


@dataclass
class RunSpec:
    name: str
    method: str
    overrides: dict[str, Any]  # UnlearnConfig fields this run sets


@dataclass
class CompareConfig:
    """A parsed comparison file: shared unlearn settings, evaluation settings, runs."""

    shared: dict[str, Any]  # UnlearnConfig fields (model and forget included)
    eval: dict[str, Any]  # EvalConfig fields given explicitly
    quick: bool
    runs: list[RunSpec]
    source: str = ""

    @property
    def model(self) -> str:
        return self.shared.get("model", UnlearnConfig.__dataclass_fields__["model"].default)


@dataclass
class RunPlan:
    """Everything one row needs, resolved before any work starts."""

    name: str
    method: str
    unlearn: UnlearnConfig | None  # None for the original
    eval: EvalConfig
    request: dict  # what the row's results answer; a different request reruns the row
    params: str = ""  # the key hyper-parameters, for the table


class CompareReporter:
    """What compare tells the user; the CLI supplies a rich one."""

    def message(self, text: str) -> None:
        pass

    def training(self) -> Reporter:
        return Reporter()

    def evaluation(self) -> EvalReporter:
        return EvalReporter()


# --- the configuration file --------------------------------------------------------------------


def expand_env(value: Any, source: str = "") -> Any:
    """``${VAR}`` and ``${VAR:-default}`` replaced in every string of ``value`` (nested defaults
    work: the innermost reference is replaced first)."""
    if isinstance(value, dict):
        return {k: expand_env(v, source) for k, v in value.items()}
    if isinstance(value, list):
        return [expand_env(v, source) for v in value]
    if not isinstance(value, str):
        return value

    def replace(match: re.Match) -> str:
        name, default = match.group(1), match.group(2)
        if os.environ.get(name):
            return os.environ[name]
        if default is not None:
            return default
        raise UserError(f"environment variable {name} is not set (used in {source or 'the config'}); "
                        f"set it or write ${{{name}:-default}}")

    while True:
        expanded = _ENV.sub(replace, value)
        if expanded == value:
            return expanded
        value = expanded


def _coerce(kind: str, value: Any, key: str, where: str) -> Any:
    """A YAML value as the config field's type (YAML reads 2e-3 as a string, for one)."""
    if value is None:
        return None
    base = kind.replace(" | None", "")

    def number(v: Any, integer: bool) -> float | int:
        if isinstance(v, bool):
            raise ValueError
        x = float(v)
        if integer:
            if not x.is_integer():
                raise ValueError
            return int(x)
        return x

    def as_list(v: Any) -> list:
        return [s.strip() for s in v.split(",") if s.strip()] if isinstance(v, str) else list(v) if isinstance(v, (list, tuple)) else [v]

    try:
        if base == "float":
            return number(value, False)
        if base == "int":
            return number(value, True)
        if base == "bool":
            if not isinstance(value, bool):
                raise ValueError
            return value
        if base == "list[int]":
            return [number(v, True) for v in as_list(value)]
        if base == "list[str]":
            return [str(v) for v in as_list(value)]
        if base == "float | str":  # a number or a word such as "auto"
            try:
                return number(value, False)
            except ValueError:
                return str(value)
        return str(value)
    except (TypeError, ValueError):
        raise UserError(f"{key!r} in {where} must be of type {kind}, not {value!r}") from None


def _key_name(key: Any) -> str:
    """A YAML key as written (``--max-length``, ``max-length``, ``max_length``) as a field name."""
    return str(key).lstrip("-").replace("-", "_")


def _field_name(key: Any) -> str:
    name = _key_name(key)
    return ALIASES.get(name, name)


def _unlearn_keys(mapping: dict, where: str) -> dict[str, Any]:
    known = {f.name: f.type for f in fields(UnlearnConfig) if f.name not in RUN_MANAGED}
    out = {}
    for key, value in mapping.items():
        name = _field_name(key)
        if name not in known:
            raise UserError(f"unknown key {key!r} in {where}; keys are the long option names of `unmemorize unlearn`")
        out[name] = _coerce(known[name], value, str(key), where)
    return out


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
    shared = _unlearn_keys({k: v for k, v in data.items() if k not in ("runs", "eval")}, source)
    if "forget" not in shared:
        raise UserError(f"{source} needs `forget`: the texts to forget")
    eval_fields = {f.name: f.type for f in fields(EvalConfig) if f.name not in EVAL_MANAGED}
    explicit_eval, quick = {}, False
    for key, value in eval_data.items():
        name = _key_name(key)
        if name == "quick":
            quick = _coerce("bool", value, "quick", f"eval: of {source}")
        elif name in eval_fields:
            explicit_eval[name] = _coerce(eval_fields[name], value, str(key), f"eval: of {source}")
        else:
            raise UserError(f"unknown key {key!r} under eval: in {source}; keys are EvalConfig fields "
                            f"({', '.join(sorted(eval_fields))}) or quick")
    runs, seen = [], set()
    for index, run in enumerate(runs_data, 1):
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
        overrides = _unlearn_keys({k: v for k, v in run.items() if k != "name"}, f"run {name!r} of {source}")
        runs.append(RunSpec(name=name, method=str(overrides["method"]), overrides=overrides))
    return CompareConfig(shared=shared, eval=explicit_eval, quick=quick, runs=runs, source=source)


def load_config(path: Path) -> CompareConfig:
    try:
        data = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as error:
        raise UserError(f"cannot read comparison config {path}: {error}") from None
    return parse_config(data, str(path))


# --- plans ----------------------------------------------------------------------------------------


def _json_ready(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str))


def _eval_config(config: CompareConfig, model: str, judge: str | None) -> EvalConfig:
    shared = {k: config.shared[k] for k in EVAL_FROM_SHARED if k in config.shared}
    cfg = EvalConfig(model=model, forget=config.shared["forget"], judge=judge, **{**shared, **config.eval})
    if config.quick:
        quick_settings(cfg)
        for name, value in config.eval.items():  # explicit eval keys win over the quick setting
            setattr(cfg, name, value)
    return cfg


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
    parts.append(f"lr={cfg.lr:g}")
    parts.append(f"≤{cfg.max_steps} steps" if cfg.max_steps else f"≤{cfg.epochs} ep")
    if cfg.retain:
        parts.append(f"retain×{cfg.retain_weight:g}")
    return ", ".join(parts)


def make_plans(config: CompareConfig, runs_dir: Path) -> list[RunPlan]:
    """Resolve and check every row before anything runs: a typo in the last run fails now, not
    after an hour of training."""
    original_eval = _eval_config(config, config.model, None)
    original_eval.validate()
    if "memorization" not in original_eval.suites:
        raise UserError("compare needs the memorization suite: forget-set MA is the comparison's x axis")
    plans = [RunPlan(ORIGINAL, "-", None, original_eval,
                     request={"model": config.model, "eval": _json_ready(asdict(original_eval))})]
    for run in config.runs:
        cfg = UnlearnConfig(**{**config.shared, **run.overrides, "out": str(runs_dir / run.name), "overwrite": True})
        try:
            cfg.validate()
            # Unknown method, an option it does not take, gd without retain; fills in the
            # method's defaults, so `strength: 3` and no strength are the same request for di.
            build_method(cfg)
        except UserError as error:
            raise UserError(f"run {run.name!r}: {error}") from None
        run_eval_cfg = _eval_config(config, str(runs_dir / run.name), judge=config.model)
        request = {
            "unlearn": _json_ready({k: v for k, v in asdict(cfg).items() if k not in RUN_MANAGED}),
            "eval": _json_ready({k: v for k, v in asdict(run_eval_cfg).items() if k != "model"}),
        }
        plans.append(RunPlan(run.name, run.method, cfg, run_eval_cfg, request, _hyper_parameters(cfg)))
    return plans


# --- running ------------------------------------------------------------------------------------


def _read_json(path: Path) -> dict | None:
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


def _run_one(plan: RunPlan, index: int, total: int, runs_dir: Path, reporter: CompareReporter) -> dict:
    label = plan.name if plan.unlearn is None else f"[{index}/{total}] {plan.name}"
    unlearn_summary = None
    if plan.unlearn is not None:
        weights = Path(plan.unlearn.out)
        marker = runs_dir / f"{plan.name}.request.json"
        done = _read_json(marker)
        if done is not None and done.get("unlearn") == plan.request["unlearn"] and (weights / "metrics.json").is_file():
            reporter.message(f"{label}: trained model found in {weights}; evaluating it")
            metrics = _read_json(weights / "metrics.json") or {}
        else:
            reporter.message(f"{label} ({plan.method}; {plan.params}): unlearning into {weights}")
            metrics = unlearn(copy.deepcopy(plan.unlearn), reporter.training())
            write_json({"unlearn": plan.request["unlearn"]}, marker)
        unlearn_summary = _unlearn_summary(metrics)
    reporter.message(f"{label}: evaluating ({', '.join(plan.eval.suites)})")
    report = run_eval(copy.deepcopy(plan.eval), reporter.evaluation())
    return {"name": plan.name, "method": plan.method, "params": plan.params, "request": plan.request,
            "unlearn": unlearn_summary, "eval": report}


def _row(plan: RunPlan, result: dict, el_key: str) -> dict:
    results = result["eval"]["results"]
    flat = flatten(next(iter(results.values())))
    summary = result.get("unlearn") or {}

    def value(key: str) -> float | None:
        number = flat.get(key)
        return None if number is None or (isinstance(number, float) and math.isnan(number)) else number

    return {
        "run": plan.name,
        "method": plan.method,
        "params": plan.params,
        "forget_ma": value("memorization.forget.ma"),
        f"forget_{el_key}": value(f"memorization.forget.{el_key}"),
        "reference_ma": value("memorization.reference.ma"),
        "extractable": value("memorization.extraction.fraction_extractable"),
        "mia_loss_auc": value("memorization.mia.loss.auc"),
        "nlu_avg": value("nlu.paper_avg.acc"),
        "mauve": value("nlg.mauve"),
        "heldout_ppl": value("nlg.heldout_ppl"),
        "gen_ppl": value("nlg.gen_ppl"),
        "steps": summary.get("steps"),
        "stopped_because": summary.get("stopped_because"),
        "train_s": summary.get("wall_time_s"),
        "eval_s": result["eval"].get("wall_time_s"),
    }


def run_compare(config: CompareConfig, out_dir: Path, runs_dir: Path | None = None,
                reporter: CompareReporter | None = None, run_pending: bool = True) -> dict:
    """Evaluate the original, train and evaluate every run (skipping finished ones), and write the
    comparison table, CSV, JSON and trade-off plot to ``out_dir``. Returns the comparison JSON.
    With ``run_pending=False`` nothing is trained or evaluated: the outputs are rewritten from
    the runs already finished."""
    reporter = reporter or CompareReporter()
    out_dir = Path(out_dir)
    runs_dir = Path(runs_dir) if runs_dir is not None else out_dir / "runs"
    plans = make_plans(config, runs_dir)
    check_inputs(plans[0].eval)  # missing evaluation data fails before any training
    evals_dir = out_dir / "evals"
    results: dict[str, dict] = {}
    for index, plan in enumerate(plans):
        path = evals_dir / f"{plan.name}.json"
        previous = _read_json(path)
        if previous is not None and previous.get("request") == plan.request:
            reporter.message(f"skip {plan.name} (done)")
            results[plan.name] = previous
            continue
        if not run_pending:
            reporter.message(f"pending {plan.name} (not run: --table-only)")
            continue
        results[plan.name] = _run_one(plan, index, len(plans) - 1, runs_dir, reporter)
        write_json(results[plan.name], path)
        if index < len(plans) - 1:
            # The table so far after every run: a long comparison shows its finished rows early.
            _write_outputs(config, plans, results, out_dir, runs_dir)
    comparison = _write_outputs(config, plans, results, out_dir, runs_dir)
    if comparison["rows"]:
        reporter.message(f"comparison written to {out_dir} (comparison.md, comparison.csv, tradeoff.png)")
    return comparison


def _write_outputs(config: CompareConfig, plans: list[RunPlan], results: dict[str, dict], out_dir: Path,
                   runs_dir: Path) -> dict:
    """comparison.json/csv/md and the trade-off plot from the finished runs; pending runs are named."""
    # Without greedy EL (cheaper on CPU) the table shows the paper-code (sampled) EL instead.
    el_key = f"el_{plans[0].eval.el_n[0]}" + ("" if plans[0].eval.greedy_el else "_paper_code")
    rows = [_row(plan, results[plan.name], el_key) for plan in plans if plan.name in results]
    comparison = {
        "model": config.model,
        "forget": config.shared["forget"],
        "config": config.source,
        "runs_dir": str(runs_dir),
        "forgotten_level_ma": rows[0]["reference_ma"] if rows and plans[0].name in results else None,
        "rows": rows,
        "pending": [plan.name for plan in plans if plan.name not in results],
    }
    if not rows:
        return comparison
    write_json(comparison, out_dir / "comparison.json")
    write_atomic(out_dir / "comparison.csv", _csv(rows))
    write_atomic(out_dir / "comparison.md", _markdown(comparison, el_key))
    _write_tradeoff(rows, out_dir)
    return comparison


# --- outputs ------------------------------------------------------------------------------------


def _csv(rows: list[dict]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: "" if v is None else v for k, v in row.items()})
    return buffer.getvalue()


def _cell(value: Any, digits: int = 3) -> str:
    if value is None:
        return "–"
    if isinstance(value, bool) or isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value).replace("|", "\\|")


# (row key, header, decimals)
_COLUMNS = [
    ("run", "run", 0), ("method", "method", 0), ("params", "settings", 0),
    ("forget_ma", "forget MA ↓", 3), ("forget_EL", "forget EL ↓", 3), ("reference_ma", "unseen MA", 3),
    ("extractable", "extractable ↓", 3), ("mia_loss_auc", "MIA loss AUC →0.5", 3),
    ("nlu_avg", "NLU avg ↑", 3), ("mauve", "MAUVE ↑", 3), ("heldout_ppl", "held-out ppl ↓", 2),
    ("gen_ppl", "gen ppl", 2), ("steps", "steps", 0), ("stopped_because", "stopped", 0),
    ("train_s", "train s", 0), ("eval_s", "eval s", 0),
]


# Short forms of why training stopped, for the table (the JSON keeps the full text).
_STOPPED = {
    "memorization below --stop-ma/--stop-el": "reached level",
    "epochs": "epoch budget",
    "max steps": "step budget",
    "inference-time method (no training)": "no training",
}


def _markdown(comparison: dict, el_key: str) -> str:
    rows = comparison["rows"]
    el_label = metric_label(el_key.removesuffix("_paper_code"))
    el_label += " (paper code)" if el_key.endswith("_paper_code") else ""
    columns = [(f"forget_{el_key}", f"forget {el_label} ↓", d) if key == "forget_EL"
               else (key, header, d) for key, header, d in _COLUMNS]
    lines = [
        f"# Unlearning comparison: {comparison['model']}",
        "",
        f"Forget set: `{Path(str(comparison['forget'])).name}`. Every row is evaluated with the same suites; "
        "perplexity of generations is judged by the original model.",
        "",
        "| " + " | ".join(header for _, header, _ in columns) + " |",
        "|" + "|".join("---" if d == 0 and key in ("run", "method", "params", "stopped_because") else "---:"
                       for key, _, d in columns) + "|",
    ]
    for row in rows:
        row = {**row, "stopped_because": _STOPPED.get(row["stopped_because"], row["stopped_because"])}
        lines.append("| " + " | ".join(
            _cell(round(row[key]) if d == 0 and isinstance(row.get(key), float) else row.get(key), d)
            for key, _, d in columns) + " |")
    level = comparison.get("forgotten_level_ma")
    lines += [
        "",
        f"The original model's MA on unseen text is {_cell(level)}: Jang et al.'s \"forgotten\" level "
        "(forget MA at or below it; \"reached level\": training stopped there). ↓/↑: lower/higher is "
        "better; MIA AUC near 0.5 means membership no longer shows. Plot: `tradeoff.png` (data in "
        "`tradeoff.csv`).",
        "",
    ]
    if comparison.get("pending"):
        lines += [f"Not run yet: {', '.join(comparison['pending'])}.", ""]
    return "\n".join(lines)


# y panels of the trade-off plot, in order of preference: (row key, axis label)
_UTILITY_PANELS = [
    ("nlu_avg", "NLU average accuracy (↑)"),
    ("heldout_ppl", "held-out perplexity (↓)"),
    ("mauve", "MAUVE (↑)"),
]
_FALLBACK_PANEL = ("reference_ma", "MA on unseen text (↑, utility proxy)")


def _label_offsets(points: list[tuple[float, float]]) -> list[tuple[tuple[int, int], str]]:
    """A label position beside each marker, chosen greedily away from the other markers and labels.

    matplotlib has no label placement of its own; with a few runs landing close together, fixed
    offsets overlapped. Distances are taken on the axes scaled to [0, 1] (a panel is about 440 × 340
    points, so one point of offset is about 1/400 of an axis).
    """
    candidates = [((6, 5), "left"), ((6, -11), "left"), ((-6, 5), "right"), ((-6, -11), "right"),
                  ((0, 9), "center"), ((0, -15), "center")]
    if not points:
        return []
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    span_x, span_y = (max(xs) - min(xs)) or 1.0, (max(ys) - min(ys)) or 1.0
    scaled = [((x - min(xs)) / span_x, (y - min(ys)) / span_y) for x, y in points]
    label_width = 0.12  # a run name of ~10 characters at font size 8, in axis units

    def anchor(point, candidate):
        (dx, dy), align = candidate
        shift = {"left": label_width / 2, "right": -label_width / 2, "center": 0.0}[align]
        return point[0] + dx / 440 + shift, point[1] + dy / 340

    placed: list[tuple[float, float]] = []
    chosen = []
    for index, point in enumerate(scaled):
        others = [p for j, p in enumerate(scaled) if j != index] + placed

        def clearance(candidate):
            ax_, ay_ = anchor(point, candidate)
            return min((abs(ax_ - ox) / label_width + abs(ay_ - oy) / 0.05 for ox, oy in others), default=1.0)

        best = max(candidates, key=clearance)  # ties keep the first: right and above
        placed.append(anchor(point, best))
        chosen.append(best)
    return chosen


def _write_tradeoff(rows: list[dict], out_dir: Path) -> None:
    """tradeoff.png: forget MA against utility, one labelled marker per row; tradeoff.csv: its data."""
    from matplotlib.figure import Figure  # no pyplot: no global state, no display backend

    panels = [p for p in _UTILITY_PANELS if any(r[p[0]] is not None for r in rows)]
    if "nlu_avg" in [p[0] for p in panels] and len(panels) > 2:
        panels = panels[:2]  # NLU and one generation-side measure
    panels = panels or [_FALLBACK_PANEL]
    level = rows[0]["reference_ma"]
    methods = sorted({r["method"] for r in rows[1:]})
    colors = {m: f"C{i % 10}" for i, m in enumerate(methods)}
    figure = Figure(figsize=(6.2 * len(panels), 4.8), layout="constrained")
    axes = figure.subplots(1, len(panels), squeeze=False)[0]
    legend: dict = {}
    for ax, (key, label) in zip(axes, panels):
        points = [(row["run"], row["method"], row["forget_ma"], row[key]) for row in rows
                  if row["forget_ma"] is not None and row[key] is not None]
        for run, method, x, y in points:
            if run == ORIGINAL:
                legend["original"] = ax.scatter([x], [y], marker="*", s=260, color="black", zorder=4)
            else:
                legend[method] = ax.scatter([x], [y], marker="o", s=60, color=colors[method], zorder=3)
        for (run, _, x, y), (offset, align) in zip(points, _label_offsets([(p[2], p[3]) for p in points])):
            ax.annotate(run, (x, y), textcoords="offset points", xytext=offset, ha=align, fontsize=8)
        if level is not None:
            legend["unseen-text MA (forgotten level)"] = ax.axvline(level, linestyle="--", color="gray", linewidth=1)
        ax.margins(x=0.15, y=0.12)  # room for the labels at the edges
        ax.set_xlabel("forget-set MA (memorization, ↓)")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    # One legend below the panels, where it cannot cover a marker.
    figure.legend(legend.values(), legend.keys(), loc="outside lower center", ncol=len(legend), fontsize=8)
    figure.suptitle("Memorization vs utility")
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=120)
    write_atomic(out_dir / "tradeoff.png", buffer.getvalue())
    keys = ["run", "method", "forget_ma"] + [k for k, _ in _UTILITY_PANELS] + ["reference_ma"]
    data = [{**{k: r.get(k) for k in keys}, "is_original": r["run"] == ORIGINAL, "forgotten_level_ma": level}
            for r in rows]
    write_atomic(out_dir / "tradeoff.csv", _csv(data))
