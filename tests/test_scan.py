"""`unmemorize scan`: windows traceable to their documents, a tiny model trained here to memorize
a few documents of a corpus (scan flags them, and others exactly where their scores written out
by hand lie above the reference's threshold), the forget set `unlearn` takes, resume after a
kill, two processes writing what one writes, and bad input."""

from __future__ import annotations

import json
import multiprocessing
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from conftest import exit_code
from unmemorize.data import Example, document_windows, leading_specials, load_examples
from unmemorize.metrics.scan import reference_threshold

WORDS = ("alice bob carol paris london account number phone street the a of and lives works contact "
         "office city company quick brown fox river garden blue green table window").split()
MEMORIZED = (3, 11, 19)
LONG = (5, 19, 30)
DOCUMENTS = 40


def random_text(rng: random.Random, words: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(words))


def write_jsonl(path: Path, texts: list[str], prefix: str) -> Path:
    path.write_text("".join(json.dumps({"id": f"{prefix}{i}", "text": t}) + "\n" for i, t in enumerate(texts)))
    return path


@pytest.fixture(scope="module")
def memorizing(learnable_model, tmp_path_factory) -> dict:
    """A tiny Llama fine-tuned until it reproduces three documents of a 40-document corpus; an
    unseen reference of 200 documents from the same word distribution. Documents are mostly one
    window; three long ones are cut into several."""
    rng = random.Random(0)
    corpus = [random_text(rng, rng.randint(6, 12)) for _ in range(DOCUMENTS)]
    for i in LONG:
        corpus[i] = random_text(rng, 40)
    for i in MEMORIZED:
        corpus[i] = f"contact {rng.choice(WORDS)}.{rng.choice(WORDS)}@example.com " + corpus[i]
    reference = [random_text(rng, rng.randint(6, 12)) for _ in range(200)]
    directory = tmp_path_factory.mktemp("memorizing")
    tokenizer = AutoTokenizer.from_pretrained(learnable_model)
    model = AutoModelForCausalLM.from_pretrained(learnable_model)
    torch.manual_seed(0)
    batch = tokenizer([corpus[i] for i in MEMORIZED], padding=True, return_tensors="pt")
    labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for _ in range(120):
        model(**batch, labels=labels).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    model.save_pretrained(directory / "model")
    tokenizer.save_pretrained(directory / "model")
    return {"model": directory / "model", "corpus": write_jsonl(directory / "corpus.jsonl", corpus, "doc"),
            "reference": write_jsonl(directory / "reference.jsonl", reference, "ref"), "texts": corpus}


def scan_args(memorizing: dict, out: Path, *extra: str) -> list[str]:
    return ["scan", "--model", str(memorizing["model"]), "--corpus", str(memorizing["corpus"]),
            "--reference", str(memorizing["reference"]), "--window", "64", "--stride", "48", "--fpr", "0.05",
            "--attack-fpr", "0.2", "--extraction-prefix", "8", "--extraction-suffix", "8",
            "--shard-documents", "5", "--out", str(out), *extra]


# --- windows ------------------------------------------------------------------------------------


def test_windows_cover_the_document_and_trace_to_its_characters(tiny_models):
    tokenizer = AutoTokenizer.from_pretrained(tiny_models["llama"])
    text = "  " + random_text(random.Random(1), 60) + " ends here."
    plain = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids, offsets = plain["input_ids"], plain["offset_mapping"]
    bos = tokenizer.bos_token_id
    assert leading_specials(tokenizer) == [bos]
    windows = document_windows(Example(text=text, id="long"), tokenizer, window=10, stride=4)
    # Starts written out: every 4 text tokens while a full window of 9 fits, then one ending at the end.
    starts = list(range(0, len(ids) - 9 + 1, 4))
    if starts[-1] + 9 < len(ids):
        starts.append(len(ids) - 9)
    assert [w.index for w in windows] == list(range(len(starts)))
    for window, start in zip(windows, starts):
        assert window.input_ids == [bos] + ids[start : start + 9]
        assert window.id == f"long#{window.index}"
        assert (window.char_start, window.char_end) == (offsets[start][0], offsets[start + 8][1])
        assert window.text == text[window.char_start : window.char_end]
        for (a, b), (c, d) in zip(window.offsets[1:], offsets[start : start + 9]):
            assert text[window.char_start + a : window.char_start + b] == text[c:d]
    assert windows[-1].char_end == offsets[-1][1]
    # A document shorter than a window is one window of all its tokens.
    short = document_windows(Example(text="the fox", id="s"), tokenizer, window=200)
    assert len(short) == 1 and short[0].input_ids == tokenizer("the fox")["input_ids"]


def test_reference_threshold_allows_floor_fpr_times_n_reference_windows_above():
    scores = [0.3, 0.9, 0.1, 0.5, 0.7, 0.2, 0.8, 0.4, 0.6, 1.0]
    # Sorted high to low: 1.0, 0.9, 0.8, ...; fpr 0.2 of 10 lets 2 lie above: the threshold is the 3rd.
    assert reference_threshold(scores, 0.2) == {"threshold": 0.8, "fpr": 0.2, "allowed": 2, "reference": 10,
                                                "reference_above": 2, "resolvable": True}
    small = reference_threshold(scores, 0.05)  # 0.5 of a window: none may lie above
    assert small["threshold"] == 1.0 and small["reference_above"] == 0 and not small["resolvable"]


# --- the scan -----------------------------------------------------------------------------------


def naive_loss(model, ids: list[int]) -> float:
    """Mean log-probability of each token after the first, one unbatched float64 forward pass."""
    with torch.no_grad():
        logits = model.double()(torch.tensor([ids])).logits[0, :-1]
    return logits.log_softmax(-1).gather(-1, torch.tensor(ids[1:])[:, None]).mean().item()


def test_scan_finds_the_memorized_documents_and_flags_by_the_reference(memorizing, tmp_path, capsys):
    out = tmp_path / "scan"
    assert exit_code(scan_args(memorizing, out, "--pii")) == 0
    windows = [json.loads(line) for line in (out / "scan.jsonl").read_text().splitlines()]
    summary = json.loads((out / "scan.json").read_text())
    tokenizer = AutoTokenizer.from_pretrained(memorizing["model"])
    model = AutoModelForCausalLM.from_pretrained(memorizing["model"]).eval()
    examples = load_examples(memorizing["corpus"])
    expected = [w for e in examples for w in document_windows(e, tokenizer, 64, 48)]
    assert [w["id"] for w in windows] == [w.id for w in expected]
    losses = [naive_loss(model, w.input_ids) for w in expected]
    for window, loss in zip(windows, losses):
        assert window["loss"] == pytest.approx(loss, abs=1e-5)
        assert "text" not in window  # no --show-text
    # The threshold by hand: the reference's first windows, sorted, floor(0.05 * 200) = 10 above it.
    references = [document_windows(e, tokenizer, 64, 48)[0] for e in load_examples(memorizing["reference"])]
    reference_losses = sorted((naive_loss(model, w.input_ids) for w in references), reverse=True)
    assert summary["threshold"]["threshold"] == pytest.approx(reference_losses[10], abs=1e-5)
    flagged_by_hand = {w.id for w, loss in zip(expected, losses) if loss > reference_losses[10]}
    extracted = {w["id"] for w in windows if w["extraction"] and w["extraction"]["exact"]}
    assert {w["id"] for w in windows if w["flagged"]} == flagged_by_hand | extracted
    memorized_documents = {f"doc{i}" for i in MEMORIZED}
    flagged_documents = {w["document"] for w in windows if w["flagged"]}
    assert memorized_documents <= flagged_documents
    assert len(flagged_documents - memorized_documents) <= 5  # few others: 5 % of 37 is about 2
    # forget.jsonl: the flagged windows' text at their offsets, with the e-mail as a PII span.
    forget = load_examples(out / "forget.jsonl")
    assert [f.id for f in forget] == [w["id"] for w in windows if w["flagged"]]
    for record in map(json.loads, (out / "forget.jsonl").read_text().splitlines()):
        document = memorizing["texts"][int(record["document"].removeprefix("doc"))]
        assert record["text"] == document[record["char_start"] : record["char_end"]]
    emails = [(f, s) for f in forget for s in f.spans if "@" in f.text[s[0] : s[1]]]
    assert {f.id.split("#")[0] for f, _ in emails} == memorized_documents
    assert all(f.text[s[0] : s[1]].endswith("@example.com") for f, s in emails)
    report = (out / "report.md").read_text()
    assert "Scan: memorized windows" in report and memorizing["texts"][MEMORIZED[0]][:30] not in report
    # unlearn takes the forget set as it is, focused on its PII spans.
    assert exit_code(["unlearn", "--model", str(memorizing["model"]), "--forget", str(out / "forget.jsonl"),
                      "--focus", "spans", "--max-steps", "1", "--no-el", "--out", str(tmp_path / "forgot")]) == 0


# --- resume and data parallelism ----------------------------------------------------------------


def outputs(out: Path) -> dict:
    summary = json.loads((out / "scan.json").read_text())
    for key in ("timing", "config"):
        summary.pop(key)
    return {"scan.jsonl": (out / "scan.jsonl").read_text(), "forget.jsonl": (out / "forget.jsonl").read_text(),
            "scan.json": summary}


def test_resume_after_a_kill_continues_from_the_finished_shards(memorizing, tmp_path, capsys):
    options = ("--shard-documents", "1", "--reference-limit", "20")
    whole = tmp_path / "whole"
    assert exit_code(scan_args(memorizing, whole, *options)) == 0
    killed = tmp_path / "killed"
    # A forked copy of this process (its imports done) runs the scan and is killed mid-way.
    process = multiprocessing.get_context("fork").Process(target=exit_code, args=(scan_args(memorizing, killed, *options),))
    process.start()
    shards = killed / ".scan-shards"
    deadline = time.monotonic() + 120
    while len(list(shards.glob("corpus-*.json"))) < 3 and time.monotonic() < deadline and process.is_alive():
        time.sleep(0.002)
    os.kill(process.pid, signal.SIGKILL)
    process.join()
    finished = len(list(shards.glob("corpus-*.json")))
    assert not (killed / "scan.json").exists() and 3 <= finished < DOCUMENTS, finished
    capsys.readouterr()
    assert exit_code(scan_args(memorizing, killed, *options, "--resume")) == 0
    assert f"resuming: {finished} corpus shard(s) already finished" in " ".join(capsys.readouterr().err.split())
    assert outputs(killed) == outputs(whole)
    assert not shards.exists()


def test_resume_refuses_changed_options(memorizing, tmp_path, capsys):
    out = tmp_path / "scan"
    (out / ".scan-shards").mkdir(parents=True)
    (out / ".scan-shards" / "fingerprint.json").write_text(json.dumps({"options": {"window": 64}, "files": []}))
    assert exit_code(scan_args(memorizing, out, "--resume")) == 2
    assert "--resume:" in capsys.readouterr().err


@pytest.mark.multiprocess
@pytest.mark.timeout(600)
def test_two_processes_write_what_one_writes(memorizing, tmp_path):
    torchrun = os.path.join(os.path.dirname(sys.executable), "torchrun")
    if not os.path.exists(torchrun) and shutil.which("torchrun") is None:
        pytest.skip("torchrun not found")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    two = subprocess.run([torchrun, "--nproc_per_node", "2", "--master_port", "29561", "-m", "unmemorize.cli",
                          *scan_args(memorizing, tmp_path / "two", "--pii")],
                         env=env, capture_output=True, text=True, timeout=540)
    assert two.returncode == 0, two.stderr[-3000:]
    assert exit_code(scan_args(memorizing, tmp_path / "one", "--pii")) == 0
    assert outputs(tmp_path / "two") == outputs(tmp_path / "one")
    assert json.loads((tmp_path / "two" / "scan.json").read_text())["timing"]["processes"] == 2


# --- bad input ----------------------------------------------------------------------------------


@pytest.mark.parametrize("case", ["empty-corpus", "missing-file", "no-glob-match", "window-1", "bad-json",
                                  "resume-nothing", "not-empty"])
def test_bad_input_exits_2_with_one_line_and_writes_nothing(case, memorizing, tmp_path, capsys):
    out = tmp_path / "out"
    corpus = str(memorizing["corpus"])
    extra: list[str] = []
    if case == "empty-corpus":
        (tmp_path / "empty.jsonl").write_text("\n")
        corpus = str(tmp_path / "empty.jsonl")
    elif case == "missing-file":
        corpus = str(tmp_path / "absent.jsonl")
    elif case == "no-glob-match":
        corpus = str(tmp_path / "*.nothing")
    elif case == "window-1":
        extra = ["--window", "1"]
    elif case == "bad-json":
        (tmp_path / "bad.jsonl").write_text('{"text": "fine"}\n{"text": \n')
        corpus = str(tmp_path / "bad.jsonl")
    elif case == "resume-nothing":
        extra = ["--resume"]
    elif case == "not-empty":
        out.mkdir()
        (out / "keep.txt").write_text("mine")
    args = ["scan", "--model", str(memorizing["model"]), "--corpus", corpus, "--reference",
            str(memorizing["reference"]), "--out", str(out), *extra]
    before = sorted(p.name for p in tmp_path.rglob("*"))
    assert exit_code(args) == 2
    error = capsys.readouterr().err.strip()
    assert error and len(error.splitlines()) == 1, error
    assert sorted(p.name for p in tmp_path.rglob("*")) == before


def test_every_corpus_format_streams_one_example_at_a_time(tiny_models, tmp_path):
    import csv

    import datasets
    import numpy as np

    from unmemorize.data import iter_examples
    from unmemorize.errors import UserError

    texts = ["the quick brown fox", "Alice, Bob and \"Carol\" in Paris", "a third document here"]
    # A broken record after the first: the stream gives the first before it reads that far.
    broken = tmp_path / "broken.jsonl"
    broken.write_text(json.dumps({"text": texts[0]}) + "\n{not json\n")
    assert next(iter_examples(broken)).text == texts[0]
    with pytest.raises(UserError, match="line 2: invalid JSON"):
        load_examples(broken)
    table = tmp_path / "c.csv"
    with table.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["doc_id", "text"])
        writer.writerows([[f"d{i}", t] for i, t in enumerate(texts)])
    assert [(e.id, e.text) for e in iter_examples(table)] == [(f"d{i}", t) for i, t in enumerate(texts)]
    paragraphs = tmp_path / "p.txt"
    paragraphs.write_bytes("\r\n\r\n".join(texts).encode() + b"\r\n")
    assert [e.text for e in iter_examples(paragraphs, split="paragraphs")] == texts
    assert [e.text for e in iter_examples(paragraphs)] == texts  # lines: the blank ones dropped
    tokenizer = AutoTokenizer.from_pretrained(tiny_models["llama"])
    rows = [tokenizer(t, add_special_tokens=False)["input_ids"][:4] for t in texts]
    np.save(tmp_path / "t.npy", np.array(rows, dtype=np.uint16))
    assert [e.text for e in iter_examples(tmp_path / "t.npy", npy_tokenizer=str(tiny_models["llama"]))] == \
        [tokenizer.decode(r, clean_up_tokenization_spaces=True) for r in rows]
    datasets.Dataset.from_dict({"text": texts}).save_to_disk(str(tmp_path / "saved"))
    assert [e.text for e in iter_examples(tmp_path / "saved")] == texts
    (tmp_path / "raw").mkdir()
    write_jsonl(tmp_path / "raw" / "part.jsonl", texts, "r")
    assert [e.text for e in iter_examples(tmp_path / "raw")] == texts
