import json

import numpy as np
import pytest
from transformers import AutoTokenizer

from unmemorize.data import Example, collate, load_examples, tokenize_examples
from unmemorize.errors import UserError
from unmemorize.focus import Focus, focus_spans, target_weights, tokens_in_focus


def write(path, text):
    path.write_text(text, encoding="utf-8")
    return path


def test_jsonl_text_prefix_suffix_and_spans(tmp_path):
    f = write(tmp_path / "f.jsonl", "\n".join([
        json.dumps({"text": "Alice lives here", "spans": [[0, 5]]}),
        "",
        json.dumps({"prefix": "Call ", "suffix": "555-0199 now", "id": "x7"}),
    ]))
    examples = load_examples(f)
    assert [e.text for e in examples] == ["Alice lives here", "Call 555-0199 now"]
    assert examples[0].spans == [(0, 5)]
    assert examples[1].prefix_chars == 5 and examples[1].id == "x7"


@pytest.mark.parametrize("content,message", [
    ('{"text": "ok"}\n{"text": oops}\n', "line 2: invalid JSON"),
    ('{"body": "no text"}\n', "line 1: needs a 'text' field"),
    ('{"text": "abc", "spans": [[2, 9]]}\n', "line 1: bad span"),
    ("", "no examples"),
])
def test_jsonl_errors_name_the_line(tmp_path, content, message):
    with pytest.raises(UserError, match=message):
        load_examples(write(tmp_path / "bad.jsonl", content))


def test_csv_text_column_and_errors(tmp_path):
    f = write(tmp_path / "a.csv", 'doc_id,corpus,text\n7,pile,"hello, ""world""\nsecond line"\n9,pile,bye\n')
    examples = load_examples(f)
    assert [(e.id, e.text) for e in examples] == [("7", 'hello, "world"\nsecond line'), ("9", "bye")]
    with pytest.raises(UserError, match="no 'text' column"):
        load_examples(write(tmp_path / "b.csv", "a,b\n1,2\n"))


def test_text_lines_and_paragraphs(tmp_path):
    f = write(tmp_path / "t.txt", "one\ntwo\n\nthree\n")
    assert [e.text for e in load_examples(f)] == ["one", "two", "three"]
    assert [e.text for e in load_examples(f, split="paragraphs")] == ["one\ntwo", "three"]
    assert [e.text for e in load_examples(f, limit=2)] == ["one", "two"]


def test_file_errors(tmp_path):
    with pytest.raises(UserError, match="not found"):
        load_examples(tmp_path / "missing.csv")
    with pytest.raises(UserError, match="not UTF-8"):
        load_examples((tmp_path / "x.txt").write_bytes(b"\xff\xfe\x00bad") and tmp_path / "x.txt")
    with pytest.raises(UserError, match="unsupported"):
        load_examples(write(tmp_path / "x.docx", "hi"))


def test_npy_token_arrays_decode_with_given_tokenizer(tmp_path, tiny_models):
    tok = AutoTokenizer.from_pretrained(tiny_models["llama"])
    ids = tok("Alice Johnson lives at 42 Baker Street", add_special_tokens=False)["input_ids"]
    np.save(tmp_path / "a.npy", np.array([ids, ids], dtype=np.uint16))
    examples = load_examples(tmp_path / "a.npy", npy_tokenizer=str(tiny_models["llama"]))
    assert [e.text for e in examples] == ["Alice Johnson lives at 42 Baker Street"] * 2


def test_extraction_challenge_files_load_as_they_are(shared_data):
    csv_examples = load_examples(shared_data / "extraction/forget_sets/lm_extraction_8_0.csv")
    assert len(csv_examples) == 8 and all(len(e.text) > 200 for e in csv_examples)
    npy = load_examples(shared_data / "extraction/train_suffix.npy", limit=3)
    assert len(npy) == 3 and all(e.text for e in npy)


def test_saved_datasets_directory(tmp_path):
    import datasets

    datasets.Dataset.from_dict({"text": ["a b c", "d e f"]}).save_to_disk(tmp_path / "ds")
    assert [e.text for e in load_examples(tmp_path / "ds")] == ["a b c", "d e f"]


def test_tokenize_truncates_and_rejects_short(tiny_models):
    tok = AutoTokenizer.from_pretrained(tiny_models["gemma3"])
    items = tokenize_examples([Example("Alice Johnson lives at 42 Baker Street", "0")], tok, max_length=5)
    assert len(items[0].input_ids) == 5 and items[0].offsets[0] == (0, 0)  # BOS kept
    with pytest.raises(UserError, match="sample 0 .* shorter than 2 tokens"):
        tokenize_examples([Example("", "0")], tok)


def test_collate_pads_right_and_zeroes_padding_weights(tiny_models):
    tok = AutoTokenizer.from_pretrained(tiny_models["llama"])
    items = tokenize_examples([Example("Alice", "0"), Example("Alice Johnson lives", "1")], tok)
    weights = [[1.0] * len(i.input_ids) for i in items]
    batch = collate(items, weights, pad_token_id=0)
    n0, n1 = len(items[0].input_ids), len(items[1].input_ids)
    assert batch["input_ids"].shape == (2, n1)
    assert batch["attention_mask"][0].tolist() == [1] * n0 + [0] * (n1 - n0)
    assert batch["loss_weights"][0].tolist() == [0.0] + [1.0] * (n0 - 1) + [0.0] * (n1 - n0)
    assert batch["loss_weights"].sum().item() == (n0 - 1) + (n1 - 1)


def test_tokens_in_focus_uses_offsets_overlap():
    offsets = [(0, 0), (0, 5), (5, 11), (11, 12), (12, 20)]
    assert tokens_in_focus(offsets, [(3, 7)]) == [False, True, True, False, False]
    assert tokens_in_focus(offsets, [(11, 12)]) == [False, False, False, True, False]
    assert tokens_in_focus(offsets, [(20, 25)]) == [False] * 5  # touching is not overlapping


def test_regex_focus_hard_and_soft_weights(tiny_models):
    tok = AutoTokenizer.from_pretrained(tiny_models["gemma3"])
    examples = [Example("Call 555-0199 now", "0"), Example("nothing here", "1")]
    items = tokenize_examples(examples, tok)
    spans = focus_spans(examples, Focus.parse(r"regex:\d+"))
    assert spans == [[(5, 8), (9, 13)], []]
    hard, missing = target_weights(items, spans, "hard")
    assert missing == [1]
    # The tokens whose characters are digits carry the weight, found through offsets.
    focused = [items[0].offsets[i] for i, w in enumerate(hard[0]) if w == 1.0]
    assert focused and all(any(a < e and s < b for s, e in spans[0]) for a, b in focused)
    assert "".join(examples[0].text[a:b] for a, b in focused).replace("-", "") == "5550199"
    soft, _ = target_weights(items, spans, "soft", focus_weight=4.0)
    assert soft[0][0] == 0.0 and set(soft[0][1:]) == {1.0, 4.0}
    assert soft[1] == [0.0] + [1.0] * (len(items[1].input_ids) - 1)


def test_spans_focus_and_uniform():
    examples = [Example("abc", "0", spans=[(0, 1)])]
    assert focus_spans(examples, Focus.parse("spans")) == [[(0, 1)]]
    assert focus_spans(examples, Focus.parse("all")) is None


def test_entity_and_noun_focus_with_spacy():
    pytest.importorskip("spacy")
    examples = [Example("Alice Johnson moved to Paris in 1999 with her old dog.", "0")]
    entities = focus_spans(examples, Focus.parse("entities"))[0]
    assert [examples[0].text[s:e] for s, e in entities][:2] == ["Alice Johnson", "Paris"]
    nouns = [examples[0].text[s:e] for s, e in focus_spans(examples, Focus.parse("nouns"))[0]]
    assert "her old dog" in nouns


@pytest.mark.parametrize("spec,message", [
    ("regex:(", "invalid regex"), ("regex:", "needs a pattern"), ("people", "unknown focus"),
])
def test_focus_errors(spec, message):
    with pytest.raises(UserError, match=message):
        Focus.parse(spec)
