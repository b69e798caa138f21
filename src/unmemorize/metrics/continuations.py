"""Greedy continuations of forget-set prefixes before and after unlearning, each token marked by
whether it is the memorized next token: what an unlearning report shows as match masks (or, with
``--show-text``, as highlighted text)."""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from typing import Any

from .decoding import choose_argmax, decode, evaluating

DEFAULT_NEW_TOKENS = 32


def prefix_length(item) -> int:
    """Tokens of a forget sequence given as the prompt: the prefix the data names
    (``prefix`` + ``suffix`` JSONL), else the first half. At least one token, and at least one
    left to continue."""
    ids, prefix_chars = item.input_ids, item.example.prefix_chars
    if prefix_chars is not None:
        cut = 0
        while cut < len(ids) and item.offsets[cut][1] <= prefix_chars:
            cut += 1
    else:
        cut = len(ids) // 2
    return max(1, min(cut, len(ids) - 1))


def _match_record(generated: list[int], truth: list[int]) -> dict:
    match = [int(g == t) for g, t in zip(generated, truth)]
    longest = run = 0
    for hit in match:
        run = run + 1 if hit else 0
        longest = max(longest, run)
    return {"match": match, "matched": sum(match), "longest_run": longest}


def token_pieces(tokenizer, context: list[int], ids: list[int]) -> list[str]:
    """The text each token adds after ``context``, decoded incrementally so that byte-level
    and SentencePiece tokens keep their spaces and multi-byte characters."""
    def text(tokens: list[int]) -> str:
        return tokenizer.decode(tokens, skip_special_tokens=True, clean_up_tokenization_spaces=False)

    pieces, previous = [], text(context)
    for i in range(len(ids)):
        current = text(context + ids[: i + 1])
        pieces.append(current[len(previous):] if current.startswith(previous) else text(ids[i : i + 1]))
        previous = current
    return pieces


def forget_continuations(
    model,
    tokenizer,
    items: Sequence,
    *,
    original=None,
    adapters_off: bool = False,
    new_tokens: int = DEFAULT_NEW_TOKENS,
    show_text: bool = False,
) -> dict:
    """Greedy continuations of the first forget prefixes, before unlearning and after, each
    token marked by whether it is the true next token. ``model`` is the unlearned network;
    the original is ``model`` with its LoRA adapters off (``adapters_off``), or ``original``
    (a frozen copy); with neither, only "after" is generated. The text is kept only with
    ``show_text``: the default record is the match masks alone."""
    record = {"new_tokens": new_tokens, "prefix": "the prefix the data gives, else the first half of each sequence",
              "text_stored": show_text, "samples": []}
    if not items:
        return record
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (tokenizer.eos_token_id or 0)
    cuts = [prefix_length(item) for item in items]
    prefixes = [item.input_ids[:cut] for item, cut in zip(items, cuts)]
    truths = [item.input_ids[cut : cut + new_tokens] for item, cut in zip(items, cuts)]

    def generate(net, context=None) -> list[list[int]]:
        with context if context is not None else contextlib.nullcontext(), evaluating(net):
            return decode(net, prefixes, [len(t) for t in truths], choose_argmax, pad_token_id=pad)

    before = None
    if adapters_off:
        before = generate(model, model.disable_adapter())
    elif original is not None:
        before = generate(original)
    after = generate(model)
    for index, item in enumerate(items):
        sample: dict[str, Any] = {
            "id": item.example.id, "prefix_tokens": cuts[index], "continuation_tokens": len(truths[index]),
        }
        for label, generated in (("before", before), ("after", after)):
            sample[label] = None if generated is None else _match_record(generated[index], truths[index])
            if show_text and generated is not None:
                sample[label]["pieces"] = token_pieces(tokenizer, prefixes[index], generated[index])
        if show_text:
            sample["prefix"] = tokenizer.decode(prefixes[index], skip_special_tokens=True)
            sample["truth"] = token_pieces(tokenizer, prefixes[index], truths[index])
        record["samples"].append(sample)
    return record
