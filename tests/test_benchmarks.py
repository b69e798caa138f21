"""The performance benchmarks on tiny models: the work they count, and the comparisons they time
must compare equal work (our fast paths give the tokens of the plain ones they are timed
against), or their ratios mean nothing."""

from __future__ import annotations

import random
import sys
from pathlib import Path

import pytest
from transformers import AutoModelForCausalLM, AutoTokenizer

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import perf_decoding  # noqa: E402  (benchmark scripts, not a package)
import perf_step  # noqa: E402


def test_flops_per_token_count_every_linear_layer_by_hand(tiny_models):
    model = AutoModelForCausalLM.from_pretrained(tiny_models["llama"])
    c = model.config
    head_dim = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
    per_layer = (2 * c.hidden_size * c.num_attention_heads * head_dim  # q and o
                 + 2 * c.hidden_size * c.num_key_value_heads * head_dim  # k and v
                 + 3 * c.hidden_size * c.intermediate_size)  # gate, up, down
    decoder = c.num_hidden_layers * per_layer
    head = c.vocab_size * c.hidden_size
    attention = 2 * c.num_hidden_layers * c.num_attention_heads * head_dim * 7
    assert perf_step.forward_flops_per_token(model, context=0) == 2.0 * (decoder + head)
    assert perf_step.forward_flops_per_token(model, context=0, output_layer=False) == 2.0 * decoder
    assert perf_step.forward_flops_per_token(model, context=7) == 2.0 * (decoder + head + attention)


@pytest.mark.parametrize("arch", ["llama", "gemma3"])
def test_exact_el_benchmark_compares_the_same_continuations(tiny_models, arch):
    model = AutoModelForCausalLM.from_pretrained(tiny_models[arch]).eval()
    tokenizer = AutoTokenizer.from_pretrained(tiny_models[arch])
    rng = random.Random(3)
    sequences = [[rng.randrange(3, model.config.vocab_size) for _ in range(24)] for _ in range(3)]
    result = perf_decoding.exact_el(model, tokenizer, sequences, n=2, batch_size=4, measured_prefixes=3)
    assert result["generate_measured_prefixes"] == 9
    assert result["continuations_identical_on_measured"] is True
    assert result["overlaps_equal_on_measured"] is True
    # Every prefix with at least n tokens after it, summed: (24 - t) for t = 1..22.
    assert result["naive_tokens_all_prefixes"] == 3 * sum(24 - t for t in range(1, 23))


def test_greedy_decoding_benchmark_matches_generate(tiny_models, shared_data):
    model = AutoModelForCausalLM.from_pretrained(tiny_models["gemma3"]).eval()
    tokenizer = AutoTokenizer.from_pretrained(tiny_models["gemma3"])
    result = perf_decoding.greedy_decoding(model, tokenizer, batch=3, prompt_tokens=8, new_tokens=5, peak=100.0)
    assert (result["identical_tokens"], result["rows_differing"]) == (True, 0)
    assert result["gflop_per_token"] == perf_step.forward_flops_per_token(model, context=0) / 1e9
    assert result["ours_share_of_peak"] == pytest.approx(result["ours_gflops"] / 100.0)
