"""--focus pii: e-mails, phones, IBAN/card/account numbers, names and addresses, with exact
character spans, turned into token weights (hard and soft)."""

from __future__ import annotations

import json

import pytest

from unmemorize.data import Example, tokenize_examples
from unmemorize.errors import UserError
from unmemorize.focus import Focus, focus_spans, load_spacy, pii_spans, target_weights
from unmemorize.models import load_tokenizer


@pytest.fixture(scope="module")
def nlp():
    try:
        return load_spacy()
    except UserError as error:
        pytest.skip(f"spaCy pipeline not installed: {error}")


def found(text: str, nlp) -> dict[str, str]:
    """kind -> the detected substring (one detection of each kind in these texts)."""
    return {s.kind: text[s.start:s.end] for s in pii_spans([text], nlp)[0]}


def test_parse_accepts_pii():
    assert Focus.parse("pii") == Focus("pii")
    assert str(Focus.parse("pii")) == "pii"
    with pytest.raises(UserError, match="pii"):
        Focus.parse("pi")


def test_finds_each_kind_with_exact_spans(nlp):
    text = ("Jane Doe lives at 12 Elm Street, Springfield, IL 62704 and her e-mail is "
            "jane.doe@example.com.")
    assert found(text, nlp) == {
        "name": "Jane Doe",
        "address": "12 Elm Street, Springfield, IL 62704",
        "email": "jane.doe@example.com",
    }
    text = "Write to John Smith, IBAN GB29 NWBK 6016 1331 9268 19, phone (555) 010-9999 ext. 12."
    kinds = found(text, nlp)
    assert kinds["name"] == "John Smith"
    assert kinds["iban"] == "GB29 NWBK 6016 1331 9268 19"
    assert kinds["phone"] == "(555) 010-9999 ext. 12"
    text = "Her card is 4111 1111 1111 1111 and her account no. 87784080; call 711-557-8156."
    kinds = found(text, nlp)
    assert kinds["card"] == "4111 1111 1111 1111"
    assert kinds["number"] == "87784080"
    assert kinds["phone"] == "711-557-8156"


def test_overlapping_detections_merge_into_one_span(nlp):
    # The e-mail contains a digit run (a "number") and spaCy may tag parts of it: one span remains.
    text = "Her e-mail is vanessa89@example.org."
    spans = pii_spans([text], nlp)[0]
    assert [(s.kind, text[s.start:s.end]) for s in spans] == [("email", "vanessa89@example.org")]


def test_plain_text_has_no_pii(nlp):
    text = "The committee met and agreed to continue the review of the budget."
    assert pii_spans([text], nlp) == [[]]


def test_pii_focus_weights_cover_exactly_the_pii_tokens(tiny_models, nlp):
    tokenizer = load_tokenizer(str(tiny_models["llama"]))
    texts = ["Contact mary.jones@example.com for the account number 1234-5678-9012.",
             "The quick brown fox jumps over the lazy dog."]
    examples = [Example(text=t, id=str(i)) for i, t in enumerate(texts)]
    tokenized = tokenize_examples(examples, tokenizer, max_length=64)
    spans = focus_spans(examples, Focus.parse("pii"))
    first = texts[0]
    assert [first[s:e] for s, e in spans[0]] == ["mary.jones@example.com", "1234-5678-9012"]
    assert spans[1] == []

    hard, without = target_weights(tokenized, spans, "hard")
    assert without == [1]  # the sentence without PII is reported, and trains on nothing
    for (a, b), w in zip(tokenized[0].offsets[1:], hard[0][1:]):
        piece = first[a:b]
        in_pii = any(a < e and s < b for s, e in spans[0])
        assert w == (1.0 if in_pii else 0.0), piece
    assert hard[0][0] == 0.0 and sum(hard[1]) == 0.0
    assert 0 < sum(hard[0]) < len(hard[0]) - 1  # some tokens in focus, not all

    soft, _ = target_weights(tokenized, spans, "soft", focus_weight=5.0)
    assert [w for w in soft[0][1:]] == [5.0 if w else 1.0 for w in hard[0][1:]]
    assert soft[1][1:] == [1.0] * (len(soft[1]) - 1)


def test_unlearn_accepts_focus_pii(tiny_models, tmp_path, nlp):
    from unmemorize.cli import main

    forget = tmp_path / "forget.jsonl"
    forget.write_text("\n".join(json.dumps({"text": t, "id": i}) for i, t in (
        ("pii", "Contact mary.jones@example.com for the account number 1234-5678-9012."),
        ("plain", "The quick brown fox jumps over the lazy dog."),
    )))
    out = tmp_path / "run"
    main(["unlearn", "--model", str(tiny_models["llama"]), "--forget", str(forget), "--focus", "pii",
          "--max-steps", "1", "--batch-size", "2", "--el-stride", "100", "--out", str(out)])
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["sequences_without_focus"] == ["plain"]  # hard focus: only the PII sentence trains
