"""NLU benchmark scoring: batched log-likelihoods against a naive one-forward-per-pair loop on the
tiny models, the metrics on constructed cases, the real data files (skipped when absent), and
the errors a user sees."""

from __future__ import annotations

import json
import math
import re
import time
from pathlib import Path

import pytest
import torch

from conftest import CORPUS, make_tokenizer
from unmemorize.config import EvalConfig
from unmemorize.errors import UserError
from unmemorize.events import Events
from unmemorize.metrics import nlu
from unmemorize.metrics.nlu import (
    NLU_AVG6_TASKS,
    NLU_TASKS,
    Instance,
    ItemOutcomes,
    choice_predictions,
    encode_pairs,
    evaluate_nlu,
    loglikelihoods,
    mean_stderr,
    nlu_averages,
    option_requests,
    score_task,
    select_subset,
)
from unmemorize.metrics.uncertainty import Measurement, bootstrap_interval
from unmemorize.models import load_model
from unmemorize.suites import nlu as nlu_suite

CONTEXT_A = "Alice Johnson lives at 42 Baker"
CONTEXT_B = "The quick brown fox jumps over the"




@pytest.fixture(scope="module")
def float64_models(tiny_models) -> dict:
    """Each tiny model in float64, so batched and unbatched scores agree to ~1e-12."""
    return {arch: load_model(str(path), dtype=torch.float64) for arch, path in tiny_models.items()}


def naive_scores(model, tokenizer, pairs) -> list[tuple[float, bool]]:
    """(sum of continuation log-probs, all tokens greedy) with one unbatched full forward each."""
    scores = []
    for context_ids, continuation_ids in encode_pairs(tokenizer, pairs):
        ids = torch.tensor([context_ids + continuation_ids])
        with torch.no_grad():
            logits = model(input_ids=ids).logits[0].double()
        logprobs = logits.log_softmax(-1)
        positions = range(len(context_ids) - 1, len(context_ids) + len(continuation_ids) - 1)
        total = sum(logprobs[p, t].item() for p, t in zip(positions, continuation_ids))
        greedy = all(logits[p].argmax().item() == t for p, t in zip(positions, continuation_ids))
        scores.append((total, greedy))
    return scores


def one_token_words(tokenizer, candidates=(" the", " a", " in", " and", " of", " to", " is")) -> list[str]:
    words = [w for w in candidates if len(tokenizer(w, add_special_tokens=False)["input_ids"]) == 1]
    assert len(words) >= 2, "the tiny tokenizer should have single-token common words"
    return words


# --------------------------------------------------------------------------------------------
# Log-likelihoods
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("arch", ["gpt_neo", "llama", "gemma3"])
def test_batched_loglikelihoods_match_naive_loop(float64_models, arch):
    loaded = float64_models[arch]
    words = one_token_words(loaded.tokenizer)
    pairs = [
        (CONTEXT_A, " Street in London and her phone is 555-0199."),
        (CONTEXT_A, " Road"),
        (CONTEXT_A, " Street"),
        (CONTEXT_B, " lazy dog"),
        (CONTEXT_B, " lazy dog while Bob Smith watches from Paris."),
        (CONTEXT_B, words[0]),  # one-token continuations of one context share a forward
        (CONTEXT_B, words[1]),
        ("Contact mary.jones@example.com for the account number ", "1234-5678-9012."),
        (CONTEXT_A, " Road"),  # an exact repeat
    ]
    expected = naive_scores(loaded.model, loaded.tokenizer, pairs)
    for batch_size in (1, 4):
        scores = loglikelihoods(loaded.model, loaded.tokenizer, pairs, batch_size=batch_size)
        assert len(scores) == len(pairs)
        for score, (logprob, greedy) in zip(scores, expected):
            assert score.logprob == pytest.approx(logprob, abs=1e-9)
            assert score.is_greedy == greedy
    assert len({round(lp, 6) for lp, _ in expected}) > 5, "scores should differ between pairs"


def test_encode_pairs_adds_bos_and_moves_trailing_space(tmp_path, float64_models):
    tokenizer = float64_models["llama"].tokenizer
    bos = tokenizer.bos_token_id
    plain = lambda text: tokenizer(text, add_special_tokens=False)["input_ids"]  # noqa: E731
    [(context_ids, continuation_ids)] = encode_pairs(tokenizer, [("Alice lives at ", "42")])
    assert context_ids == [bos] + plain("Alice lives at")
    assert continuation_ids == plain(" 42")

    no_bos = make_tokenizer(tmp_path, add_bos=False)
    [(context_ids, _), (empty_ids, _)] = encode_pairs(no_bos, [("Alice lives at", " 42"), ("", "Alice")])
    assert context_ids == no_bos("Alice lives at", add_special_tokens=False)["input_ids"]
    assert empty_ids == [no_bos.eos_token_id]  # lm-eval's stand-in for an empty context


def test_model_mode_is_restored(float64_models):
    loaded = float64_models["gpt_neo"]
    loaded.model.train()
    try:
        loglikelihoods(loaded.model, loaded.tokenizer, [(CONTEXT_A, " Street")])
        assert loaded.model.training
    finally:
        loaded.model.eval()


# --------------------------------------------------------------------------------------------
# Metrics on constructed cases
# --------------------------------------------------------------------------------------------


def test_choice_predictions_acc_and_acc_norm_can_disagree():
    # Choice 0 has the higher total but choice 1 the higher per-character log-likelihood.
    assert choice_predictions([-10.0, -12.0], [5, 20]) == (0, 1)
    assert choice_predictions([-3.0, -3.0], [4, 4]) == (0, 0)  # ties go to the first


def test_acc_and_acc_norm_on_model_where_they_disagree(float64_models):
    loaded = float64_models["llama"]
    candidates = [
        (" Street", " Street in London and her phone is 555-0199."),
        (" Road", " Street in London"),
        (" lazy", " lazy dog while Bob Smith watches from Paris."),
        (" in", " in London and her phone is 555-0199."),
    ]
    for short, long in candidates:
        expected = naive_scores(loaded.model, loaded.tokenizer, [(CONTEXT_A, short), (CONTEXT_A, long)])
        lengths = [len(short) - 1, len(long) - 1]
        acc_pick, norm_pick = choice_predictions([lp for lp, _ in expected], lengths)
        if acc_pick != norm_pick:
            break
    else:
        pytest.fail("no constructed case where acc and acc_norm disagree")
    instance = Instance((CONTEXT_A,), (short.strip(), long.strip()), gold=norm_pick)
    metrics = score_task(loaded.model, loaded.tokenizer, "piqa", [instance], batch_size=2)
    assert metrics["acc"] == 0.0 and metrics["acc_norm"] == 1.0 and metrics["n"] == 1


def test_winogrande_partial_scoring_picks_the_likelier_context(float64_models):
    loaded = float64_models["gemma3"]
    contexts = ("Alice Johnson lives at 42 Baker", "Contact mary.jones@example.com for the")
    continuation = "Street in London and her phone is 555-0199."
    expected = naive_scores(loaded.model, loaded.tokenizer, [(c, " " + continuation) for c in contexts])
    assert abs(expected[0][0] - expected[1][0]) > 1e-3
    better = 0 if expected[0][0] > expected[1][0] else 1
    right = Instance(contexts, (continuation,), gold=better)
    wrong = Instance(contexts, (continuation,), gold=1 - better)
    metrics = score_task(loaded.model, loaded.tokenizer, "winogrande", [right, wrong], batch_size=4)
    assert metrics["acc"] == 0.5
    assert "acc_norm" not in metrics  # one shared continuation: length normalisation is moot
    assert score_task(loaded.model, loaded.tokenizer, "winogrande", [right])["acc"] == 1.0


def greedy_target(model, tokenizer, n_tokens: int = 2) -> tuple[str, str] | None:
    """A (context, target) whose target is the model's own greedy continuation and survives a
    decode/encode round trip, so LAMBADA's exact match must count it."""
    for sentence in dict.fromkeys(CORPUS):
        words = sentence.split(" ")
        for cut in range(2, len(words)):
            context = " ".join(words[:cut])
            ids = encode_pairs(tokenizer, [(context, " x")])[0][0]
            generated = []
            for _ in range(n_tokens):
                with torch.no_grad():
                    logits = model(input_ids=torch.tensor([ids + generated])).logits[0, -1]
                generated.append(int(logits.argmax()))
            text = tokenizer.decode(generated)
            if text[:1] == " " and tokenizer(text, add_special_tokens=False)["input_ids"] == generated:
                return context, text
    return None


@pytest.mark.parametrize("arch", ["gpt_neo", "llama", "gemma3"])
def test_lambada_exact_match_and_perplexity(float64_models, arch):
    loaded = float64_models[arch]
    found = greedy_target(loaded.model, loaded.tokenizer)
    if found is None:
        pytest.fail("no context whose greedy continuation round-trips through the tokenizer")
    context, target = found
    miss = " zebra quartz"
    expected = naive_scores(loaded.model, loaded.tokenizer, [(context, target), (context, miss)])
    assert expected[0][1] and not expected[1][1]

    hit_instance = Instance((context,), (target.removeprefix(" "),))  # the delimiter adds the space
    miss_instance = Instance((context,), (miss.removeprefix(" "),))
    metrics = score_task(loaded.model, loaded.tokenizer, "lambada", [hit_instance, miss_instance])
    assert metrics["acc"] == 0.5
    mean_logprob = (expected[0][0] + expected[1][0]) / 2
    # GPT-Neo computes attention scores in float32 even in a float64 model, so its log-probs
    # move by ~1e-8 with the batch shape (here a context pass, then the continuation from its
    # cache); exp() of a mean log-prob of ~-50 turns that into ~1e-7 relative.
    rel = 1e-6 if arch == "gpt_neo" else 1e-9
    assert metrics["perplexity"] == pytest.approx(math.exp(-mean_logprob), rel=rel)
    assert score_task(loaded.model, loaded.tokenizer, "lambada", [hit_instance])["acc"] == 1.0
    assert score_task(loaded.model, loaded.tokenizer, "lambada", [miss_instance])["acc"] == 0.0


def test_mean_stderr_is_the_sample_stderr_of_a_proportion():
    values = [1.0, 0.0, 1.0, 1.0]  # p = 0.75, n = 4
    assert mean_stderr(values) == pytest.approx(math.sqrt(0.75 * 0.25 / 3))
    assert mean_stderr([1.0] * 10) == 0.0
    assert math.isnan(mean_stderr([1.0]))


# --------------------------------------------------------------------------------------------
# evaluate_nlu end to end on small files
# --------------------------------------------------------------------------------------------


def write_jsonl(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")


def small_nlu_dir(directory: Path) -> Path:
    write_jsonl(directory / "copa.jsonl", [
        {"query": "The man turned on the faucet, therefore", "choices": ["water flowed.", "the dog slept."], "gold": 0},
        {"query": "Alice was tired, because", "choices": ["she ran far.", "it was blue."], "gold": 0},
        {"query": "Bob smiled, therefore", "choices": ["Alice smiled back.", "the sky fell."], "gold": 1},
    ])
    write_jsonl(directory / "piqa.jsonl", [
        {"query": "Question: How do I open a door?\n", "choices": ["Turn the handle.", "Eat the key."], "gold": 0},
        {"query": "Question: How do I boil water?\n", "choices": ["Freeze it.", "Heat it in a pot."], "gold": 1},
    ])
    write_jsonl(directory / "winogrande.jsonl", [
        {"context_options": ["Alice helped Bob because Alice", "Alice helped Bob because Bob"],
         "continuation": "needed help.", "gold": 1},
    ])
    return directory


def naive_item_outcomes(loaded, instances: list[Instance]) -> dict[str, list[float]]:
    """acc and acc_norm per item written out: each option alone through the model as its
    context + " " + its choice (lm-eval's delimiter, always), the summed log-probability of the
    continuation, the argmax of it and of it per character of the choice, against gold."""
    acc, acc_norm = [], []
    for instance in instances:
        options = [instance.option(i) for i in range(instance.n_options)]
        logprobs = [lp for lp, _ in naive_scores(loaded.model, loaded.tokenizer, [(c, " " + x) for c, x in options])]
        per_char = [lp / len(choice) for lp, (_, choice) in zip(logprobs, options)]
        first_max = lambda values: max(range(len(values)), key=lambda i: (values[i], -i))  # noqa: E731
        acc.append(float(first_max(logprobs) == instance.gold))
        acc_norm.append(float(first_max(per_char) == instance.gold))
    return {"acc": acc, "acc_norm": acc_norm}


def test_evaluate_nlu_reports_each_task_with_intervals_and_both_averages(float64_models, tmp_path):
    loaded = float64_models["gpt_neo"]
    calls = []
    results = evaluate_nlu(
        loaded.model, loaded.tokenizer, ("copa", "piqa", "winogrande"),
        nlu_dir=small_nlu_dir(tmp_path), batch_size=3, progress=lambda *args: calls.append(args),
    )
    assert set(results) == {"copa", "piqa", "winogrande", "avg6_lm_eval", "avg6_summed_acc"}
    assert results["copa"]["n"] == 3 and results["piqa"]["n"] == 2 and results["winogrande"]["n"] == 1
    naive = {name: naive_item_outcomes(loaded, nlu.load_task(name, tmp_path)) for name in ("copa", "piqa", "winogrande")}
    for name in ("copa", "piqa"):
        assert set(results[name]) == {"acc", "acc_stderr", "acc_ci95", "acc_norm", "acc_norm_stderr", "acc_norm_ci95", "n"}
        for metric in ("acc", "acc_norm"):
            assert results[name][metric] == pytest.approx(sum(naive[name][metric]) / results[name]["n"])
            p, n = results[name][metric], results[name]["n"]
            assert results[name][f"{metric}_stderr"] == pytest.approx(math.sqrt(p * (1 - p) / (n - 1)))
            assert results[name][f"{metric}_ci95"] == list(bootstrap_interval(Measurement.of_mean(naive[name][metric])))
    assert results["winogrande"]["acc"] == naive["winogrande"]["acc"][0]

    headline = {"piqa": naive["piqa"]["acc_norm"], "copa": naive["copa"]["acc"], "winogrande": naive["winogrande"]["acc"]}
    summed = {name: naive[name]["acc"] for name in ("piqa", "copa", "winogrande")}
    for key, per_item in (("avg6_lm_eval", headline), ("avg6_summed_acc", summed)):
        assert results[key]["tasks"] == ["piqa", "copa", "winogrande"]  # NLU_AVG6_TASKS order
        assert results[key]["acc"] == pytest.approx(sum(sum(v) / len(v) for v in per_item.values()) / 3)
        assert results[key]["ci95"] == list(bootstrap_interval(Measurement("mean_of_means", per_item)))
    assert {task for task, _, _ in calls} == {"copa", "piqa", "winogrande"}
    assert all(done == total for task, done, total in calls if task == "winogrande")

    subset = evaluate_nlu(loaded.model, loaded.tokenizer, ["copa"], nlu_dir=tmp_path, limit=2)
    assert subset["copa"]["n"] == 2 and subset["avg6_lm_eval"]["tasks"] == ["copa"]


def test_average_bootstrap_resamples_items_within_each_task():
    # PIQA all right by acc_norm, COPA all wrong: a bootstrap within tasks can only ever draw a
    # mean of 1 and a mean of 0, so the interval of their average is exactly [0.5, 0.5] (one
    # pooling the seven items would move with the share of PIQA items drawn).
    outcomes = {
        "copa": ItemOutcomes({"acc": [0.0, 0.0, 0.0], "acc_norm": [1.0, 1.0, 1.0]}, []),
        "piqa": ItemOutcomes({"acc": [1.0, 0.0, 0.0, 0.0], "acc_norm": [1.0, 1.0, 1.0, 1.0]}, []),
    }
    averages = nlu_averages(outcomes)
    assert list(averages) == ["avg6_lm_eval", "avg6_summed_acc"]
    assert averages["avg6_lm_eval"] == Measurement("mean_of_means", {"piqa": [1.0] * 4, "copa": [0.0] * 3})
    assert averages["avg6_lm_eval"].value() == 0.5 and bootstrap_interval(averages["avg6_lm_eval"]) == (0.5, 0.5)
    assert averages["avg6_summed_acc"].units == {"piqa": [1.0, 0.0, 0.0, 0.0], "copa": [0.0] * 3}
    assert averages["avg6_summed_acc"].value() == (0.25 + 0.0) / 2
    assert nlu_averages({"boolq": ItemOutcomes({"acc": [1.0]}, [])}) == {}


def test_suite_reports_per_item_measurements_and_intervals(float64_models, tmp_path):
    small_nlu_dir(tmp_path)
    config = EvalConfig(suites=("nlu",), nlu_tasks=("copa", "piqa"), nlu_dir=str(tmp_path), nlu_limit=2)
    items = {name: nlu.load_task(name, tmp_path, limit=2) for name in ("copa", "piqa")}
    shapes = []
    for arch in ("gpt_neo", "llama"):  # two models: the same items in the same order
        loaded = float64_models[arch]
        results = nlu_suite.run(loaded, config, Events(), None)
        naive = {name: naive_item_outcomes(loaded, instances) for name, instances in items.items()}
        assert results["measurements"] == {
            "copa.acc": {"statistic": "mean", "units": {"items": naive["copa"]["acc"]}},
            "piqa.acc_norm": {"statistic": "mean", "units": {"items": naive["piqa"]["acc_norm"]}},
            "piqa.acc": {"statistic": "mean", "units": {"items": naive["piqa"]["acc"]}},
            "avg6_lm_eval": {"statistic": "mean_of_means",
                             "units": {"piqa": naive["piqa"]["acc_norm"], "copa": naive["copa"]["acc"]}},
            "avg6_summed_acc": {"statistic": "mean_of_means",
                                "units": {"piqa": naive["piqa"]["acc"], "copa": naive["copa"]["acc"]}},
        }
        assert results["intervals"]["avg6_lm_eval"] == results["avg6_lm_eval"]["ci95"]
        assert results["intervals"]["copa.acc"] == list(bootstrap_interval(Measurement.of_mean(naive["copa"]["acc"])))
        shapes.append({path: list(m["units"]) for path, m in results["measurements"].items()})
        assert nlu_suite.run(loaded, config, Events(), None) == results  # nothing random
    assert shapes[0] == shapes[1]


def test_copa_requests_are_lm_evals(float64_models, tmp_path):
    # The local file is llm-foundry's ("…, therefore", choices lower-cased); lm-eval's request
    # is the premise without its full stop + " therefore", and "  " + the lower-cased choice:
    # doc_to_choice's space, then the target delimiter.
    write_jsonl(tmp_path / "copa.jsonl", [
        {"query": "The man turned on the faucet, therefore", "gold": 1,
         "choices": ["the toilet filled with water.", "water flowed from the spout."]},
        {"query": "My body cast a shadow over the grass, because", "gold": 0,
         "choices": ["The sun was rising.", "The grass was cut."]},
    ])
    instances = nlu.load_task("copa", tmp_path)
    assert [option_requests(i) for i in instances] == [
        [("The man turned on the faucet therefore", "  the toilet filled with water."),
         ("The man turned on the faucet therefore", "  water flowed from the spout.")],
        [("My body cast a shadow over the grass because", "  the sun was rising."),
         ("My body cast a shadow over the grass because", "  the grass was cut.")],
    ]
    # acc_norm divides by lm-eval's completion_len, len(doc_to_choice output): 30 and 29, 20 and 19.
    assert [[len(c) for c in i.choices] for i in instances] == [[30, 29], [20, 19]]
    loaded = float64_models["llama"]
    expected = {"acc": [], "acc_norm": []}
    for instance, lengths in zip(instances, ([30, 29], [20, 19])):
        scores = [lp for lp, _ in naive_scores(loaded.model, loaded.tokenizer, option_requests(instance))]
        pick, pick_norm = choice_predictions(scores, lengths)
        expected["acc"].append(float(pick == instance.gold))
        expected["acc_norm"].append(float(pick_norm == instance.gold))
    metrics = score_task(loaded.model, loaded.tokenizer, "copa", instances)
    assert metrics["acc"] == sum(expected["acc"]) / 2 and metrics["acc_norm"] == sum(expected["acc_norm"]) / 2


PUBMEDQA_FOUNDRY_ROW = {
    "context": (
        "Context: BACKGROUND. Aspirin is common.\n"
        "MATERIALS AND METHODS. We asked 10 people (n=10).\n"
        "RESULTS. CT. scans showed nothing.\n"
        ", FSAII. n=4 mice\n"
        "an unlabelled line.\n"
        "Question: Does aspirin help?\nA. yes\nB. no\nC. maybe\nAnswer: "
    ),
    "continuation": "maybe",
}


def test_pubmedqa_prompt_is_lm_evals(tmp_path):
    write_jsonl(tmp_path / "pubmed_qa_labeled.jsonl", [PUBMEDQA_FOUNDRY_ROW])
    [instance] = nlu.load_task("pubmedqa", tmp_path)
    prompt = (
        "Abstract: Aspirin is common.\nWe asked 10 people (n=10).\nCT. scans showed nothing.\n"
        "n=4 mice\nan unlabelled line.\nQuestion: Does aspirin help?\nAnswer:"
    )
    assert instance == Instance((prompt,), ("yes", "no", "maybe"), gold=2)
    assert option_requests(instance) == [(prompt, " yes"), (prompt, " no"), (prompt, " maybe")]

    write_jsonl(tmp_path / "pubmed_qa_labeled.jsonl", [{**PUBMEDQA_FOUNDRY_ROW, "context": "Does aspirin help?"}])
    with pytest.raises(UserError, match="pubmed_qa_labeled.jsonl:1: context is not 'Context: ...'"):
        nlu.load_task("pubmedqa", tmp_path)


def test_pubmedqa_result_says_which_items_it_scored(float64_models, tmp_path):
    write_jsonl(tmp_path / "pubmed_qa_labeled.jsonl", [PUBMEDQA_FOUNDRY_ROW])
    loaded = float64_models["gemma3"]
    result = evaluate_nlu(loaded.model, loaded.tokenizer, ["pubmedqa"], nlu_dir=tmp_path)["pubmedqa"]
    assert result["note"] == (
        "items drawn from all 1,000 labelled ones: lm-eval scores the 500-item test split of bigbio "
        "pubmed_qa_labeled_fold0_source, which the local file (no PMIDs) cannot select"
    )
    assert result["acc"] == naive_item_outcomes(loaded, nlu.load_task("pubmedqa", tmp_path))["acc"][0]


def test_lambada_splits_at_the_last_space_like_lm_eval(tmp_path):
    write_jsonl(tmp_path / "lambada_openai.jsonl", [
        {"context": "She looked at him and said", "continuation": "goodbye"},
        {"context": "She returned and saw the", "continuation": "\n\nrecorder"},
    ])
    assert [option_requests(i) for i in nlu.load_task("lambada", tmp_path)] == [
        [("She looked at him and said", " goodbye")],
        [("She returned and saw", " the\n\nrecorder")],
    ]


def test_headline_metrics_follow_lm_eval():
    assert {n for n, t in NLU_TASKS.items() if t.headline == "acc_norm"} == {
        "piqa", "arc_easy", "arc_challenge", "hellaswag"
    }
    assert NLU_AVG6_TASKS == ("piqa", "arc_challenge", "copa", "winogrande", "pubmedqa", "hellaswag")


# --------------------------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------------------------


def test_unknown_task_lists_the_registry(tmp_path):
    with pytest.raises(UserError, match="unknown NLU task 'squad'.*piqa.*lambada"):
        evaluate_nlu(None, None, ["piqa", "squad"], nlu_dir=tmp_path)


def test_missing_directory_and_file_name_what_is_needed(tmp_path, monkeypatch):
    with pytest.raises(UserError, match="--nlu-dir.*piqa.jsonl.*copa.jsonl"):
        evaluate_nlu(None, None, ["piqa", "copa"], nlu_dir=tmp_path / "absent")
    monkeypatch.setattr(nlu, "data_path", lambda relative: None)
    with pytest.raises(UserError, match="no shared data directory.*--nlu-dir"):
        evaluate_nlu(None, None, ["copa"])
    write_jsonl(tmp_path / "copa.jsonl", [])
    with pytest.raises(UserError, match="lacks hellaswag_val_full.txt.bz2.*--nlu-dir"):
        evaluate_nlu(None, None, ["copa", "hellaswag"], nlu_dir=tmp_path)


def test_bad_rows_and_limits_are_user_errors(tmp_path):
    write_jsonl(tmp_path / "copa.jsonl", [{"query": "q, because", "choices": ["a", "b"], "gold": 2}])
    with pytest.raises(UserError, match="copa.jsonl:1: gold index 2"):
        nlu.load_task("copa", tmp_path)
    write_jsonl(tmp_path / "copa.jsonl", [{"query": "The man fell.", "choices": ["a", "b"], "gold": 0}])
    with pytest.raises(UserError, match="copa.jsonl:1: COPA query 'The man fell.' does not end in ', because'"):
        nlu.load_task("copa", tmp_path)
    write_jsonl(tmp_path / "copa.jsonl", [{"query": "q", "gold": 0}])
    with pytest.raises(UserError, match="missing field 'choices'"):
        nlu.load_task("copa", tmp_path)
    with pytest.raises(UserError, match="--nlu-limit"):
        evaluate_nlu(None, None, ["copa"], nlu_dir=tmp_path, limit=0)


# --------------------------------------------------------------------------------------------
# Real data files
# --------------------------------------------------------------------------------------------

README_COUNTS = {
    "piqa": 1838, "arc_easy": 2376, "arc_challenge": 1172, "copa": 100, "boolq": 3270,
    "mathqa": 2983, "pubmedqa": 1000, "winogrande": 1267, "lambada": 5153, "hellaswag": 10042,
}
OPTION_COUNTS = {
    "piqa": 2, "arc_easy": 4, "arc_challenge": 4, "copa": 2, "boolq": 2, "mathqa": 4,
    "pubmedqa": 3, "winogrande": 2, "lambada": 1, "hellaswag": 4,
}


@pytest.mark.parametrize("name", sorted(NLU_TASKS))
def test_real_file_parses(shared_data, name):
    instances = nlu.load_task(name, shared_data / "nlu")
    assert len(instances) == README_COUNTS[name]
    assert all(0 <= i.gold < i.n_options for i in instances)
    assert {i.n_options for i in instances} == {OPTION_COUNTS[name]}
    first = instances[0]
    context, choice = first.option(0)
    assert context and choice
    if name in ("piqa", "arc_easy", "arc_challenge", "boolq"):
        assert context.endswith("\nAnswer:") and not context.startswith("Passage:")
    if name == "pubmedqa":
        # The file's first record, its labels "BACKGROUND. "/"RESULTS. " and options gone.
        assert first.choices == ("yes", "no", "maybe") and first.gold == 0
        assert context.startswith("Abstract: Programmed cell death (PCD) is the regulated death of cells")
        assert "in plants.\nThe following paper elucidates the role of mitochondrial dynamics" in context
        assert context.endswith(
            "\nQuestion: Do mitochondria play a role in remodelling lace plant leaves during programmed"
            " cell death?\nAnswer:"
        )
        section_starts = ("BACKGROUND. ", "RESULTS. ", "METHODS. ", "OBJECTIVE. ", "CONCLUSIONS. ")
        assert not any(line.startswith(section_starts) for i in instances for line in i.contexts[0].split("\n"))
    if name == "copa":
        assert first.contexts == ("The man turned on the faucet therefore",)
        assert first.choices == (" the toilet filled with water.", " water flowed from the spout.")
    if name == "hellaswag":
        # lm-eval's clean-up removes bracketed markup (a lone "[" may stay).
        assert not any(re.search(r"\[.*?\]", c) for i in instances for c in i.contexts + i.choices)


def test_limit_takes_a_fixed_subset(shared_data):
    instances = nlu.load_task("piqa", shared_data / "nlu")
    first = select_subset(instances, 50)
    assert first == select_subset(instances, 50)
    assert first == nlu.load_task("piqa", shared_data / "nlu", limit=50)
    assert len(first) == 50 and first != instances[:50]
    assert select_subset(instances, 60)[:50] != first
    order = [instances.index(i) for i in first]
    assert order == sorted(order)
    assert select_subset(instances, 10_000) == instances


# --------------------------------------------------------------------------------------------
# Real model
# --------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_gemma_270m_on_piqa_and_copa(shared_data):
    loaded = load_model("gemma-3-270m")
    started = time.perf_counter()
    results = evaluate_nlu(loaded.model, loaded.tokenizer, ["piqa", "copa"], limit=20, batch_size=8)
    elapsed = time.perf_counter() - started
    print(f"gemma-3-270m piqa+copa limit=20: {elapsed:.1f}s {results}")
    for name in ("piqa", "copa"):
        assert results[name]["n"] == 20
    # Chance is 0.5. On this seeded 20, piqa gives acc 0.60 and acc_norm exactly 0.40 (8/20;
    # limit=100 gives 0.65 / 0.60), so the bound is inclusive; COPA (0.85 here with lm-eval's
    # prompt, 0.74 on the seeded 50) shows the scoring is far from chance.
    assert results["piqa"]["acc_norm"] >= 0.4
    assert results["copa"]["acc"] >= 0.7
