"""The forget set as training sees it: tokenized sequences, each token's target weight from the
focus, which sequences are trained on, the retain set, and a fingerprint of all of it."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from ..config import UnlearnConfig
from ..data import TokenizedExample, load_examples, read_examples, tokenize_examples
from ..errors import UserError
from ..events import Events
from ..focus import Focus, focus_spans, target_weights


@dataclass
class ForgetSet:
    tokenized: list[TokenizedExample]
    weights: list[list[float]]  # per sequence, per token: the target weight (focus)
    trainable: list[int]  # sequences with a token in focus (all, unless hard focus drops some)
    without_focus: list[int]
    retain: list[TokenizedExample] | None
    fingerprint: str
    # --joint-lowering: per sequence, per position, the tokens deliberate imagination lowers.
    lowered: list[list[list[int]]] | None = None

    @property
    def sequences(self) -> list[list[int]]:
        return [t.input_ids for t in self.tokenized]


def read_forget_examples(config: UnlearnConfig) -> tuple[list, list | None]:
    """The forget (and retain) examples; before any model loads, so a bad file fails fast."""
    examples = read_examples(config.forget, config)
    if config.max_examples is not None and len(examples) > config.max_examples:
        raise UserError(
            f"the forget set has {len(examples)} examples, more than --max-examples {config.max_examples}; "
            "pass a smaller set, --limit N to use the first N, or a larger --max-examples"
        )
    retain = None
    if config.retain is not None:
        retain = load_examples(config.retain, split=config.split, text_column=config.text_column,
                               npy_tokenizer=config.npy_tokenizer)
    return examples, retain


def prepare(config: UnlearnConfig, examples: list, retain_examples: list | None, tokenizer,
            events: Events) -> ForgetSet:
    focus = Focus.parse(config.focus)
    tokenized = tokenize_examples(examples, tokenizer, config.max_length)
    weights, without_focus = target_weights(tokenized, focus_spans(examples, focus), config.focus_mode,
                                            config.focus_weight)
    trainable = list(range(len(tokenized)))
    if focus.kind != "all" and without_focus:
        ids = ", ".join(tokenized[i].example.id for i in without_focus[:20])
        if config.focus_mode == "hard":
            dropped = set(without_focus)
            trainable = [i for i in trainable if i not in dropped]
            events.message(f"{len(without_focus)} of {len(tokenized)} sequences have no token in focus "
                           f"({focus}) and are not trained on (hard focus): ids {ids}")
            if not trainable:
                raise UserError(f"no sequence has a token in focus ({focus}); nothing to unlearn")
        else:
            events.message(f"{len(without_focus)} sequences have no token in focus ({focus}): ids {ids}")
    retain = None
    if retain_examples is not None:
        retain = tokenize_examples(retain_examples, tokenizer, config.max_length)
        events.message(f"retain set: {len(retain)} sequences, {sum(len(t.input_ids) for t in retain)} "
                       f"tokens; retain term weight {config.retain_weight}")
    events.message(f"forget set: {len(tokenized)} sequences, {sum(len(t.input_ids) for t in tokenized)} tokens "
                   f"(max {config.max_length} per sequence); training on {len(trainable)}")
    lowered = None
    if config.joint_lowering:
        lowered = shared_context_tokens([t.input_ids for t in tokenized], weights, trainable)
        shared = sum(len(tokens) > 1 for i in trainable for tokens in lowered[i])
        events.message(f"joint lowering: {shared} positions in focus share their context with another text's")
    return ForgetSet(tokenized, weights, trainable, without_focus, retain,
                     data_fingerprint(tokenized, weights, trainable, retain), lowered)


class _Context:
    """A node of the trie of the forget texts' prefixes: the next tokens seen after it (in
    focus), and the longer prefixes."""

    __slots__ = ("following", "next")

    def __init__(self) -> None:
        self.following: set[int] = set()
        self.next: dict[int, _Context] = {}


def shared_context_tokens(sequences: list[list[int]], weights: list[list[float]],
                          trainable: list[int]) -> list[list[list[int]]]:
    """For each sequence and position t: its own token first, then the token at t of every other
    trained sequence with the same tokens before t and weight > 0 at t; positions out of focus
    keep their own token alone. A trie of the prefixes, so memory grows with the tokens, not
    with the square of a sequence's length."""
    root = _Context()
    for i in trainable:
        node = root
        for t, token in enumerate(sequences[i]):
            if t > 0 and weights[i][t] > 0:
                node.following.add(token)
            node = node.next.setdefault(token, _Context())
    lowered = []
    for ids, w in zip(sequences, weights):
        node, sets = root, []
        for t, token in enumerate(ids):
            others = sorted(node.following - {token}) if t > 0 and w[t] > 0 and node is not None else []
            sets.append([token, *others])
            node = node.next.get(token) if node is not None else None
        lowered.append(sets)
    return lowered


def data_fingerprint(tokenized: list, weights: list[list[float]], trainable: list[int],
                     retain: list | None = None) -> str:
    """A hash of exactly what training sees (token ids and target weights, and the retain set's
    token ids): resuming on other data, another tokenizer or another focus is refused. A hash,
    so no text is stored."""
    digest = hashlib.sha256()
    for i in trainable:
        digest.update(json.dumps([tokenized[i].input_ids, weights[i]]).encode())
    for item in retain or []:
        digest.update(json.dumps(["retain", item.input_ids]).encode())
    return digest.hexdigest()


def digest_source(source: str | Path, digest) -> str | None:
    """``digest`` (a hashlib or hmac object) fed a forget file, or a directory's files (relative
    names and contents, in name order); None for a hub dataset."""
    if str(source).startswith("hf:"):
        return None
    path = Path(source).expanduser()
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    for file in files:
        if path.is_dir():
            digest.update(str(file.relative_to(path)).encode() + b"\0")
        with file.open("rb") as handle:
            for block in iter(lambda: handle.read(2**20), b""):
                digest.update(block)
    return digest.hexdigest()


def keyed_digests(config: UnlearnConfig, data: ForgetSet) -> dict:
    """HMAC-SHA256 digests under the operator's ``--record-key``: of the forget file, of the
    training data's fingerprint and of each record's text. Only the key's holder can check a
    record against them; a plain SHA-256 of guessable text would let anyone confirm a guess
    (RFC 2104). Without a key: nothing."""
    if config.record_key is None:
        return {}
    import hmac

    key = Path(config.record_key).expanduser().read_bytes()

    def keyed(payload: bytes) -> str:
        return hmac.new(key, payload, hashlib.sha256).hexdigest()

    return {"algorithm": "HMAC-SHA256", "forget_file": digest_source(config.forget, hmac.new(key, digestmod=hashlib.sha256)),
            "training_data": keyed(data.fingerprint.encode()),
            "records": [keyed(t.example.text.encode("utf-8")) for t in data.tokenized]}


def summary(config: UnlearnConfig, data: ForgetSet) -> dict:
    """What was forgotten, as counts and keyed digests (no text, no plain hash): stored in
    ``metrics.json``."""
    if config.focus == "all" or config.focus_mode == "hard":
        in_focus = lambda w: w > 0  # noqa: E731
    else:  # soft: focus tokens carry --focus-weight, the others 1
        in_focus = lambda w: w == config.focus_weight and w != 1.0  # noqa: E731
    source, trainable, weights = str(config.forget), data.trainable, data.weights
    return {
        "source_name": source if source.startswith("hf:") else Path(source).name,
        "digests": keyed_digests(config, data),
        "sequences": len(data.tokenized),
        "tokens": sum(len(t.input_ids) for t in data.tokenized),
        "trained_sequences": len(trainable),
        "target_tokens": sum(1 for i in trainable for w in weights[i][1:] if w > 0),
        "focus_tokens": sum(1 for i in trainable for w in weights[i][1:] if in_focus(w)),
        "focus": config.focus,
        "focus_mode": config.focus_mode,
        "sample_ids": [t.example.id for t in data.tokenized],
        "sample_tokens": [len(t.input_ids) for t in data.tokenized],
    }
