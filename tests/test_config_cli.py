"""The options, declared once: the command line and YAML files generated from the config
classes, configs that never change under their caller, the stop rule in both directions, the
finetune method and the learning-rate schedule, and usage errors through the installed script."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from unmemorize.cli import COMMANDS, app
from unmemorize.config import (
    QUICK_EVALUATION, EvalConfig, UnlearnConfig, evaluation_after, flag_name, from_mapping, quick_evaluation,
)
from unmemorize.errors import UserError
from unmemorize.recipes.unlearn import resolve_method, thresholds_reached, unlearn
from unmemorize.training.components import lr_factor

from conftest import exit_code

TEXTS = ["Alice Johnson lives at 42 Baker Street in London.", "Contact mary.jones@example.com for the account."]


@pytest.fixture
def forget_file(tmp_path):
    path = tmp_path / "forget.jsonl"
    path.write_text("".join(json.dumps({"text": t}) + "\n" for t in TEXTS))
    return path


# --- one declaration per option ------------------------------------------------------------------


def test_every_config_field_is_an_option_of_its_command():
    for spec in COMMANDS:
        command = app.commands[spec.name]
        names = {p.name for p in command.params}
        for cls in spec.classes:
            for item in dataclasses.fields(cls):
                assert item.name in names, (spec.name, item.name)
                param = next(p for p in command.params if p.name == item.name)
                if param.param_type_name == "option":
                    assert flag_name(item) in param.opts and param.help, (spec.name, item.name)
        assert ("config_file" in names) == spec.yaml


def test_cli_and_yaml_give_the_same_config(tmp_path):
    """The same settings as flags and as a YAML file build equal configs."""
    from unmemorize.cli.options import build_configs

    flags = ["--forget", "f.csv", "--strength", "7", "--lr", "2e-3", "--el-n", "10,3", "--stop-ma", "auto",
             "--no-lora", "--lora-targets", "q_proj", "--lora-targets", "v_proj"]
    yaml_file = tmp_path / "run.yaml"
    yaml_file.write_text("forget: f.csv\nstrength: 7\nlr: 2e-3\nel-n: [10, 3]\nstop_ma: auto\nlora: false\n"
                         "lora_targets: q_proj,v_proj\n")
    command = app.commands["unlearn"]
    from_flags = command.make_context("unlearn", list(flags))
    configs_flags, explicit = build_configs(from_flags, (UnlearnConfig,), from_flags.params, None)
    from_file = command.make_context("unlearn", ["--config", str(yaml_file)])
    configs_file, explicit_file = build_configs(from_file, (UnlearnConfig,), from_file.params, str(yaml_file))
    assert configs_flags[0] == configs_file[0]
    expected = UnlearnConfig(forget="f.csv", imagination_strength=7.0, lr=0.002, el_n=(10, 3), stop_ma="auto",
                             lora=False, lora_targets=("q_proj", "v_proj"))
    assert configs_flags[0] == expected
    assert explicit == explicit_file == {"forget", "imagination_strength", "lr", "el_n", "stop_ma", "lora",
                                         "lora_targets"}
    # A flag wins over the file.
    both = command.make_context("unlearn", ["--config", str(yaml_file), "--lr", "0.5"])
    assert build_configs(both, (UnlearnConfig,), both.params, str(yaml_file))[0][0].lr == 0.5


def test_yaml_errors_name_the_option(tmp_path):
    with pytest.raises(UserError, match=r"--lr takes a number, not 'fast' \(in run.yaml\)"):
        from_mapping(UnlearnConfig, {"lr": "fast"}, "run.yaml")
    with pytest.raises(UserError, match="unknown key 'strenght' in run.yaml"):
        from_mapping(UnlearnConfig, {"strenght": 3}, "run.yaml")
    with pytest.raises(UserError, match="unknown key 'out'"):
        from_mapping(UnlearnConfig, {"out": "x"}, "run.yaml", refused=frozenset({"out"}))


def test_configs_are_values_that_resolving_does_not_change():
    config = UnlearnConfig(forget="f.csv", method="npo", lr=1e-3)
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.lr = 2.0
    method, resolved = resolve_method(config)
    assert config.beta is None and resolved.beta == 0.1 == method.beta
    assert dataclasses.replace(resolved, beta=None) == config
    dpd, resolved = resolve_method(UnlearnConfig(forget="f.csv", method="dpd"))
    assert resolved.lora is False and resolved.dpd_lambda == 0.75
    with pytest.raises(UserError, match="--strength does not apply to --method ga"):
        resolve_method(UnlearnConfig(forget="f.csv", method="ga", imagination_strength=3.0))


def test_defaults_are_the_measured_settings():
    """Without --lr and --strength: the settings benchmarks/paired_comparison.yaml measured."""
    def resolved(**given):
        return resolve_method(UnlearnConfig(forget="f.csv", **given))[1]

    assert (resolved().imagination_strength, resolved().lr) == (10.0, 2e-3)
    assert resolved(lora=False).lr == 2e-5 and resolved(lr=1e-4).lr == 1e-4
    assert resolved(method="ga").lr == 2e-4 and resolved(method="npo").lr == 5e-4
    assert resolved(method="dpd").lr == 2e-5  # trains nothing: no adapters, the full-model default


def test_quick_evaluation_leaves_explicit_options_alone():
    config = EvalConfig(forget="f.csv", nlu_limit=100, nlg_limit=7)
    quick = quick_evaluation(config, explicit={"nlg_limit"})
    assert config.nlu_limit == 100 and config.greedy_el is True  # the caller's config is unchanged
    assert quick.nlg_limit == 7 and quick.nlu_limit == QUICK_EVALUATION["nlu_limit"]
    assert quick.greedy_el is False and quick.undial_el_limit == QUICK_EVALUATION["undial_el_limit"]


def test_standard_setting_is_recorded_and_explicit_options_win(tiny_models, capsys):
    from unmemorize.config import EVALUATION_SETTINGS, evaluation_setting

    config = EvalConfig(forget="f.csv", nlg_limit=7)
    standard = evaluation_setting(config, "standard", explicit={"nlg_limit"})
    assert standard.setting == "standard" and config.setting == "custom"
    assert standard.nlg_limit == 7 and standard.nlu_limit == EVALUATION_SETTINGS["standard"]["nlu_limit"]
    assert (standard.greedy_el, standard.el_stride, standard.nlg_heldout_limit) == (True, 1, 200)
    assert quick_evaluation(config).setting == "quick"
    # Two settings at once: one line, exit 2.
    assert exit_code(["eval", "--model", str(tiny_models["llama"]), "--forget", "f.csv", "--quick", "--standard"]) == 2
    error = capsys.readouterr().err.strip()
    assert "choose one evaluation setting, not quick and standard" in error and len(error.splitlines()) == 1


def test_the_evaluation_after_unlearning_reads_the_forget_set_as_training_did():
    config = UnlearnConfig(forget="f.txt", out="runs/x", model="base", split="paragraphs", text_column="body",
                           npy_tokenizer="tok", reference="unseen.csv", limit=5, max_length=64, el_n=(4,),
                           el_stride=3, seed=9)
    evaluation = evaluation_after(config, suites=("memorization",))
    assert (evaluation.model, evaluation.original, evaluation.forget) == ("runs/x", "base", "f.txt")
    for name in ("split", "text_column", "npy_tokenizer", "reference", "limit", "max_length", "el_n", "el_stride", "seed"):
        assert getattr(evaluation, name) == getattr(config, name), name


# --- the stop rule, both ways ---------------------------------------------------------------------


def test_stop_rule_thresholds_by_hand():
    config = UnlearnConfig(forget="f", stop_ma=0.4, stop_el=0.1, el_n=(10,))
    assert thresholds_reached({"ma": 0.4, "el_10": 0.1}, config)  # at the level counts
    assert not thresholds_reached({"ma": 0.39, "el_10": 0.11}, config)  # MA and EL together
    assert not thresholds_reached({"ma": 0.41, "el_10": 0.0}, config)
    assert thresholds_reached({"ma": 0.9, "el_10": 0.5}, config, lowers=False)  # finetune: rises to them
    assert not thresholds_reached({"ma": 0.3, "el_10": 0.5}, config, lowers=False)
    assert not thresholds_reached({"ma": 0.0}, UnlearnConfig(forget="f"))  # no threshold: never


def test_stop_rule_in_both_directions_reached_and_not(tiny_models, forget_file, tmp_path):
    """finetune raises MA until it reaches --stop-ma; unlearning from there with a step too small
    to matter lowers it too little, and the run ends at its budget; so does finetune with a
    threshold it cannot reach."""
    common = dict(forget=str(forget_file), batch_size=2, measure_el=False, lora=False)
    learned = unlearn(UnlearnConfig(model=str(tiny_models["llama"]), **common, method="finetune", lr=0.05,
                                    epochs=50, stop_ma=0.6, out=str(tmp_path / "learned")))
    history = [e["ma"] for e in learned["epochs"]]
    assert learned["stopped_because"] == "memorization reached --stop-ma/--stop-el"
    assert learned["before"]["mean"]["ma"] < 0.6 and all(ma < 0.6 for ma in history[:-1]) and history[-1] >= 0.6

    kept = unlearn(UnlearnConfig(model=str(tmp_path / "learned"), **common, method="di", lr=1e-9, epochs=2,
                                 stop_ma=0.1))
    assert kept["stopped_because"] == "epochs" and len(kept["epochs"]) == 2 and len(kept["steps"]) == 2
    assert all(e["ma"] > 0.1 for e in kept["epochs"])

    short = unlearn(UnlearnConfig(model=str(tiny_models["llama"]), **common, method="finetune", lr=1e-9, epochs=2,
                                  stop_ma=1.0))
    assert short["stopped_because"] == "epochs" and [e["epoch"] for e in short["epochs"]] == [1, 2]


def test_finetune_step_is_plain_nll_descent(tiny_models, forget_file, tmp_path):
    model_dir = tiny_models["gpt_neo"]
    out = tmp_path / "o"
    assert exit_code(["unlearn", "--model", str(model_dir), "--forget", str(forget_file), "--method", "finetune",
                      "--no-lora", "--optimizer", "sgd", "--lr", "0.1", "--max-steps", "1", "--batch-size", "2",
                      "--max-grad-norm", "0", "--no-el", "--out", str(out)]) == 0
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    expected = AutoModelForCausalLM.from_pretrained(model_dir)
    enc = tokenizer(TEXTS, padding=True, return_tensors="pt")
    logits = expected(**enc).logits[:, :-1]
    nll = torch.nn.functional.cross_entropy(logits.transpose(1, 2), enc["input_ids"][:, 1:], reduction="none")
    mask = enc["attention_mask"][:, 1:].float()
    ((nll * mask).sum() / mask.sum()).backward()
    got = AutoModelForCausalLM.from_pretrained(out)
    with torch.no_grad():
        for (name, a), b in zip(got.named_parameters(), expected.parameters()):
            torch.testing.assert_close(a, b - 0.1 * b.grad, rtol=0, atol=1e-6, msg=name)


def test_linear_schedule_by_hand():
    config = UnlearnConfig(forget="f", lr_schedule="linear", warmup_steps=2)
    factor = lr_factor(config, total_steps=7)
    # Warm-up 1/2, 2/2; then 1.0 at step 2 down to 0.1 at the last step (6) in 4 equal parts.
    assert [round(factor(k), 6) for k in range(7)] == [0.5, 1.0, 1.0, 0.775, 0.55, 0.325, 0.1]
    constant = lr_factor(UnlearnConfig(forget="f"), total_steps=7)
    assert [constant(k) for k in range(3)] == [1.0, 1.0, 1.0]


# --- usage errors through the installed console script ------------------------------------------


def _script() -> str:
    found = shutil.which("unmemorize") or str(Path(sys.executable).parent / "unmemorize")
    if not os.path.exists(found):
        pytest.skip("the unmemorize console script is not installed (pip install -e .)")
    return found


@pytest.mark.parametrize("args,message", [
    (["unlearn", "--modle", "x"], "error: No such option '--modle'"),
    (["unlearn", "--lr", "abc"], "error: --lr takes a number, not 'abc'"),
    (["unlearn", "--el-n", "ten"], "error: --el-n takes a list of integers, not 'ten'"),
    (["unlearn", "--optimizer", "lion"], "error: --optimizer must be 'adamw' or 'sgd', not 'lion'"),
    (["unlern"], "error: No such command 'unlern'"),
    (["eval", "--quick", "extra-argument"], "error: Got unexpected extra argument (extra-argument)"),
    (["report"], "error: Missing argument 'RUN_DIR'"),
])
def test_usage_errors_are_one_line_and_exit_2(args, message, tmp_path):
    result = subprocess.run([_script(), *args], capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(message), result.stderr
    assert result.stdout == "" and list(tmp_path.iterdir()) == []


def test_help_and_no_arguments_exit_0():
    for args in ([], ["--help"], ["unlearn", "--help"]):
        result = subprocess.run([_script(), *args], capture_output=True, text=True, timeout=120)
        assert result.returncode == 0 and "Usage: unmemorize" in result.stdout, result.stderr
    help_text = subprocess.run([_script(), "unlearn", "--help"], capture_output=True, text=True, timeout=120).stdout
    assert "--strength" in help_text and "(default: di 10)" in help_text and "--no-lora" in help_text


def test_a_second_training_gets_a_fresh_progress_bar():
    """The demo trains twice (the leak, then unlearning): the second bar counts its own steps."""
    from unmemorize.cli.render import RichEvents
    from unmemorize.events import StepRecord

    events = RichEvents()
    events.training_started(96)
    events.step(StepRecord(step=40, epoch=7, loss=4.0, lr=1e-3, tokens_per_s=50.0), 96)
    events.training_paused()
    events.training_started(96)  # after an epoch's evaluation: the same bar goes on
    assert (events.bar.tasks[0].total, events.bar.tasks[0].completed) == (96, 40)
    events.training_finished()
    events.training_started(12)
    assert (events.bar.tasks[0].total, events.bar.tasks[0].completed) == (12, 0)
    events.training_finished()
