"""The fast decoding and evaluation paths against plain references computed another way, on the
tiny GPT-Neo, Llama and Gemma-3 models: greedy tokens must be identical (float64 models), the
bfloat16-screened argmax must equal the fp32 argmax exactly, and metrics built from shared
teacher-forced passes must equal the functions that compute them on their own."""

from __future__ import annotations

import random

import pytest
import torch
import torch.nn.functional as F
from transformers import AutoModelForCausalLM

from conftest import ARCHITECTURES, naive_greedy
from unmemorize.metrics import decoding
from unmemorize.metrics.decoding import (
    ModelParts,
    choose_argmax,
    decode,
    decode_from_states,
    default_threads,
    evaluating,
    greedy_tokens,
    prefix_states,
    split_model,
)
from unmemorize.metrics.memorization import memorization, token_accuracy
from unmemorize.metrics.privacy import (
    UndialEL,
    extractable,
    membership_scores,
    memorization_report,
    undial_extraction_likelihood,
)


@pytest.fixture(scope="module")
def float64_models(tiny_models):
    return {
        arch: AutoModelForCausalLM.from_pretrained(tiny_models[arch]).double().eval()
        for arch in ARCHITECTURES
    }



def random_sequences(model, lengths, seed) -> list[list[int]]:
    rng = random.Random(seed)
    vocab = model.config.vocab_size
    return [[1] + [rng.randrange(3, vocab) for _ in range(n - 1)] for n in lengths]


@pytest.fixture
def screen_everywhere(monkeypatch):
    """Screen every fp32 output layer, however small, whatever the CPU: the screen's result does
    not depend on hardware bfloat16 support, only its speed does."""
    monkeypatch.setattr(decoding, "SCREEN_MIN_VOCAB", 0)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: True, raising=False)


# --- the screened argmax --------------------------------------------------------------------


def head_parts(weight: torch.Tensor) -> ModelParts:
    head = torch.nn.Linear(weight.shape[1], weight.shape[0], bias=False)
    head.weight.data = weight
    return ModelParts(decoder=torch.nn.Identity(), head=head, softcap=None, cache_keyword="cache",
                      device=torch.device("cpu"))


def test_screened_argmax_equals_fp32_argmax(screen_everywhere):
    generator = torch.Generator().manual_seed(0)
    vocab, dims = 3000, 48
    weight = torch.randn(vocab, dims, generator=generator) * 0.2
    # Near-ties no bfloat16 product can tell apart: rows one float32 ulp apart, and exact
    # duplicates, where the fp32 argmax must keep the first index.
    weight[101] = weight[100]
    weight[1001] = torch.nextafter(weight[1000], torch.full_like(weight[1000], 10.0))
    weight[2000:2016] = weight[2999]
    parts = head_parts(weight)
    hidden = torch.randn(200, dims, generator=generator) * 30
    hidden[:20] = weight[100] * 50  # rows whose maximum is the duplicated pair
    hidden[20:40] = weight[1000] * 50
    hidden[40:60] = weight[2999] * 50
    with torch.inference_mode():
        for rows in (1, 3, 16, 200):
            expected = F.linear(hidden[:rows], weight).argmax(dim=-1)
            assert torch.equal(greedy_tokens(parts, hidden[:rows]), expected)
        assert set(greedy_tokens(parts, hidden[:60]).tolist()) >= {100, 2000}


def test_screen_follows_in_place_weight_changes(screen_everywhere):
    """A metric call after the weights changed in place, even through ``.data`` (which keeps
    the version counter, as PEFT's adapter merge does), must not use the old screen."""
    generator = torch.Generator().manual_seed(1)
    weight = torch.randn(500, 32, generator=generator)
    hidden = torch.randn(64, 32, generator=generator)
    parts = head_parts(weight)
    with torch.inference_mode():
        assert torch.equal(greedy_tokens(parts, hidden), F.linear(hidden, weight).argmax(-1))
    version = parts.head.weight._version
    parts.head.weight.data.mul_(-1.0)  # every argmax changes
    assert parts.head.weight._version == version
    parts = head_parts(parts.head.weight.data)  # what split_model makes for the next call
    with torch.inference_mode():
        assert torch.equal(greedy_tokens(parts, hidden), F.linear(hidden, parts.head.weight).argmax(-1))


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_screened_decoding_and_ma_equal_fp32_argmax(tiny_models, arch, screen_everywhere):
    model = AutoModelForCausalLM.from_pretrained(tiny_models[arch]).float().eval()
    sequences = random_sequences(model, (5, 17, 30), arch)
    parts = split_model(model)
    with evaluating(model):
        generated = decode(model, sequences, [12, 12, 12], choose_argmax, pad_token_id=0)
        plain = decoding._decode_generic(
            model, sequences, [12, 12, 12], choose_argmax, pad_token_id=0, stop=None, on_tokens=None
        )
        hidden = parts.hidden(torch.tensor([sequences[2]]), torch.ones(1, 30, dtype=torch.long),
                              torch.arange(30)[None])[0]
        assert torch.equal(greedy_tokens(parts, hidden), parts.logits(hidden).argmax(-1))
    # The generic loop's logits come from a differently shaped forward; in fp32 that can only
    # move near-ties, which these random models do not have.
    assert generated == plain
    expected_ma = [
        float((model(torch.tensor([s])).logits[0, :-1].argmax(-1) == torch.tensor(s[1:])).double().mean())
        for s in sequences
    ]
    assert token_accuracy(model, sequences, batch_size=2) == pytest.approx(expected_ma, abs=1e-12)


# --- decoding -------------------------------------------------------------------------------


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_fast_decode_equals_naive_greedy(float64_models, arch):
    model = float64_models[arch]
    assert split_model(model) is not None  # the fast path is the one under test
    # Prefix lengths 1 (all-padding context), short, and past the sliding window of 16.
    prefixes = random_sequences(model, (1, 4, 20, 9), arch)
    lengths = [14, 3, 9, 1]
    calls = []
    with evaluating(model):
        generated = decode(model, prefixes, lengths, choose_argmax, pad_token_id=0,
                           on_tokens=calls.append)
    assert generated == [naive_greedy(model, p, n) for p, n in zip(prefixes, lengths)]
    assert sum(calls) == sum(lengths)


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_fast_decode_stop_equals_generic_loop(float64_models, arch):
    model = float64_models[arch]
    prefixes = random_sequences(model, (3, 11, 6), arch + "stop")
    expected = [naive_greedy(model, p, 10) for p in prefixes]
    stop_token = expected[1][4]  # row 1 stops there (and any row that meets it earlier)
    stop = lambda tokens: tokens == stop_token  # noqa: E731
    with evaluating(model):
        fast = decode(model, prefixes, [10, 10, 10], choose_argmax, pad_token_id=0, stop=stop)
        generic = decoding._decode_generic(
            model, prefixes, [10, 10, 10], choose_argmax, pad_token_id=0, stop=stop, on_tokens=None
        )
    assert fast == generic
    assert fast == [row[: row.index(stop_token)] if stop_token in row else row for row in expected]


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_continuous_batching_from_states_equals_naive(float64_models, arch):
    model = float64_models[arch]
    sequences = random_sequences(model, (26, 21, 9), arch + "states")
    parts = split_model(model)
    # More jobs than rows: finished rows are replaced while others run on.
    jobs = [(0, 1, 20), (0, 13, 12), (1, 5, 15), (1, 20, 1), (2, 2, 6), (0, 24, 2), (2, 8, 3)]
    calls = []
    with evaluating(model):
        states = prefix_states(parts, sequences, batch_size=2, pad_token_id=0)
        generated = decode_from_states(
            parts, [states[i] for i, _, _ in jobs], [cut for _, cut, _ in jobs],
            [sequences[i][cut] for i, cut, _ in jobs], [n for _, _, n in jobs], None,
            batch_size=3, pad_token_id=0, on_tokens=calls.append,
        )
    expected = [naive_greedy(model, sequences[i][: cut + 1], n) for i, cut, n in jobs]
    assert generated == expected
    assert sum(calls) == sum(n for _, _, n in jobs)


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_sampled_undial_el_from_states_equals_from_scratch(float64_models, arch):
    model = float64_models[arch]
    sequences = random_sequences(model, (24, 19, 12), arch + "paper")
    job = UndialEL(sequences, n=2, window=4, new_tokens=7, top_k=5, top_p=0.9, text_start=1, seed=5, batch_size=3)
    parts = split_model(model)
    with evaluating(model):
        states = prefix_states(parts, sequences, batch_size=3, pad_token_id=0)
        from_states = job.run(model, states, parts, pad_token_id=0)
        from_scratch = job.run(model, None, None, pad_token_id=0)
    assert from_states == from_scratch
    assert undial_extraction_likelihood(model, sequences, n=2, window=4, new_tokens=7, top_k=5, top_p=0.9,
                                        text_start=1, seed=5, batch_size=2) == from_states


# --- one shared pass for the memorization suite -----------------------------------------------


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_shared_pass_equals_separate_metrics(float64_models, arch):
    model = float64_models[arch]
    rng = random.Random(arch)
    sequences = random_sequences(model, (30, 25, 8, 18), arch + "shared")
    # A sample the model continues as it would itself: its suffix is extractable.
    own = [1, 5, 7] + naive_greedy(model, [1, 5, 7], 26)
    sequences.append(own)
    texts = [f"text {i} " + "xyz" * rng.randrange(1, 9) for i in range(len(sequences))]
    paper = {"n": 3, "window": 6, "new_tokens": 9, "seed": 2, "limit": 4}
    result = memorization_report(
        model, sequences, texts, ns=(2, 4), el_stride=3, batch_size=2, el_batch_size=3,
        extraction=(10, 12), text_start=1, undial_el=paper,
    )
    alone = memorization(model, sequences, ns=(2, 4), el_stride=3, batch_size=3, el_batch_size=2)
    assert result.ma == alone.ma and result.el == alone.el
    assert result.membership == membership_scores(model, sequences, texts, batch_size=2)
    assert result.extraction == extractable(model, sequences, prefix_tokens=10, suffix_tokens=12, text_start=1)
    assert result.extraction["samples"][-1]["exact"]
    assert result.undial_el == undial_extraction_likelihood(
        model, sequences[:4], n=3, window=6, new_tokens=9, seed=2
    )


# --- threads ----------------------------------------------------------------------------------


def test_default_threads(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert default_threads() == 3
    monkeypatch.delenv("OMP_NUM_THREADS")
    monkeypatch.delenv("MKL_NUM_THREADS", raising=False)
    monkeypatch.setattr(decoding.os, "sched_getaffinity", lambda _pid: {0, 1, 2, 3}, raising=False)
    for busy, expected in ((0.2, 4), (2.6, 1), (9.0, 1)):
        monkeypatch.setattr(decoding, "_busy_cores", lambda _s, _c, b=busy: b)
        assert default_threads() == expected
    # Without /proc/stat, the load average stands in.
    monkeypatch.setattr(decoding, "_busy_cores", lambda _s, _c: None)
    monkeypatch.setattr(decoding.os, "getloadavg", lambda: (1.4, 0.0, 0.0))
    assert default_threads() == 3


def test_busy_cores_from_two_readings_of_proc_stat(monkeypatch):
    """Two /proc/stat readings 0.5 s apart: 170 jiffies passed on all cores, 90 of them idle
    (idle + iowait), so 80/170 of 2 cores were busy; this process used 0.2 s of them."""
    import io
    from types import SimpleNamespace

    readings = iter(["cpu 100 0 50 800 50 0 0 0 0 0\n", "cpu 160 0 70 880 60 0 0 0 0 0\n"])
    times = iter([SimpleNamespace(user=1.0, system=0.5), SimpleNamespace(user=1.15, system=0.55)])
    monkeypatch.setattr(decoding, "open", lambda path: io.StringIO(next(readings)), raising=False)
    monkeypatch.setattr(decoding.time, "sleep", lambda seconds: None)
    monkeypatch.setattr(decoding.os, "times", lambda: next(times))
    assert decoding._busy_cores(0.5, 2) == pytest.approx(80 / 170 * 2 - 0.2 / 0.5)


class TableLM(torch.nn.Module):
    """A stand-in without a decoder to split off or a KV cache: logits depend on the token and
    its position through a fixed random table (float64)."""

    def __init__(self, vocab_size: int = 11):
        super().__init__()
        generator = torch.Generator().manual_seed(3)
        self.table = torch.nn.Parameter(torch.randn(64, vocab_size, vocab_size, generator=generator, dtype=torch.float64))

    def forward(self, input_ids, attention_mask=None, position_ids=None, **kwargs):
        from transformers.modeling_outputs import CausalLMOutputWithPast

        if position_ids is None:
            position_ids = torch.arange(input_ids.shape[1]).expand_as(input_ids)
        return CausalLMOutputWithPast(logits=self.table[position_ids, input_ids] * 3)


def test_shared_pass_without_split_equals_separate_metrics():
    model = TableLM()
    assert split_model(model) is None
    rng = random.Random(7)
    sequences = [[1] + [rng.randrange(11) for _ in range(n - 1)] for n in (20, 14, 9)]
    texts = ["a" * 10, "b" * 30, "abc" * 5]
    result = memorization_report(model, sequences, texts, ns=(2,), el_stride=2, batch_size=2,
                                 el_batch_size=2, extraction=(5, 6), undial_el={"n": 2, "window": 5, "new_tokens": 4})
    assert result.el == memorization(model, sequences, ns=(2,), el_stride=2, el_batch_size=3).el
    assert result.membership == membership_scores(model, sequences, texts, batch_size=3)
    assert result.extraction == extractable(model, sequences, prefix_tokens=5, suffix_tokens=6)
    assert result.undial_el == undial_extraction_likelihood(model, sequences, n=2, window=5, new_tokens=4)
