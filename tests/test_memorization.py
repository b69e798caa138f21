"""Memorization metrics: hand-computed cases, stand-in models with known answers, and the
batched implementation against a naive one (one unbatched full-forward greedy loop per prefix)
on the tiny GPT-Neo, Llama and Gemma-3 models in float64."""

from __future__ import annotations

import random

import pytest
import torch
from transformers import AutoModelForCausalLM
from transformers.modeling_outputs import CausalLMOutputWithPast

from unmemorize.errors import UserError
from unmemorize.metrics import (
    MemorizationResult,
    extraction_likelihood,
    memorization,
    ngram_overlap,
    token_accuracy,
)

from conftest import ARCHITECTURES, naive_greedy

NS = (2, 3)
LENGTHS = (2, 4, 9, 21, 26)  # 21 and 26 exceed the tiny models' sliding window of 16


# --- stand-in models ----------------------------------------------------------------------


class LookupLM(torch.nn.Module):
    """Predicts ``next_token(position, token)`` with certainty; keeps no KV cache."""

    def __init__(self, vocab_size: int, next_token):
        super().__init__()
        self.vocab_size = vocab_size
        self.next_token = next_token
        self.dummy = torch.nn.Parameter(torch.zeros(1))  # gives the metrics a device

    def forward(self, input_ids, attention_mask=None, position_ids=None, **kwargs):
        if position_ids is None:
            position_ids = torch.arange(input_ids.shape[1]).expand_as(input_ids)
        targets = [
            [self.next_token(int(p), int(tok)) for p, tok in zip(pos_row, ids_row)]
            for pos_row, ids_row in zip(position_ids.tolist(), input_ids.tolist())
        ]
        logits = torch.nn.functional.one_hot(torch.tensor(targets), self.vocab_size).double()
        return CausalLMOutputWithPast(logits=logits)


def copying_model(sequence: list[int], vocab_size: int) -> LookupLM:
    """Argmax at position p is sequence[p + 1]: the sequence is fully memorized."""
    return LookupLM(vocab_size, lambda p, tok: sequence[p + 1] if p + 1 < len(sequence) else 0)


def bigram_model(table: dict[int, int], unknown: int, vocab_size: int) -> LookupLM:
    return LookupLM(vocab_size, lambda p, tok: table.get(tok, unknown))


# --- naive reference ----------------------------------------------------------------------


def naive_ma(model, seq: list[int]) -> float:
    predicted = model(torch.tensor([seq])).logits[0].argmax(-1).tolist()
    return sum(predicted[t - 1] == seq[t] for t in range(1, len(seq))) / (len(seq) - 1)


def naive_overlap(generated: list[int], reference: list[int], n: int) -> float:
    ref_grams = [reference[i : i + n] for i in range(len(reference) - n + 1)]
    gen_grams = [generated[i : i + n] for i in range(len(generated) - n + 1)]
    return sum(g in ref_grams for g in gen_grams) / len(ref_grams)


def naive_el(seq: list[int], greedy: dict[int, list[int]], n: int, stride: int) -> float:
    T = len(seq)
    scores = [naive_overlap(greedy[t], seq[t:], n) for t in range(1, T, stride) if T - t >= n]
    return sum(scores) / len(scores) if scores else 0.0


def mixed_sequence(model, length: int, rng: random.Random, vocab_size: int) -> list[int]:
    """Half the tokens the model's own greedy choice, half random: both matched and mismatched
    positions, so the identity and the generation path are both exercised."""
    seq = [1]
    while len(seq) < length:
        if rng.random() < 0.5:
            seq.append(naive_greedy(model, seq, 1)[0])
        else:
            seq.append(rng.randrange(3, vocab_size))
    return seq


@pytest.fixture(scope="module")
def reference_cases(tiny_models):
    """Per architecture: float64 model, sequences, naive MA and naive greedy continuations."""
    cases = {}
    for arch in ARCHITECTURES:
        model = AutoModelForCausalLM.from_pretrained(tiny_models[arch]).double().eval()
        rng = random.Random(arch)
        with torch.inference_mode():
            sequences = [
                mixed_sequence(model, length, rng, model.config.vocab_size) for length in LENGTHS
            ]
            ma = [naive_ma(model, seq) for seq in sequences]
            greedy = [
                {t: naive_greedy(model, seq[:t], len(seq) - t) for t in range(1, len(seq))}
                for seq in sequences
            ]
        cases[arch] = (model, sequences, ma, greedy)
    return cases


# --- tests --------------------------------------------------------------------------------


def test_ngram_overlap_hand_counted():
    reference = [1, 2, 1, 2, 3]  # bigrams 12 21 12 23 (4); trigrams 121 212 123 (3)
    # Generated bigrams 12 21 12 21: every one occurs in the reference, counted with multiplicity.
    assert ngram_overlap([1, 2, 1, 2, 1], reference, 2) == 1.0
    # 12 25 51 12: two hits out of four reference bigrams.
    assert ngram_overlap([1, 2, 5, 1, 2], reference, 2) == 0.5
    assert ngram_overlap([1, 2, 1, 2, 1], reference, 3) == 1.0  # 121 212 121
    assert ngram_overlap([1, 2, 5, 1, 2], reference, 3) == 0.0
    assert ngram_overlap([9, 1, 2, 3, 9], reference, 3) == pytest.approx(1 / 3)  # only 123
    assert ngram_overlap([1, 2], [1, 2], 3) is None  # reference has no trigram
    assert ngram_overlap([1], [1, 2], 2) == 0.0  # generated too short to hit anything


def test_el_hand_computed_and_eos_does_not_stop_generation():
    # The model memorized 1 5 6 <eos>=2 7 8 9 as bigrams; unknown tokens lead to 10, then 10 10...
    table = {1: 5, 5: 6, 6: 2, 2: 7, 7: 8, 8: 9}
    model = bigram_model(table, unknown=10, vocab_size=16)
    seq = [1, 11, 6, 2, 7, 8, 9]  # T = 7
    # Predictions after x_<t, t = 1..6: 5 10 2 7 8 9 -> mismatches at t = 1, 2; MA = 4/6.
    # g_1 = 5 6 2 7 8 9 (generated through <eos>) vs suffix 11 6 2 7 8 9: bigrams 4/5 hit.
    # g_2 = 10 10 10 10 10: 0. t = 3, 4, 5 are predicted to the end: 1 each. t = 6 has no bigram.
    result = memorization(model, [seq], ns=(2, 5, 6, 7), el_batch_size=2)
    assert result.ma == [pytest.approx(4 / 6)]
    assert result.el[2] == [pytest.approx((0.8 + 0 + 1 + 1 + 1) / 5)]  # normalizer T - n = 5
    # 5-grams: t = 1 hits 1 of 2 (6 2 7 8 9), t = 2 hits 0 of 1: (0.5 + 0) / 2.
    assert result.el[5] == [pytest.approx(0.25)]
    assert result.el[6] == [0.0]  # t = 1 only: 5 6 2 7 8 9 != 11 6 2 7 8 9
    assert result.el[7] == [0.0]  # T - n = 0: no 7-gram anywhere, defined as 0.0
    # Stride 2 scores t = 1, 3, 5 and divides by those three.
    strided = extraction_likelihood(model, [seq], ns=(2,), stride=2)
    assert strided[2] == [pytest.approx((0.8 + 1 + 1) / 3)]


def test_copying_model_scores_one_and_wrong_model_zero():
    seq = [1, 7, 3, 9, 3, 9, 4, 12, 5, 6, 8, 3, 9, 4]  # repeats: lookup is by position
    result = memorization(copying_model(seq, 16), [seq], ns=(2, 5))
    assert result.means() == {"ma": 1.0, "el_2": 1.0, "el_5": 1.0}
    wrong = LookupLM(16, lambda p, tok: 2)  # always <eos>, which the sequence never contains
    result = memorization(wrong, [seq, seq[:5]], ns=(2, 5), el_batch_size=3)
    assert result.ma == [0.0, 0.0]
    assert result.el == {2: [0.0, 0.0], 5: [0.0, 0.0]}


@pytest.mark.parametrize("batch_size", [1, 3])
@pytest.mark.parametrize("stride", [1, 3])
@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_matches_naive_implementation(reference_cases, arch, stride, batch_size):
    model, sequences, ma, greedy = reference_cases[arch]
    result = memorization(
        model, sequences, ns=NS, el_stride=stride, batch_size=batch_size, el_batch_size=batch_size
    )
    assert result.ma == pytest.approx(ma, abs=1e-12)
    for n in NS:
        expected = [naive_el(seq, g, n, stride) for seq, g in zip(sequences, greedy)]
        assert result.el[n] == pytest.approx(expected, abs=1e-12), n


def test_public_functions_agree_and_report_progress(reference_cases):
    model, sequences, ma, greedy = reference_cases["gemma3"]
    model.train()
    calls = []
    el = extraction_likelihood(
        model, sequences, ns=(3,), batch_size=4, progress=lambda d, t: calls.append((d, t))
    )
    assert model.training  # the caller's mode comes back
    model.eval()
    assert el[3] == pytest.approx([naive_el(s, g, 3, 1) for s, g in zip(sequences, greedy)])
    assert token_accuracy(model, sequences, batch_size=2) == pytest.approx(ma)
    total = calls[-1][1]
    assert total > 0 and calls[-1] == (total, total)
    assert [d for d, _ in calls] == sorted(d for d, _ in calls)


def test_skipping_el():
    seq = [1, 2, 3, 4]
    result = memorization(copying_model(seq, 8), [seq], compute_el=False)
    assert result.el == {} and result.ma == [1.0]


def test_result_views():
    result = MemorizationResult(ma=[1.0, 0.5], el={10: [0.5, 0.0], 5: [1.0, 0.0]})
    assert result.means() == {"ma": 0.75, "el_5": 0.5, "el_10": 0.25}
    assert result.per_sample() == [
        {"ma": 1.0, "el_5": 1.0, "el_10": 0.5},
        {"ma": 0.5, "el_5": 0.0, "el_10": 0.0},
    ]
    assert result.to_json() == {"mean": result.means(), "samples": result.per_sample()}


def test_user_errors():
    model = copying_model([1, 2, 3], 8)
    with pytest.raises(UserError, match="sequence 1 has 1 token.*at least 2"):
        memorization(model, [[1, 2, 3], [1]])
    with pytest.raises(UserError, match="at least 2"):
        token_accuracy(model, [[]])
    with pytest.raises(UserError, match="n-gram size"):
        memorization(model, [[1, 2, 3]], ns=(0,))
    with pytest.raises(UserError, match="n-gram size"):
        ngram_overlap([1], [1], 0)
    with pytest.raises(UserError, match="stride"):
        memorization(model, [[1, 2, 3]], el_stride=0)
    with pytest.raises(UserError, match="stride"):
        extraction_likelihood(model, [[1, 2, 3]], stride=0)
