"""Privacy metrics: AUC against a brute-force pair count, membership scores against a naive
unbatched implementation on the tiny GPT-Neo, Llama and Gemma-3 models (float64), extraction
on stand-ins with known answers and on the tiny models' own greedy text."""

from __future__ import annotations

import math
import random
import zlib

import pytest
import torch
from transformers import AutoModelForCausalLM
from transformers.modeling_outputs import CausalLMOutputWithPast

from unmemorize.errors import UserError
from unmemorize.metrics.privacy import (
    MIA_METRICS,
    auc,
    extractable,
    membership_scores,
    mia_report,
    undial_extraction_likelihood,
    undial_mean,
    undial_overlap,
)

from conftest import ARCHITECTURES, naive_greedy

VOCAB = 16
MIA_LENGTHS = (2, 5, 17, 26)  # 17 and 26 exceed the tiny models' sliding window of 16


@pytest.fixture(autouse=True, scope="module")
def single_thread():
    """The tiny models gain nothing from intra-op threads; on shared, busy cores two threads
    spin against other jobs and made these tests 10-50x slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# --- stand-ins and naive references -------------------------------------------------------


class ScriptedLM(torch.nn.Module):
    """The argmax at position p is ``script[p + 1]`` (0 past its end), whatever the input;
    keeps no KV cache. A copying model when the script is the sequence itself."""

    def __init__(self, script: list[int], vocab_size: int = VOCAB):
        super().__init__()
        self.script = script
        self.vocab_size = vocab_size
        self.dummy = torch.nn.Parameter(torch.zeros(1))  # gives the metrics a device

    def forward(self, input_ids, attention_mask=None, position_ids=None, **kwargs):
        if position_ids is None:
            position_ids = torch.arange(input_ids.shape[1]).expand_as(input_ids)
        targets = [
            [self.script[p + 1] if p + 1 < len(self.script) else 0 for p in row]
            for row in position_ids.tolist()
        ]
        # Strongly peaked, so top-p sampling with any top_p < 1 is greedy.
        logits = 50.0 * torch.nn.functional.one_hot(torch.tensor(targets), self.vocab_size).double()
        return CausalLMOutputWithPast(logits=logits)


def load_tiny(tiny_models, arch: str):
    return AutoModelForCausalLM.from_pretrained(tiny_models[arch]).double().eval()



def naive_membership(model, seq: list[int], text: str, k_percent: float) -> dict[str, float]:
    """The formulas written out, from one unbatched forward pass."""
    with torch.inference_mode():
        log_probs = torch.log_softmax(model(torch.tensor([seq])).logits[0], dim=-1)
    probs = log_probs.exp()
    token_log_probs, standardized = [], []
    for t in range(1, len(seq)):
        lp = log_probs[t - 1]
        mu = float((probs[t - 1] * lp).sum())
        sigma = math.sqrt(float((probs[t - 1] * lp * lp).sum()) - mu * mu)
        token_log_probs.append(float(lp[seq[t]]))
        standardized.append((float(lp[seq[t]]) - mu) / sigma)
    k = max(1, int(len(token_log_probs) * k_percent / 100))
    mean_nll = -sum(token_log_probs) / len(token_log_probs)
    return {
        "loss": -mean_nll,
        "zlib": -mean_nll / len(zlib.compress(text.encode("utf-8"))),
        "min_k": sum(sorted(token_log_probs)[:k]) / k,
        "min_k_plus_plus": sum(sorted(standardized)[:k]) / k,
    }


def brute_force_auc(members: list[float], nonmembers: list[float]) -> float:
    wins = sum((m > n) + 0.5 * (m == n) for m in members for n in nonmembers)
    return wins / (len(members) * len(nonmembers))


# --- AUC ----------------------------------------------------------------------------------


def test_auc_extremes_and_ties():
    assert auc([1.0, 2.0, 3.0], [1.0, 2.0, 3.0]) == 0.5
    assert auc([5.0, 6.0], [1.0, 2.0, 3.0]) == 1.0
    assert auc([1.0, 2.0], [5.0, 6.0, 7.0]) == 0.0
    # Pairs: 3 vs (1, 3, 3) -> 1 + 0.5 + 0.5; 2 vs (1, 3, 3) -> 1; 1 vs (1, 3, 3) -> 0.5.
    members, nonmembers = [3.0, 2.0, 1.0], [1.0, 3.0, 3.0]
    assert auc(members, nonmembers) == pytest.approx(3.5 / 9)
    assert brute_force_auc(members, nonmembers) == pytest.approx(3.5 / 9)
    rng = random.Random(0)
    for _ in range(20):
        members = [float(rng.randrange(6)) for _ in range(rng.randrange(1, 12))]
        nonmembers = [float(rng.randrange(6)) for _ in range(rng.randrange(1, 12))]
        assert auc(members, nonmembers) == pytest.approx(brute_force_auc(members, nonmembers))
    with pytest.raises(UserError, match="at least one member"):
        auc([], [1.0])


# --- membership scores --------------------------------------------------------------------


@pytest.fixture(scope="module")
def mia_cases(tiny_models):
    cases = {}
    for arch in ARCHITECTURES:
        model = load_tiny(tiny_models, arch)
        rng = random.Random(arch)
        vocab = model.config.vocab_size
        sequences = [[1] + [rng.randrange(3, vocab) for _ in range(n - 1)] for n in MIA_LENGTHS]
        texts = [f"sample {i}: " + "abc" * (i + 1) * 7 for i in range(len(sequences))]
        cases[arch] = (model, sequences, texts)
    return cases


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_membership_scores_match_naive_and_ignore_padding(mia_cases, arch):
    model, sequences, texts = mia_cases[arch]
    # GPT-Neo computes attention scores in float32 even in a float64 model, so its results
    # move by ~1e-8 with the batch shape; a padding leak or a formula error moves them by far more.
    rel = 1e-6 if arch == "gpt_neo" else 1e-9
    for k_percent in (20.0, 50.0):
        expected = [naive_membership(model, s, t, k_percent) for s, t in zip(sequences, texts)]
        batched = membership_scores(model, sequences, texts, k_percent=k_percent, batch_size=3)
        single = membership_scores(model, sequences, texts, k_percent=k_percent, batch_size=1)
        for name in MIA_METRICS:
            want = [row[name] for row in expected]
            assert batched[name] == pytest.approx(want, rel=rel, abs=1e-10), name
            assert single[name] == pytest.approx(batched[name], rel=rel, abs=1e-10), name


def test_membership_user_errors(mia_cases):
    model, sequences, texts = mia_cases["llama"]
    with pytest.raises(UserError, match="one text per sequence"):
        membership_scores(model, sequences, texts[:-1])
    with pytest.raises(UserError, match="k_percent"):
        membership_scores(model, sequences, texts, k_percent=0)
    with pytest.raises(UserError, match="at least 2"):
        membership_scores(model, [[1]], ["x"])


def test_mia_report_uses_scores_and_auc(mia_cases):
    model, sequences, texts = mia_cases["gemma3"]
    forget, reference = sequences[:2], sequences[2:]
    report = mia_report(model, forget, texts[:2], reference, texts[2:], batch_size=2)
    assert set(report) == set(MIA_METRICS)
    forget_scores = membership_scores(model, forget, texts[:2])
    reference_scores = membership_scores(model, reference, texts[2:])
    for name in MIA_METRICS:
        assert report[name]["auc"] == auc(forget_scores[name], reference_scores[name])
        assert report[name]["forget_mean"] == pytest.approx(sum(forget_scores[name]) / 2)
        assert report[name]["reference_mean"] == pytest.approx(sum(reference_scores[name]) / 2)


# --- extraction ---------------------------------------------------------------------------


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_own_greedy_text_is_extractable(tiny_models, arch):
    model = load_tiny(tiny_models, arch)
    rng = random.Random(arch)
    prefix_tokens, suffix_tokens = 9, 12
    prefix = [1] + [rng.randrange(3, model.config.vocab_size) for _ in range(prefix_tokens - 1)]
    suffix = naive_greedy(model, prefix, suffix_tokens)
    copied = prefix + suffix + [5, 6]  # tokens past the suffix are not scored
    changed = {}
    for j in (0, 4, 11):
        wrong = list(suffix)
        wrong[j] = 3 if suffix[j] != 3 else 4
        changed[j] = prefix + wrong
    short = prefix[:5]
    calls = []
    result = extractable(
        model, [copied, short, *changed.values()], prefix_tokens=prefix_tokens,
        suffix_tokens=suffix_tokens, batch_size=2, progress=lambda d, t: calls.append((d, t)),
    )
    assert result["skipped"] == [1]
    assert [s["index"] for s in result["samples"]] == [0, 2, 3, 4]
    assert result["samples"][0] == {
        "index": 0, "exact": True, "longest_prefix_match": suffix_tokens,
        "longest_run": suffix_tokens, "suffix_length": suffix_tokens,
    }
    for sample, j in zip(result["samples"][1:], changed):
        assert not sample["exact"]
        assert sample["longest_prefix_match"] == j
        assert sample["longest_run"] == max(j, suffix_tokens - j - 1)
    assert result["fraction_extractable"] == 0.25
    assert (result["prefix_tokens"], result["suffix_tokens"]) == (prefix_tokens, suffix_tokens)
    assert calls[0] == (0, 4 * suffix_tokens) and calls[-1] == (4 * suffix_tokens,) * 2


def test_longest_run_hand_constructed():
    generated = [1, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7]  # prefix 3 tokens, then 10 sevens
    model = ScriptedLM(generated)
    # Suffix positions 0..9: mismatches at 1 and 5 -> runs of 1, 3 and 4 matches.
    suffix = [7, 9, 7, 7, 7, 9, 7, 7, 7, 7]
    # A shifted copy matches nowhere position by position.
    shifted = [9, 7, 9, 7, 9, 7, 9, 7, 9, 7]
    result = extractable(
        model, [generated[:3] + suffix, generated[:3] + shifted, generated[:3] + suffix[:4]],
        prefix_tokens=3, suffix_tokens=10,
    )
    first, second = result["samples"]
    assert (first["longest_prefix_match"], first["longest_run"], first["exact"]) == (1, 4, False)
    assert (second["longest_prefix_match"], second["longest_run"]) == (0, 1)
    # A sample ending before prefix + suffix is not scored on a shorter suffix: it is skipped.
    assert result["skipped"] == [2] and result["fraction_extractable"] == 0.0
    # BOS is context, not part of the prefix: with text_start 1 the prompt is BOS + 3 tokens.
    with_bos = extractable(model, [[1] + generated[:3] + suffix[:9]], prefix_tokens=3, suffix_tokens=9,
                           text_start=1)
    # The model says 7 everywhere; the suffix is then 7 9 7 7 7 9 7 7 7.
    assert (with_bos["samples"][0]["longest_prefix_match"], with_bos["samples"][0]["longest_run"]) == (1, 3)
    # Counting BOS as a prefix token would shift the suffix by one: 7 7 9 ... matches twice first.
    shifted_by_bos = extractable(model, [[1] + generated[:3] + suffix[:9]], prefix_tokens=3, suffix_tokens=9)
    assert shifted_by_bos["samples"][0]["longest_prefix_match"] == 2
    assert extractable(model, [generated], prefix_tokens=3, suffix_tokens=10)["samples"][0]["exact"]
    assert math.isnan(extractable(model, [[1, 2]], prefix_tokens=3)["fraction_extractable"])


# --- sampled extraction likelihood ----------------------------------------------------------


def test_undial_overlap_is_distinct_ngram_precision():
    # Generated bigrams {1 2, 2 3, 3 1} (1 2 twice counts once); the target's are {2 3, 3 4}.
    assert undial_overlap([1, 2, 3, 1, 2], [2, 3, 4], 2) == pytest.approx(1 / 3)
    # A perfect copy that runs on past the target's end scores below 1: 3 of 5 distinct bigrams.
    assert undial_overlap([5, 6, 7, 8, 9, 10], [5, 6, 7, 8], 2) == pytest.approx(3 / 5)
    assert undial_overlap([5], [5, 6], 2) == 0.0 and undial_overlap([5, 6], [], 2) == 0.0


def test_undial_el_hand_computed():
    model = ScriptedLM(list(range(1, 12)))  # BOS 1, then predicts 2, 3, ..., 11, then 0
    text = [1, 2, 3, 4, 5, 6, 13, 8, 9, 10, 11]  # ten text tokens after BOS; one differs
    kwargs = dict(n=2, text_start=1, window=3, new_tokens=5)
    # Cuts at 3 and 6 text tokens (range(1, 10 // 3)). Cut 3: generates 5 6 7 8 9 against
    # 5 6 13 8 9 10 11 -> bigrams 5-6 and 8-9 of 4: 0.5. Cut 6: 8 9 10 11, then the stop token
    # 0 ends it, against 8 9 10 11 -> 3 of 3.
    scores = undial_extraction_likelihood(model, [text], stop_token_ids=[0], **kwargs)
    assert scores == [[pytest.approx(0.5), pytest.approx(1.0)]]
    assert undial_mean(scores + [[0.0]]) == pytest.approx(1.5 / 3)  # over pairs, not samples
    # Without a stop token the fifth token (0) stays: 8 9 10 11 0 -> 3 of 4 bigrams.
    assert undial_extraction_likelihood(model, [text], **kwargs)[0][1] == pytest.approx(0.75)
    # Decoding and re-encoding (here: dropping token 13) applies to generation and target alike.
    recoded = undial_extraction_likelihood(model, [text], stop_token_ids=[0], recode=lambda t: [x for x in t if x != 13], **kwargs)
    assert recoded[0][0] == pytest.approx(2 / 4)  # target 5 6 8 9 10 11: 5-6, 8-9 still the hits
    with pytest.raises(UserError, match="top_p"):
        undial_extraction_likelihood(model, [text], top_p=0.0)


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_undial_el_seeded_and_independent_of_batching(tiny_models, arch):
    model = load_tiny(tiny_models, arch)
    rng = random.Random(arch)
    own_text = [1] + naive_greedy(model, [1], 23)
    random_text = [1] + [rng.randrange(3, model.config.vocab_size) for _ in range(22)]
    kwargs = dict(n=3, text_start=1, window=5, new_tokens=6, pad_token_id=0)
    sampled = undial_extraction_likelihood(model, [own_text, random_text], seed=3, batch_size=2, **kwargs)
    assert [len(cuts) for cuts in sampled] == [3, 3]  # 23 and 22 text tokens: cuts 5, 10, 15
    assert undial_extraction_likelihood(model, [own_text, random_text], seed=3, batch_size=2, **kwargs) == sampled
    assert undial_extraction_likelihood(model, [own_text, random_text], seed=3, batch_size=1, **kwargs) == sampled
    assert undial_extraction_likelihood(model, [random_text], seed=3, **kwargs) == sampled[1:]
