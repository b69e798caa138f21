"""`unmemorize eval` end to end on a tiny model, its JSON keys, and its error without data."""

import json

import pytest

from unmemorize.reporting.tables import comparison_rows, flatten

from conftest import exit_code


def test_eval_end_to_end_writes_keyed_json(tiny_models, shared_data, tmp_path, capsys):
    forget = shared_data / "extraction/forget_sets/lm_extraction_8_0.csv"
    out = tmp_path / "eval.json"
    code = exit_code([
        "eval", "--model", str(tiny_models["gemma3"]), "--original", str(tiny_models["llama"]),
        "--forget", str(forget), "--limit", "3", "--max-length", "120", "--el-stride", "40",
        "--nlu-tasks", "piqa,copa,winogrande,lambada", "--nlu-limit", "4", "--nlg-limit", "3",
        "--nlg-max-new-tokens", "6", "--nlg-heldout-limit", "3", "--json", str(out),
    ])
    assert code == 0
    report = json.loads(out.read_text())
    assert report["models"] == {"original": str(tiny_models["llama"]), "unlearned": str(tiny_models["gemma3"])}
    flat = flatten(report["results"]["unlearned"])
    for key in ("memorization.forget.ma", "memorization.reference.ma", "memorization.forget.el_10",
                "memorization.forget.el_10_undial_code", "memorization.extraction.fraction_extractable",
                "memorization.mia.loss.auc", "memorization.mia.min_k_plus_plus.auc",
                "nlu.piqa.acc_norm", "nlu.copa.acc", "nlu.winogrande.acc", "nlu.lambada.acc",
                "nlg.mauve", "nlg.rep_2", "nlg.diversity", "nlg.coherence", "nlg.gen_ppl", "nlg.heldout_ppl"):
        assert key in flat, key
    assert report["results"]["unlearned"]["nlu"]["piqa"]["n"] == 4
    # "Forgotten" is judged against the original's level on unseen text, not the model's own.
    memorization = {label: report["results"][label]["memorization"] for label in ("original", "unlearned")}
    check = memorization["unlearned"]["forgotten"]["checks"]["ma"]
    assert check["threshold"] == memorization["original"]["reference"]["ma"]
    assert check["forgotten"] == (memorization["unlearned"]["forget"]["ma"] <= check["threshold"])
    # Every metric carries its interval; paths under the data location are written relative to it.
    assert memorization["unlearned"]["intervals"]["forget.ma"][0] <= flat["memorization.forget.ma"]
    assert report["config"]["forget"] == "${UNMEMORIZE_DATA}/extraction/forget_sets/lm_extraction_8_0.csv"
    assert set(report["timings_s"]["unlearned"]) == {"memorization", "nlu", "nlg"}
    rows = dict(comparison_rows(report))
    assert rows["memorization.forget.ma"][1] == flat["memorization.forget.ma"]
    shown = capsys.readouterr().out
    assert "change" in shown and "memorization.forget.ma" in shown


def test_eval_without_data_names_the_inputs(tiny_models, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("UNMEMORIZE_DATA", str(tmp_path / "nowhere"))
    forget = tmp_path / "f.txt"
    forget.write_text("some text to forget\n")
    code = exit_code(["eval", "--model", str(tiny_models["llama"]), "--forget", str(forget)])
    assert code == 2
    message = capsys.readouterr().err
    assert "--reference" in message and "--nlu-dir" in message and "--nlg-prompts" in message


@pytest.mark.parametrize("args,message", [
    (["--suites", "memorization,vibes"], "--suites must be one of"),
    (["--suites", "memorization"], "needs --forget"),
    (["--nlu-limit", "0", "--suites", "nlu"], "--nlu-limit must be at least 1"),
])
def test_eval_argument_errors(tiny_models, capsys, args, message):
    assert exit_code(["eval", "--model", str(tiny_models["llama"]), *args]) == 2
    assert message in capsys.readouterr().err


def test_flatten_keeps_numbers_only():
    assert flatten({"a": {"b": 1, "c": True, "d": "x", "e": {"f": 0.5}}}) == {"a.b": 1.0, "a.e.f": 0.5}


def test_dialogue_suite_names_a_missing_file(tiny_models, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("UNMEMORIZE_DATA", str(tmp_path / "nowhere"))
    assert exit_code(["eval", "--model", str(tiny_models["llama"]), "--suites", "dialogue"]) == 2
    assert "the dialogue suite cannot find reference/wizard_of_wikipedia.json" in capsys.readouterr().err
