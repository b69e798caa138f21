"""`unmemorize compare` on tiny models: the table, CSV, JSON and plot it writes, skipping finished
runs, rerunning changed ones, and the errors of a bad comparison file."""

from __future__ import annotations

import csv
import hashlib
import json
import math

import pytest
import yaml

import unmemorize.recipes.compare as compare
from unmemorize.events import Events
from unmemorize.reporting.formatting import md_text
from unmemorize.reporting.plots import label_offsets
from unmemorize.reporting.verdict import comparison_verdict
from unmemorize.config import expand_env
from unmemorize.recipes.compare import load_config, make_plans, parse_config

from conftest import exit_code, naive_ma

PNG = b"\x89PNG\r\n\x1a\n"
TEXTS = [
    "Alice Johnson lives at 42 Baker Street in London.",
    "Contact mary.jones@example.com for the account.",
    "In 1999 the company Acme Corp opened an office.",
    "The quick brown fox jumps over the lazy dog.",
]


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture
def setting(tiny_models, tmp_path):
    """A comparison file for two tiny runs and an inference-time one, on a tiny model."""
    forget = write_jsonl(tmp_path / "forget.jsonl", [{"text": t} for t in TEXTS])
    reference = tmp_path / "unseen.txt"
    reference.write_text("Some other sentence about the weather today.\nA second unseen line of text here.\n")
    nlu = tmp_path / "nlu"
    nlu.mkdir()
    write_jsonl(nlu / "copa.jsonl", [
        {"query": "The man turned on the faucet, therefore", "choices": ["water flowed.", "the dog slept."], "gold": 0},
        {"query": "Bob smiled, therefore", "choices": ["Alice smiled back.", "the sky fell."], "gold": 1},
    ])
    write_jsonl(nlu / "piqa.jsonl", [
        {"query": "Question: How do I open a door?\n", "choices": ["Turn the handle.", "Eat the key."], "gold": 0},
    ])
    config = {
        "model": str(tiny_models["llama"]), "forget": str(forget), "reference": str(reference),
        "lr": "1e-2", "batch-size": 2, "max_steps": 2, "el-n": [2], "el_stride": 4, "stop_ma": "auto",
        "eval": {"quick": True, "suites": "memorization,nlu", "nlu_tasks": ["copa", "piqa"],
                 "nlu_dir": str(nlu), "reference": str(reference), "undial_el": False, "greedy_el": True},
        "runs": [
            {"name": "di-g10", "method": "di", "strength": 10},
            {"name": "ga", "method": "ga", "lr": 1e-3, "lora": False},
            {"name": "dpd", "method": "dpd", "dpd-lambda": 0.5},
        ],
    }
    path = tmp_path / "compare.yaml"
    path.write_text(yaml.safe_dump(config))
    return path, config


def test_compare_writes_results_and_skips_finished_runs(setting, tiny_models, tmp_path, monkeypatch, capsys):
    path, config = setting
    out, runs = tmp_path / "results", tmp_path / "weights"
    calls = []
    real_unlearn = compare.unlearn

    def counting_unlearn(cfg, reporter=None):
        calls.append(cfg.method)
        return real_unlearn(cfg, reporter)

    monkeypatch.setattr(compare, "unlearn", counting_unlearn)
    assert exit_code(["compare", "--config", str(path), "--out", str(out), "--runs-dir", str(runs)]) == 0
    assert calls == ["di", "ga", "dpd"]
    comparison = json.loads((out / "comparison.json").read_text())
    rows = {r["run"]: r for r in comparison["rows"]}
    assert list(rows) == ["original", "di-g10", "ga", "dpd"]
    # The table's numbers are the models' own: MA recomputed one sequence at a time from the
    # saved weights, the NLU average as the mean of the two tasks' headline metrics.
    for name, weights in (("original", tiny_models["llama"]), ("ga", runs / "ga"), ("di-g10", runs / "di-g10")):
        assert rows[name]["forget_ma"] == pytest.approx(naive_ma(weights, TEXTS))
        nlu = json.loads((out / "evals" / f"{name}.json").read_text())["eval"]["results"]
        nlu = next(iter(nlu.values()))["nlu"]
        assert rows[name]["nlu_avg"] == pytest.approx((nlu["copa"]["acc"] + nlu["piqa"]["acc_norm"]) / 2)
    assert rows["original"]["steps"] is None and rows["ga"]["steps"] >= 1 and rows["dpd"]["steps"] == 0
    assert rows["di-g10"]["params"].startswith("γ=10, LoRA, lr=0.01") and "full" in rows["ga"]["params"]
    assert rows["dpd"]["params"] == "λ=0.5"
    assert comparison["thresholds"]["ma"] == rows["original"]["reference_ma"]
    with (out / "comparison.csv").open() as handle:
        table = list(csv.DictReader(handle))
    assert [r["run"] for r in table] == list(rows) and "forget_el_2" in table[0]
    markdown = (out / "comparison.md").read_text()
    assert all(f"| {name} |" in markdown for name in rows) and "forget EL-2" in markdown
    png = (out / "tradeoff.png").read_bytes()
    assert png.startswith(PNG) and len(png) > 1000
    with (out / "tradeoff.csv").open() as handle:
        plotted = list(csv.DictReader(handle))
    assert [r["is_original"] for r in plotted] == ["True", "False", "False", "False"]
    for name in rows:
        assert json.loads((out / "evals" / f"{name}.json").read_text())["request"]
    # Weights live under --runs-dir; the results folder holds small files only.
    assert (runs / "ga" / "model.safetensors").is_file() and (runs / "dpd" / "dpd.json").is_file()
    assert not list(out.rglob("*.safetensors"))
    # The tiny forget texts never reach the results.
    for file in out.rglob("*"):
        if file.is_file():
            assert TEXTS[0].encode() not in file.read_bytes(), file

    # The base weights, as the original's evaluation recorded them; the verdict ends the output
    # and opens the report.
    digest = hashlib.sha256((tiny_models["llama"] / "model.safetensors").read_bytes()).hexdigest()
    assert comparison["environment"]["weights_sha256"] == {"model": {"model.safetensors": digest}}
    verdict = comparison_verdict(comparison)
    assert capsys.readouterr().out.rstrip().splitlines()[-1] == verdict["line"]
    assert (out / "report.md").read_text().splitlines()[2] == f"**{md_text(verdict['line'])}**"

    assert exit_code(["compare", "--config", str(path), "--out", str(out), "--runs-dir", str(runs)]) == 0
    shown = capsys.readouterr().err
    assert all(f"skip {name} (done)" in shown for name in rows) and calls == ["di", "ga", "dpd"]

    config["runs"][1]["lr"] = 2e-3  # a changed run is redone, and only that one
    path.write_text(yaml.safe_dump(config))
    assert exit_code(["compare", "--config", str(path), "--out", str(out), "--runs-dir", str(runs)]) == 0
    assert calls == ["di", "ga", "dpd", "ga"]
    assert "skip di-g10 (done)" in capsys.readouterr().err


def test_a_run_trained_but_not_evaluated_is_only_evaluated(setting, tmp_path, monkeypatch):
    path, config = setting
    config["runs"] = config["runs"][:1]
    config["eval"]["suites"] = ["memorization"]
    path.write_text(yaml.safe_dump(config))
    real_eval = compare.run_eval

    def eval_fails_on_runs(cfg, reporter=None, thresholds=None, robustness=None):
        if cfg.judge is not None:  # a run's evaluation (the original has no separate judge)
            raise KeyboardInterrupt
        return real_eval(cfg, reporter, thresholds, robustness)

    monkeypatch.setattr(compare, "run_eval", eval_fails_on_runs)
    out, runs = tmp_path / "results", tmp_path / "weights"
    with pytest.raises(KeyboardInterrupt):
        compare.run_compare(load_config(path), out, runs)
    assert (runs / "di-g10" / "model.safetensors").is_file() and not (out / "evals" / "di-g10.json").exists()
    monkeypatch.setattr(compare, "run_eval", real_eval)
    monkeypatch.setattr(compare, "unlearn", lambda *a, **k: pytest.fail("trained again"))
    messages = []

    class Collect(Events):
        def message(self, text):
            messages.append(text)

    result = compare.run_compare(load_config(path), out, runs, Collect())
    assert any("skip original (done)" in m for m in messages)
    assert any("trained model found" in m for m in messages)
    assert [r["run"] for r in result["rows"]] == ["original", "di-g10"]
    # Memorization only: the plot falls back to MA on unseen text as its utility axis.
    assert (out / "tradeoff.png").read_bytes().startswith(PNG)


def base_config(**extra):
    return {"model": "m", "forget": "f.txt", "runs": [{"name": "a", "method": "di"}], **extra}


@pytest.mark.parametrize("change,message", [
    (lambda c: c.pop("runs"), "has no runs"),
    (lambda c: c.update(runs=[]), "has no runs"),
    (lambda c: c.update(runs=[{"name": "a", "method": "di"}, {"name": "a", "method": "ga"}]), "duplicate run name 'a'"),
    (lambda c: c.update(runs=[{"name": "original", "method": "di"}]), "row of the original model"),
    (lambda c: c.update(runs=[{"name": "x y", "method": "di"}]), "needs a `name`"),
    (lambda c: c.update(runs=[{"name": "a"}]), "needs a `method`"),
    (lambda c: c.update(runs=[{"name": "a", "method": "di", "strenght": 3}]), "unknown key 'strenght' in run 'a'"),
    (lambda c: c.update(lr="fast"), "--lr takes a number, not 'fast' \\(in the config\\)"),
    (lambda c: c.update(eval={"suits": ["nlu"]}), "unknown key 'suits' in eval: of the config"),
    (lambda c: c.pop("forget"), "needs `forget`"),
    (lambda c: c.update(seeds=[1, 1]), "`seeds` in the config must be a list of distinct integers"),
    (lambda c: c.update(seeds=3), "`seeds` in the config must be a list"),
    (lambda c: c.update(baseline="zz"), "`baseline` in the config must name one of the runs"),
    (lambda c: c.update(eval={"quick": True, "setting": "standard"}), "sets both quick and setting"),
    (lambda c: c.update(forget="${UNMEMORIZE_TEST_UNSET_VAR}/f.txt"), "UNMEMORIZE_TEST_UNSET_VAR is not set"),
])
def test_bad_comparison_files(change, message):
    config = base_config()
    change(config)
    with pytest.raises(compare.UserError, match=message):
        parse_config(config, "the config")


@pytest.mark.parametrize("run,message", [
    ({"name": "u", "method": "unlearn-harder"}, "run 'u': unknown method 'unlearn-harder'"),
    ({"name": "g", "method": "gd"}, "run 'g': --method gd needs --retain FILE"),
    ({"name": "s", "method": "ga", "strength": 3}, "run 's': --strength does not apply to --method ga"),
])
def test_runs_are_checked_before_anything_runs(tmp_path, run, message):
    config = parse_config(base_config(runs=[{"name": "ok", "method": "di"}, run]))
    with pytest.raises(compare.UserError, match=message):
        make_plans(config, tmp_path)


def test_an_unknown_evaluation_setting_fails_before_anything_runs(tmp_path):
    config = parse_config(base_config(eval={"setting": "thorough"}))
    with pytest.raises(compare.UserError, match="thorough"):
        make_plans(config, tmp_path)


def test_compare_cli_errors_are_one_line(tmp_path, capsys):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(base_config(runs=[{"name": "a", "method": "nope"}])))
    assert exit_code(["compare", "--config", str(path), "--out", str(tmp_path / "o")]) == 2
    stderr = capsys.readouterr().err.strip()
    assert "unknown method 'nope'" in stderr and len(stderr.splitlines()) == 1
    assert not (tmp_path / "o").exists()


def test_environment_variables_with_nested_defaults(monkeypatch):
    monkeypatch.setenv("UNMEMORIZE_TEST_DATA", "/data")
    monkeypatch.delenv("UNMEMORIZE_TEST_FORGET", raising=False)
    value = "${UNMEMORIZE_TEST_FORGET:-${UNMEMORIZE_TEST_DATA:-../shared/data}/forget.csv}"
    assert expand_env(value) == "/data/forget.csv"
    monkeypatch.setenv("UNMEMORIZE_TEST_FORGET", "/mine.csv")
    assert expand_env({"a": [value]}) == {"a": ["/mine.csv"]}
    monkeypatch.delenv("UNMEMORIZE_TEST_DATA")
    monkeypatch.delenv("UNMEMORIZE_TEST_FORGET")
    assert expand_env(value) == "../shared/data/forget.csv"


def test_yaml_values_take_the_option_types():
    config = parse_config(base_config(lr="2e-3", **{"stop-ma": "auto", "stop_el": "0.1", "el_n": 10,
                                                     "eval": {"quick": True, "nlu_limit": "20", "suites": "memorization"}}))
    assert config.shared["lr"] == 0.002 and config.shared["stop_ma"] == "auto" and config.shared["stop_el"] == 0.1
    assert config.shared["el_n"] == (10,) and config.eval == {"nlu_limit": 20, "suites": ("memorization",), "setting": "quick"}


def test_table_only_tabulates_finished_runs_and_names_the_pending(setting, tmp_path, monkeypatch, capsys):
    path, config = setting
    out, runs = tmp_path / "results", tmp_path / "weights"
    assert exit_code(["compare", "--config", str(path), "--out", str(out), "--table-only"]) == 2
    assert "no finished run" in capsys.readouterr().err
    all_runs = list(config["runs"])
    config["runs"] = all_runs[:1]  # finish the original and the first run only
    path.write_text(yaml.safe_dump(config))
    assert exit_code(["compare", "--config", str(path), "--out", str(out), "--runs-dir", str(runs)]) == 0
    config["runs"] = all_runs + [{"name": "ga-later", "method": "ga", "lr": 1e-3}]
    path.write_text(yaml.safe_dump(config))
    monkeypatch.setattr(compare, "unlearn", lambda *a, **k: pytest.fail("--table-only trained a run"))
    capsys.readouterr()
    assert exit_code(["compare", "--config", str(path), "--out", str(out), "--table-only"]) == 0
    shown = capsys.readouterr()
    comparison = json.loads((out / "comparison.json").read_text())
    assert [r["run"] for r in comparison["rows"]] == ["original", "di-g10"]
    assert comparison["pending"] == ["ga", "dpd", "ga-later"]
    assert "pending (not yet run): ga, dpd, ga-later" in shown.out
    assert "Not run yet: ga, dpd, ga-later." in (out / "comparison.md").read_text()


def test_trade_off_labels_move_apart_for_runs_that_land_together():
    # Two runs on the same spot get different label positions; a lone run keeps the default
    # (right of and above its marker).
    offsets = label_offsets([(0.40, 18.0), (0.40, 18.0), (0.55, 30.0)])
    assert offsets[0] != offsets[1]
    assert offsets[2] == ((6, 5), "left")
    assert label_offsets([]) == []
    assert label_offsets([(0.3, 1.0)]) == [((6, 5), "left")]
    # A run just right of another: the first one's label goes to its left, off the neighbour.
    beside = label_offsets([(0.0, 0.0), (0.02, 0.02), (1.0, 1.0)])
    assert beside[0][1] == "right"


def test_finished_results_answer_a_request_with_newer_options_at_their_defaults():
    from unmemorize.recipes.compare import same_request

    wanted = {"unlearn": {"lr": 0.001, "lr_schedule": "constant", "el_batch_size": 128},
              "eval": {"nlu_limit": 20, "split": "lines"}}
    older = {"unlearn": {"lr": 0.001, "el_batch_size": 64}, "eval": {"nlu_limit": 20}}
    # lr_schedule and split are newer than the results: they had the defaults; batch sizes only
    # change the speed.
    assert same_request(older, wanted)
    assert not same_request(older, {**wanted, "unlearn": {**wanted["unlearn"], "lr_schedule": "linear"}})
    assert not same_request(older, {**wanted, "eval": {"nlu_limit": 100, "split": "lines"}})
    assert not same_request({"unlearn": older["unlearn"]}, wanted)


def test_seeds_pool_into_one_row_with_paired_differences(setting, tmp_path):
    path, config = setting
    config["runs"] = [{"name": "di", "method": "di", "strength": 10}]
    config["seeds"] = [1, 2]
    config["unseen_every_epoch"] = True
    config["eval"]["suites"] = ["memorization"]
    path.write_text(yaml.safe_dump(config))
    out = tmp_path / "results"
    comparison = compare.run_compare(load_config(path), out, tmp_path / "weights")
    assert [r["run"] for r in comparison["rows"]] == ["original", "di-s1", "di-s2"]
    assert [r["seed"] for r in comparison["rows"]] == [None, 1, 2]
    rows = {r["run"]: r for r in comparison["rows"]}
    group = {g["group"]: g for g in comparison["groups"]}["di"]
    seeds = [rows["di-s1"]["forget_ma"], rows["di-s2"]["forget_ma"]]
    mean = sum(seeds) / 2
    # Two seeds: the t interval with 1 degree of freedom, sd = |a - b| / sqrt(2).
    half = 12.706 * (abs(seeds[0] - seeds[1]) / math.sqrt(2)) / math.sqrt(2)
    assert group["forget_ma"] == pytest.approx(mean) and group["seeds"] == [1, 2]
    # (clipped to [0, 1]: MA is a share)
    assert group["forget_ma_ci95"] == pytest.approx([max(0.0, mean - half), min(1.0, mean + half)])
    # The paired difference of means is the difference of the pooled means.
    difference = comparison["differences"]["vs_original"]["di"]["forget_ma"]
    assert difference["difference"] == pytest.approx(mean - rows["original"]["forget_ma"])
    # Per-epoch curves: (forget MA, unseen MA) from before training to the last epoch.
    metrics = json.loads((tmp_path / "weights" / "di-s1" / "metrics.json").read_text())
    expected = [(metrics["before"]["mean"]["ma"], metrics["before"]["mean"]["unseen_ma"])] + \
        [(e["ma"], e["unseen_ma"]) for e in metrics["epochs"]]
    assert [v for p in comparison["curves"]["di-s1"] for v in p] == pytest.approx([v for p in expected for v in p])
    markdown = (out / "comparison.md").read_text()
    assert "Quick setting (a smoke run)" in markdown and "| di | di |" in markdown
    assert "Differences against `original`" in markdown
    # The directory's report shows the same pooled rows, value [95 % interval].
    from unmemorize.reporting.comparison import group_table
    from unmemorize.reporting.report import write_report

    report_md = write_report(out)[0].read_text().replace("\\[", "[").replace("\\]", "]")
    header, body = group_table(comparison, "el_2")
    di_row = next(row for row in body if row[0] == "di")
    assert "[" in di_row[4] and all(cell in report_md for cell in di_row[4:6])


def test_matched_level_and_forgotten_by_hand():
    from unmemorize.reporting.comparison import at_level, forgotten

    # Forget MA falls 0.6 -> 0.5 -> 0.3 while unseen MA falls 0.40 -> 0.38 -> 0.30; level 0.4 is
    # crossed halfway along the second segment: 0.38 + (0.30 - 0.38) * 0.5 = 0.34.
    assert at_level([(0.6, 0.40), (0.5, 0.38), (0.3, 0.30)], 0.4) == pytest.approx(0.34)
    assert at_level([(0.6, 0.40), (0.5, 0.38)], 0.4) is None
    # Already at the level before training: the starting point, not a later crossing.
    assert at_level([(0.35, 0.41), (0.5, 0.38), (0.3, 0.30)], 0.4) == 0.41
    row = {"forget_ma": 0.39, "forget_ma_ci95": [0.35, 0.43], "forget_el_2": 0.01, "forget_el_2_ci95": [0.0, 0.02]}
    assert forgotten(row, {"ma": 0.40, "el_2": 0.05}, "el_2") == {"forgotten": True, "resolved": False}
    row["forget_ma_ci95"] = [0.36, 0.395]
    assert forgotten(row, {"ma": 0.40, "el_2": 0.05}, "el_2") == {"forgotten": True, "resolved": True}
    # MA alone below the level is not enough: EL must be too.
    assert forgotten({**row, "forget_el_2": 0.2}, {"ma": 0.40, "el_2": 0.05}, "el_2")["forgotten"] is False
