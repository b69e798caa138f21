"""Decoding and exact-EL speed of unmemorize against transformers' ``model.generate``.

    .venv/bin/python benchmarks/perf_decoding.py [--model gemma-3-270m] [--threads N]
        [--batch 32] [--prompt-tokens 64] [--new-tokens 64] [--el-samples 4] [--el-tokens 96]

prints one JSON object: ``{"greedy_decoding": {...}, "exact_el": {...}}``. Both functions can
be called on their own (the main benchmark script does). Timings on a shared machine are noisy:
compare the ratios measured side by side in one run, not absolute numbers across runs.
"""

from __future__ import annotations

import argparse
import csv
import json
import time

import torch

from unmemorize.metrics.decoding import choose_argmax, decode, evaluating
from unmemorize.metrics.memorization import (
    _check_sequences,
    extraction_likelihood,
    first_mismatches,
    greedy_continuations,
    ngram_overlap,
    teacher_forced_pass,
)
from unmemorize.paths import data_path

from perf_step import forward_flops_per_token  # a sibling script


def matmul_peak_gflops(size: int = 4096, repeats: int = 5) -> float:
    """Best fp32 GFLOP/s of a size x size matrix product, on the current torch threads."""
    a, b = torch.randn(size, size), torch.randn(size, size)
    a @ b  # warm-up
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - start)
    return 2 * size**3 / best / 1e9


def _prompts(tokenizer, batch: int, prompt_tokens: int) -> list[list[int]]:
    """``batch`` prompts of exactly ``prompt_tokens`` tokens from unseen Pile documents."""
    path = data_path("reference/pile.csv")
    prompts = []
    with open(path, newline="", encoding="utf-8") as handle:
        for row in csv.DictReader(handle):
            ids = tokenizer(row["text"])["input_ids"]
            if len(ids) >= prompt_tokens:
                prompts.append(ids[:prompt_tokens])
            if len(prompts) == batch:
                return prompts
    raise RuntimeError(f"fewer than {batch} documents of {prompt_tokens} tokens in {path}")


def _generate(model, prompts: list[list[int]], new_tokens: int, pad: int) -> list[list[int]]:
    """transformers' greedy generate, left padded, one batch."""
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), pad, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for row, prompt in enumerate(prompts):
        ids[row, width - len(prompt) :] = torch.tensor(prompt)
        mask[row, width - len(prompt) :] = 1
    out = model.generate(input_ids=ids, attention_mask=mask, do_sample=False,
                         max_new_tokens=new_tokens, pad_token_id=pad)
    return out[:, width:].tolist()


def _same_until_eos(ours: list[int], theirs: list[int], eos) -> bool:
    """generate stops a row at end-of-text (then pads it); ours does not. Equal up to there."""
    eos_ids = set(eos if isinstance(eos, (list, tuple)) else [eos] if eos is not None else [])
    for a, b in zip(ours, theirs):
        if a != b:
            return False
        if b in eos_ids:
            return True
    return True


def greedy_decoding(model, tokenizer, batch: int = 32, prompt_tokens: int = 64,
                    new_tokens: int = 64, peak: float | None = None) -> dict:
    """Greedy decoding of ``batch`` prompts: ours (:func:`decode`) vs ``model.generate``; the
    share of ``peak`` GFLOP/s (measured after the timings when not given)."""
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    prompts = _prompts(tokenizer, batch, prompt_tokens)
    # Attention scores left out (context 0): the decoder's and output layer's products.
    per_token = forward_flops_per_token(model, context=0)
    with evaluating(model):
        decode(model, prompts[:2], [2, 2], choose_argmax, pad_token_id=pad)  # warm-up, screen build
        start = time.perf_counter()
        ours = decode(model, prompts, [new_tokens] * batch, choose_argmax, pad_token_id=pad)
        ours_s = time.perf_counter() - start
        start = time.perf_counter()
        theirs = _generate(model, prompts, new_tokens, pad)
        theirs_s = time.perf_counter() - start
    peak = peak or matmul_peak_gflops()
    tokens = batch * new_tokens
    eos = model.generation_config.eos_token_id
    ours_gflops = per_token * tokens / ours_s / 1e9
    # Both also run the prompts through the decoder (no output layer): work the per-token
    # figure leaves out.
    prompt_flops = forward_flops_per_token(model, context=0, output_layer=False) * sum(len(p) for p in prompts)
    return {
        "batch": batch, "prompt_tokens": prompt_tokens, "new_tokens": new_tokens,
        "threads": torch.get_num_threads(),
        "gflop_per_token": per_token / 1e9,
        "ours_tokens_per_s": tokens / ours_s, "generate_tokens_per_s": tokens / theirs_s,
        "speedup_vs_generate": theirs_s / ours_s,
        "ours_gflops": ours_gflops, "generate_gflops": per_token * tokens / theirs_s / 1e9,
        "ours_gflops_with_prompt": (per_token * tokens + prompt_flops) / ours_s / 1e9,
        "matmul_peak_gflops": peak, "ours_share_of_peak": ours_gflops / peak,
        "identical_tokens": all(_same_until_eos(a, b, eos) for a, b in zip(ours, theirs)),
        "rows_differing": sum(not _same_until_eos(a, b, eos) for a, b in zip(ours, theirs)),
    }


def exact_el(model, tokenizer, sequences, n: int = 10, batch_size: int = 128,
             measured_prefixes: int = 3) -> dict:
    """Exact EL_n (stride 1) of ``sequences`` (token ids): ours vs per-prefix greedy generate.

    Per-prefix generate on every prefix would take ~35 min for 4 x 96 tokens, so it runs on
    ``measured_prefixes`` prefixes per sample (spread over the sample) and its time is
    extrapolated linearly by generated tokens to all scored prefixes. Its continuations are
    compared token for token with ours (which the identity and shared states produce) on
    those prefixes, and so are their n-gram overlaps."""
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    sequences = _check_sequences(sequences)
    with evaluating(model):
        extraction_likelihood(model, [sequences[0][:16]], ns=(2,), pad_token_id=pad)  # warm-up
        start = time.perf_counter()
        values = extraction_likelihood(model, sequences, ns=(n,), stride=1, batch_size=batch_size,
                                       pad_token_id=pad)[n]
        ours_s = time.perf_counter() - start
        all_tokens = sum(len(s) - t for s in sequences for t in range(1, len(s)) if len(s) - t >= n)
        chosen = []
        for i, seq in enumerate(sequences):
            last = len(seq) - n
            chosen += [(i, t) for t in sorted({1 + k * (last - 1) // max(1, measured_prefixes - 1)
                                               for k in range(measured_prefixes)})]
        start = time.perf_counter()
        reference = {(i, t): _generate(model, [sequences[i][:t]], len(sequences[i]) - t, pad)[0]
                     for i, t in chosen}
        generate_s = time.perf_counter() - start
        ours_continuations = _our_continuations(model, sequences, chosen, pad)
    measured_tokens = sum(len(sequences[i]) - t for i, t in chosen)
    eos = model.generation_config.eos_token_id
    same = [_same_until_eos(ours_continuations[job], reference[job], eos) for job in chosen]
    overlaps_equal = all(
        ngram_overlap(ours_continuations[(i, t)], sequences[i][t:], n)
        == ngram_overlap(reference[(i, t)], sequences[i][t:], n)
        for i, t in chosen if len(reference[(i, t)]) == len(sequences[i]) - t
    )
    extrapolated = generate_s * all_tokens / measured_tokens
    return {
        "samples": len(sequences), "tokens_per_sample": [len(s) for s in sequences], "n": n,
        "threads": torch.get_num_threads(), "el": values, "ours_s": ours_s,
        "generate_measured_prefixes": len(chosen), "generate_measured_tokens": measured_tokens,
        "generate_measured_s": generate_s, "naive_tokens_all_prefixes": all_tokens,
        "generate_extrapolated_s": extrapolated,
        "note": "per-prefix generate timed on the measured prefixes only and extrapolated "
                "linearly by generated tokens to all scored prefixes",
        "speedup_vs_per_prefix_generate": extrapolated / ours_s,
        "continuations_identical_on_measured": all(same),
        "overlaps_equal_on_measured": overlaps_equal,
    }


def _our_continuations(model, sequences, chosen, pad) -> dict:
    """Our greedy continuation of each chosen prefix, through the identity and shared states."""
    prepared = teacher_forced_pass(model, sequences, batch_size=8, pad_token_id=pad, keep_states=True)
    first = first_mismatches(sequences, prepared.predictions)
    requests = {}
    for i, t in chosen:
        m = first[i][t]
        if m is not None:
            requests[(i, m)] = max(requests.get((i, m), 0), len(sequences[i]) - m)
    continuations = greedy_continuations(model, sequences, prepared, requests, batch_size=64,
                                         pad_token_id=pad)
    result = {}
    for i, t in chosen:
        seq, m = sequences[i], first[i][t]
        result[(i, t)] = seq[t:] if m is None else seq[t:m] + continuations[(i, m)][: len(seq) - m]
    return result


def forget_sequences(tokenizer, samples: int, tokens: int) -> list[list[int]]:
    path = data_path("extraction/forget_sets/lm_extraction_32_0.csv")
    with open(path, newline="", encoding="utf-8") as handle:
        texts = [row["text"] for row in csv.DictReader(handle)]
    return [tokenizer(text)["input_ids"][:tokens] for text in texts[:samples]]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="gemma-3-270m")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--prompt-tokens", type=int, default=64)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--el-samples", type=int, default=4)
    parser.add_argument("--el-tokens", type=int, default=96)
    parser.add_argument("--skip", choices=("decoding", "el"), default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    from unmemorize.models import load_model

    lm = load_model(args.model)
    results = {}
    if args.skip != "decoding":
        results["greedy_decoding"] = greedy_decoding(
            lm.model, lm.tokenizer, batch=args.batch, prompt_tokens=args.prompt_tokens,
            new_tokens=args.new_tokens)
    if args.skip != "el":
        sequences = forget_sequences(lm.tokenizer, args.el_samples, args.el_tokens)
        results["exact_el"] = exact_el(lm.model, lm.tokenizer, sequences)
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
