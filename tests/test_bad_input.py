"""Bad input, through the CLI: every case exits with code 2 and one `error:` line naming the
problem, prints no traceback, and writes nothing (the work folder and the input model are
byte-for-byte as before)."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import pytest
import torch

from unmemorize.cli import main

TEXTS = [
    "Alice Johnson lives at 42 Baker Street in London.",
    "Contact mary.jones@example.com for the account.",
    "In 1999 the company Acme Corp opened an office.",
    "The quick brown fox jumps over the lazy dog.",
]


def tree_digest(root: Path) -> dict[str, str]:
    """Relative path -> sha256 of every file and folder under root (folders as 'dir')."""
    found = {}
    for path in sorted(root.rglob("*")):
        rel = str(path.relative_to(root))
        try:
            found[rel] = "dir" if path.is_dir() else hashlib.sha256(path.read_bytes()).hexdigest()
        except PermissionError:  # the unreadable-file case, when not run as root
            found[rel] = "unreadable"
    return found


class Work:
    """A folder with a good forget file; cases add the bad inputs they need."""

    def __init__(self, root: Path, model: Path, monkeypatch) -> None:
        self.root, self.model, self.monkeypatch = root, model, monkeypatch
        self.forget = self.write("forget.jsonl", "\n".join(json.dumps({"text": t}) for t in TEXTS))
        self.out = root / "out"

    def write(self, name: str, content: str | bytes) -> Path:
        path = self.root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content, encoding="utf-8")
        return path

    def model_copy(self, name: str, without: str | None = None) -> Path:
        target = self.root / name
        shutil.copytree(self.model, target, ignore=shutil.ignore_patterns(without) if without else None)
        return target

    def unlearn(self, *extra: str, forget: Path | None = None, model: Path | str | None = None,
                out: Path | None | str = "default") -> list[str]:
        out = self.out if out == "default" else out
        return ["unlearn", "--model", str(model or self.model), "--forget", str(forget or self.forget),
                "--el-n", "2", "--max-steps", "1", *(["--out", str(out)] if out else []), *extra]


# --- inputs that need a little setting up -------------------------------------------------------


def unreadable(w: Work) -> list[str]:
    path = w.write("locked.jsonl", json.dumps({"text": TEXTS[0]}))
    path.chmod(0)
    if os.access(path, os.R_OK):  # root reads anything: make the read fail as it would for a user
        original = Path.open

        def open_file(self, *args, **kwargs):
            if self == path:
                raise PermissionError(13, "Permission denied", str(self))
            return original(self, *args, **kwargs)

        w.monkeypatch.setattr(Path, "open", open_file)
    return w.unlearn(forget=path)


def pickle_weights(w: Work) -> list[str]:
    directory = w.model_copy("pickled", without="*.safetensors")
    from safetensors.torch import load_file

    torch.save(load_file(w.model / "model.safetensors"), directory / "pytorch_model.bin")
    return w.unlearn(model=directory)


def remote_code(w: Work) -> list[str]:
    """A model whose architecture exists only as code in its folder; the code would leave a
    marker file if it ever ran."""
    directory = w.model_copy("remote")
    config = json.loads((directory / "config.json").read_text())
    config.update(model_type="evil_llama", auto_map={"AutoConfig": "evil.EvilConfig",
                                                     "AutoModelForCausalLM": "evil.EvilModel"})
    (directory / "config.json").write_text(json.dumps(config))
    marker = w.root.parent / "remote-code-ran"
    (directory / "evil.py").write_text(
        f"import pathlib\npathlib.Path({str(marker)!r}).write_text('ran')\n"
        "from transformers import LlamaConfig as EvilConfig, LlamaForCausalLM as EvilModel\n"
    )
    return w.unlearn(model=directory)


def busy_out(w: Work) -> list[str]:
    w.write("out/keep.txt", "precious")
    return w.unlearn()


def unfinished_checkpoint(w: Work) -> list[str]:
    w.write("out.checkpoint/step-00000003/state.json", "{}")
    return w.unlearn()


def offline(w: Work) -> None:
    w.monkeypatch.setenv("HF_HUB_OFFLINE", "1")


CASES = {
    # data files
    "missing-file": (lambda w: w.unlearn(forget=w.root / "nope.jsonl"), "data file not found"),
    "empty-file": (lambda w: w.unlearn(forget=w.write("empty.jsonl", "")), "no examples"),
    "unreadable-file": (unreadable, "cannot read"),
    "not-utf8": (lambda w: w.unlearn(forget=w.write("latin1.txt", "caf\xe9 au lait\n".encode("latin-1"))), "not UTF-8"),
    "jsonl-bad-line": (lambda w: w.unlearn(forget=w.write("bad.jsonl", '{"text": "a b c"}\n{"text": "d e"}\n{"text": oops}\n')),
                       "bad.jsonl line 3: invalid JSON"),
    "jsonl-not-an-object": (lambda w: w.unlearn(forget=w.write("list.jsonl", '{"text": "a b"}\n[1, 2]\n')), "line 2: expected a JSON object"),
    "jsonl-no-text-field": (lambda w: w.unlearn(forget=w.write("notext.jsonl", '{"title": "a b"}\n')), "line 1: needs a 'text' field"),
    "jsonl-bad-span": (lambda w: w.unlearn(forget=w.write("span.jsonl", '{"text": "abc", "spans": [[2, 9]]}\n')), "line 1: bad span #1 [2, 9]"),
    "csv-without-text-column": (lambda w: w.unlearn(forget=w.write("t.csv", "title,body\nx,y\n")), "t.csv has no 'text' column (columns: 'title', 'body')"),
    "unsupported-extension": (lambda w: w.unlearn(forget=w.write("t.pdf", "x")), "unsupported data file t.pdf"),
    "sequence-under-2-tokens": (lambda w: w.unlearn(forget=w.write("short.jsonl", '{"text": "a b c"}\n{"text": ""}\n')), "sample 1 (id 1) is shorter than 2 tokens"),
    "more-than-max-examples": (lambda w: w.unlearn("--max-examples", "3"), "the forget set has 4 examples, more than --max-examples 3"),
    # names
    "unknown-model": (lambda w: (offline(w), w.unlearn(model="gemma-3-27m"))[1], "did you mean 'gemma-3-270m'"),
    "unknown-hub-id-offline": (lambda w: (offline(w), w.unlearn(model="someone/no-such-model"))[1], "HF_HUB_OFFLINE is set"),
    "missing-model-path": (lambda w: w.unlearn(model="./no/such/model"), "no such file or directory"),
    "unknown-method": (lambda w: w.unlearn("--method", "forgetful"), "unknown method 'forgetful'"),
    "unknown-focus": (lambda w: w.unlearn("--focus", "people"), "unknown focus 'people'"),
    "unknown-focus-mode": (lambda w: w.unlearn("--focus-mode", "medium"), "--focus-mode must be 'hard' or 'soft'"),
    "unknown-optimizer": (lambda w: w.unlearn("--optimizer", "lion"), "--optimizer must be 'adamw' or 'sgd'"),
    "unknown-split": (lambda w: w.unlearn("--split", "words"), "--split must be 'lines' or 'paragraphs'"),
    "invalid-regex": (lambda w: w.unlearn("--focus", "regex:(unclosed"), "invalid regex"),
    "unknown-eval-suite": (lambda w: ["eval", "--model", str(w.model), "--suites", "memorization,vibes"], "--suites must be one of memorization, nlu, nlg, dialogue, robustness, not 'vibes'"),
    "unknown-suite-for-unlearn-eval": (lambda w: w.unlearn("--eval", "--eval-suites", "vibes"), "--eval-suites must be one of memorization, nlu, nlg, dialogue, robustness, not 'vibes'"),
    # model files
    "gguf-truncated": (lambda w: w.unlearn(model=w.write("cut.gguf", b"GGUF\x03\x00\x00\x00\x01")), "truncated"),
    "gguf-not-gguf": (lambda w: w.unlearn(model=w.write("fake.gguf", b"PK\x03\x04 a zip file" * 8)), "not a GGUF file"),
    "model-dir-without-weights": (lambda w: w.unlearn(model=w.model_copy("empty-model", without="*.safetensors")), "has no model weights"),
    "pickle-weights-without-flag": (pickle_weights, "pass --allow-pickle"),
    "remote-code-without-flag": (remote_code, "--trust-remote-code"),
    # where the output goes
    "out-not-empty": (busy_out, "exists and is not empty; pass --overwrite"),
    "out-is-the-model-dir": (lambda w: w.unlearn("--overwrite", out=w.model), "is the input model"),
    "out-inside-the-model-dir": (lambda w: w.unlearn(out=w.model / "runs" / "x"), "is the input model or inside its directory"),
    "out-is-the-forget-file": (lambda w: w.unlearn("--overwrite", out=w.forget), "is the forget data"),
    "out-is-a-file": (lambda w: w.unlearn(out=w.write("notes.txt", "x")), "is a file; pass a directory"),
    "out-holds-the-forget-file": (lambda w: w.unlearn("--overwrite", out=w.root), "contains the forget data"),
    "checkpoint-dir-is-the-model-dir": (lambda w: w.unlearn("--checkpoint-dir", str(w.model)), "--checkpoint-dir"),
    "unfinished-checkpoint-without-resume": (unfinished_checkpoint, "pass --resume to continue it, or --overwrite"),
    "resume-without-checkpoint": (lambda w: w.unlearn("--resume"), "--resume: no checkpoint in"),
    # contradictory options and values out of range
    "save-adapter-with-no-lora": (lambda w: w.unlearn("--save-adapter", "--no-lora"), "--save-adapter needs --lora"),
    "checkpoints-without-a-place": (lambda w: w.unlearn("--checkpoint-every", "2", out=None), "--checkpoint-every needs --out or --checkpoint-dir"),
    "resume-without-a-place": (lambda w: w.unlearn("--resume", out=None), "--resume needs --out or --checkpoint-dir"),
    "eval-without-out": (lambda w: w.unlearn("--eval", out=None), "--eval needs --out"),
    "negative-strength": (lambda w: w.unlearn("--strength", "-1"), "--strength must be >= 0"),
    "zero-lr": (lambda w: w.unlearn("--lr", "0"), "--lr must be positive"),
    "negative-lr": (lambda w: w.unlearn("--lr", "-1e-4"), "--lr must be positive"),
    "zero-batch": (lambda w: w.unlearn("--batch-size", "0"), "--batch-size must be positive"),
    "zero-epochs": (lambda w: w.unlearn("--epochs", "0"), "--epochs must be positive"),
    "zero-grad-accum": (lambda w: w.unlearn("--grad-accum", "0"), "--grad-accum must be positive"),
    "zero-max-steps": (lambda w: w.unlearn("--max-steps", "0"), "--max-steps must be at least 1"),
    "zero-checkpoint-every": (lambda w: w.unlearn("--checkpoint-every", "0"), "--checkpoint-every must be at least 1"),
    "zero-limit": (lambda w: w.unlearn("--limit", "0"), "--limit must be at least 1"),
    "max-length-1": (lambda w: w.unlearn("--max-length", "1"), "--max-length must be at least 2"),
    "lora-dropout-1": (lambda w: w.unlearn("--lora-dropout", "1"), "--lora-dropout must be in [0, 1)"),
    "el-n-0": (lambda w: w.unlearn("--el-n", "0"), "--el-n must be at least 1"),
    "stop-ma-above-1": (lambda w: w.unlearn("--stop-ma", "1.5"), "--stop-ma must be in [0, 1]"),
    "stop-ma-not-a-number": (lambda w: w.unlearn("--stop-ma", "soon"), "--stop-ma takes a number or 'auto'"),
    "negative-focus-weight": (lambda w: w.unlearn("--focus", "regex:\\d+", "--focus-mode", "soft", "--focus-weight", "-2"), "--focus-weight must be positive"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_exits_2_with_one_line_and_writes_nothing(case, tiny_models, tmp_path, monkeypatch, capsys):
    work = Work(tmp_path / "work", tiny_models["llama"], monkeypatch)
    make_args, message = CASES[case]
    args = make_args(work)
    work_before, model_before = tree_digest(tmp_path), tree_digest(tiny_models["llama"])

    with pytest.raises(SystemExit) as exit_info:
        main(args)

    captured = capsys.readouterr()
    errors = [line for line in captured.err.splitlines() if line.startswith("error:")]
    assert exit_info.value.code == 2, captured.err
    assert len(errors) == 1 and message in errors[0], captured.err
    assert "Traceback" not in captured.err + captured.out
    assert tree_digest(tmp_path) == work_before  # no output, checkpoint or temporary left
    assert tree_digest(tiny_models["llama"]) == model_before
    assert not (tmp_path / "remote-code-ran").exists()
