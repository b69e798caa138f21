"""Prompt variation: what other prompts extract when the standard 50-token prefix no longer
does — prefixes of other lengths, prompts that start later in the text, the text in other case
or spacing, and k other forget samples placed in context before it (in-context relearning).
Each variant is a set of token sequences with where its attacked text starts."""

from __future__ import annotations

import re
from dataclasses import dataclass

from ..data import Example, TokenizedExample, tokenize_examples

TEXT_CHANGES = {
    "lower": str.lower,
    "upper": str.upper,
    # Every run of whitespace one space: line breaks and indentation gone.
    "single-spaced": lambda text: re.sub(r"\s+", " ", text).strip(),
}


@dataclass(frozen=True)
class Variant:
    name: str
    kind: str  # length | shift | text | context
    sequences: list[list[int]]
    text_start: int  # tokens before the attacked text's first token (BOS, context)
    prefix: int
    suffix: int


def _fitting_suffix(sequences: list[list[int]], text_start: int, prefix: int, suffix: int) -> int:
    """``suffix``, shortened to what the longest sample leaves after the prompt (at least 1), so a
    long prompt is still scored on the samples that have room for it."""
    room = max(len(s) for s in sequences) - text_start - prefix
    return max(1, min(suffix, room))


def variants(items: list[TokenizedExample], tokenizer, *, bos: int, prefix: int, suffix: int,
             lengths: tuple[int, ...], shifts: tuple[int, ...], changes: tuple[str, ...],
             contexts: tuple[int, ...], context_tokens: int, max_length: int) -> list[Variant]:
    """The prompt variants of the forget set ``items`` (tokenized with BOS when ``bos`` is 1)."""
    sequences = [list(t.input_ids) for t in items]
    found = []
    for length in lengths:
        found.append(Variant(f"prefix-{length}", "length", sequences, bos, length,
                             _fitting_suffix(sequences, bos, length, suffix)))
    for shift in shifts:
        shifted = [s[:bos] + s[bos + shift:] for s in sequences]
        found.append(Variant(f"shift-{shift}", "shift", shifted, bos, prefix,
                             _fitting_suffix(shifted, bos, prefix, suffix)))
    for change in changes:
        changed = tokenize_examples([Example(text=TEXT_CHANGES[change](t.example.text), id=t.example.id)
                                     for t in items], tokenizer, max_length)
        found.append(Variant(change, "text", [list(t.input_ids) for t in changed], bos, prefix, suffix))
    texts = [s[bos:] for s in sequences]
    for k in contexts:
        # Sample i is preceded by the first context_tokens of samples i+1..i+k (cyclically).
        contextual = [sequences[i][:bos] + sum((texts[(i + j) % len(texts)][:context_tokens] for j in range(1, k + 1)), [])
                      + texts[i] for i in range(len(texts))]
        starts = {len(c) - len(t) for c, t in zip(contextual, texts)}
        if len(starts) != 1:  # a context sample shorter than context_tokens: no common start
            continue
        found.append(Variant(f"context-{k}", "context", contextual, starts.pop(), prefix, suffix))
    return found
