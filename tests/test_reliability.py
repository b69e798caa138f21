"""Never lose or corrupt work, never leak the forget set, never run code or reach the network
unasked: kill -9 and Ctrl-C then --resume (bitwise the same weights as an uninterrupted run),
divergence, atomic writes, untouched inputs, a planted secret, blocked sockets."""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from unmemorize.training import checkpoint
from unmemorize.cli import main
from unmemorize.errors import UserError
from unmemorize.config import UnlearnConfig
from unmemorize.events import Events
from unmemorize.recipes.unlearn import unlearn
from unmemorize.training.loop import Interrupted

TEXTS = [
    "Alice Johnson lives at 42 Baker Street in London.",
    "Contact mary.jones@example.com for the account.",
    "In 1999 the company Acme Corp opened an office.",
    "The quick brown fox jumps over the lazy dog.",
]
SECRET = "SECRET-7f3a9c-DO-NOT-LEAK"


@pytest.fixture
def forget_file(tmp_path) -> Path:
    path = tmp_path / "forget.jsonl"
    path.write_text("\n".join(json.dumps({"text": t}) for t in TEXTS))
    return path


def cli_ok(args: list[str]) -> None:
    try:
        main(args)
    except SystemExit as error:  # pragma: no cover - shows the code on failure
        raise AssertionError(f"exit {error.code}") from None


def cli_code(args: list[str]) -> int:
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    return exit_info.value.code


def command(*args: str) -> list[str]:
    return [sys.executable, "-m", "unmemorize.cli", *args]


def child_env(**extra: str) -> dict[str, str]:
    # One thread like the in-process reference (the thread count changes float summation
    # order), no network, and SIGINT handled as in a terminal even when the test runner's
    # shell ignores it for background jobs.
    return {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", **extra}


def spawn(args: list[str], log: Path, **env: str) -> subprocess.Popen:
    return subprocess.Popen(
        command(*args), stdout=log.open("w"), stderr=subprocess.STDOUT, env=child_env(**env),
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )


def wait_for(condition, process: subprocess.Popen, log: Path, timeout: float = 240) -> None:
    deadline = time.time() + timeout
    while not condition():
        if process.poll() is not None:
            pytest.fail(f"the run ended (exit {process.returncode}) before it could be interrupted:\n{log.read_text()[-2000:]}")
        if time.time() > deadline:
            process.kill()
            pytest.fail("timed out waiting for the run to make progress")
        time.sleep(0.005)


def assert_same_run(reference: Path, resumed: Path) -> None:
    """Bitwise the same weights, and the same losses and memorization at every step and epoch.
    Exact because both runs are on the CPU with one thread: the same operations in the same
    order (another thread count would reorder float sums; GPU atomics would too)."""
    a, b = load_file(reference / "model.safetensors"), load_file(resumed / "model.safetensors")
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name
    ma, mb = (json.loads((d / "metrics.json").read_text()) for d in (reference, resumed))
    assert [(s["step"], s["epoch"], s["loss"], s["lr"]) for s in ma["steps"]] == \
           [(s["step"], s["epoch"], s["loss"], s["lr"]) for s in mb["steps"]]
    for key in ("before", "epochs", "after", "stopped_because"):
        assert ma[key] == mb[key], key
    assert ma["resumed_from_step"] is None and mb["resumed_from_step"] > 0


def tree_digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
            for p in sorted(root.rglob("*"))}


# --- interruption ------------------------------------------------------------------------------


@pytest.mark.timeout(300)
def test_kill_9_then_resume_gives_bitwise_the_same_weights(tiny_models, forget_file, tmp_path):
    """LoRA (dropout draws random numbers every step) with AdamW and warm-up: the adapters,
    the optimizer moments, the scheduler and the RNG must all come back."""
    args = ["unlearn", "--model", str(tiny_models["llama"]), "--forget", str(forget_file), "--lr", "0.01",
            "--batch-size", "2", "--epochs", "100", "--max-steps", "24", "--warmup-steps", "4",
            "--weight-decay", "0.01", "--el-n", "2", "--el-stride", "4", "--seed", "7", "--cpu"]
    cli_ok([*args, "--out", str(tmp_path / "reference")])

    run, log = tmp_path / "run", tmp_path / "killed.log"
    saved = run.with_name("run.checkpoint")
    process = spawn([*args, "--out", str(run), "--checkpoint-every", "1"], log)
    wait_for(lambda: any(int(p.name[5:]) >= 5 for p in checkpoint.step_dirs(saved)), process, log)
    os.kill(process.pid, signal.SIGKILL)
    assert process.wait() == -signal.SIGKILL
    assert not run.exists()  # nothing that looks finished

    resumed = subprocess.run(command(*args, "--out", str(run), "--checkpoint-every", "1", "--resume"),
                             capture_output=True, text=True, env=child_env())
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "resuming from step" in resumed.stderr
    assert_same_run(tmp_path / "reference", run)
    assert not saved.exists()  # the finished output supersedes the checkpoint


@pytest.mark.timeout(300)
def test_ctrl_c_saves_a_checkpoint_and_resume_finishes_the_same(tiny_models, forget_file, tmp_path):
    """Full fine-tuning with gradient accumulation, no --checkpoint-every: Ctrl-C alone writes
    the checkpoint of the last completed step and says where it is."""
    args = ["unlearn", "--model", str(tiny_models["gpt_neo"]), "--forget", str(forget_file), "--no-lora",
            "--lr", "0.003", "--batch-size", "1", "--grad-accum", "2", "--epochs", "100", "--max-steps", "30",
            "--warmup-steps", "3", "--el-n", "2", "--el-stride", "4", "--cpu"]
    cli_ok([*args, "--out", str(tmp_path / "reference")])

    run, log = tmp_path / "run", tmp_path / "interrupted.log"
    process = spawn([*args, "--out", str(run)], log)
    wait_for(lambda: "step 4/" in log.read_text(), process, log)
    process.send_signal(signal.SIGINT)
    assert process.wait(timeout=120) == 130
    output = log.read_text()
    found = re.search(r"interrupted at step (\d+); resume with --resume \(checkpoint: (.+)\)", output)
    assert found, output[-2000:]
    step, path = int(found.group(1)), Path(found.group(2))
    assert step >= 4 and path == run.with_name("run.checkpoint") / f"step-{step:08d}" and path.is_dir()
    assert "Traceback" not in output and not run.exists()

    resumed = subprocess.run(command(*args, "--out", str(run), "--resume"), capture_output=True, text=True,
                             env=child_env())
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert_same_run(tmp_path / "reference", run)


class InterruptAt(Events):
    """Raises KeyboardInterrupt (as Ctrl-C would) after a given step or during an epoch's
    evaluation."""

    def __init__(self, step: int | None = None, evaluation: str | None = None) -> None:
        self.at_step, self.at_evaluation = step, evaluation

    def step(self, record, total_steps) -> None:
        if record.step == self.at_step:
            raise KeyboardInterrupt

    def memorization(self, label: str, means: dict[str, float]) -> None:
        if label == self.at_evaluation:
            raise KeyboardInterrupt


@pytest.mark.parametrize("where", [dict(step=3), dict(step=4), dict(evaluation="epoch 2"), dict(step=8)],
                         ids=["mid-epoch", "end-of-epoch", "in-evaluation", "last-step"])
def test_interrupt_anywhere_then_resume_is_exact(tiny_models, forget_file, tmp_path, where):
    """SGD, two micro-batches a step, two steps an epoch: interrupted inside an epoch, at its end
    before its evaluation, during it, and after the very last step."""
    common = dict(model=str(tiny_models["gemma3"]), forget=str(forget_file), optimizer="sgd", lr=0.05,
                  batch_size=1, grad_accum=2, epochs=4, el_n=[2], el_stride=4, seed=5, cpu=True)
    unlearn(UnlearnConfig(**common, out=str(tmp_path / "reference")))
    with pytest.raises(Interrupted, match=r"interrupted at step \d+; resume with --resume"):
        unlearn(UnlearnConfig(**common, out=str(tmp_path / "run")), InterruptAt(**where))
    assert checkpoint.latest(tmp_path / "run.checkpoint") is not None
    unlearn(UnlearnConfig(**common, out=str(tmp_path / "run"), resume=True))
    assert_same_run(tmp_path / "reference", tmp_path / "run")


def test_resume_refuses_other_options_or_data(tiny_models, forget_file, tmp_path):
    common = dict(model=str(tiny_models["llama"]), forget=str(forget_file), lr=0.01, batch_size=2,
                  epochs=3, el_n=[2], el_stride=4, out=str(tmp_path / "run"))
    with pytest.raises(Interrupted):
        unlearn(UnlearnConfig(**common), InterruptAt(step=3))
    with pytest.raises(UserError, match=r"--resume: --lr is 0\.02 here but 0\.01 in the checkpoint"):
        unlearn(UnlearnConfig(**{**common, "lr": 0.02}, resume=True))
    with pytest.raises(UserError, match=r"--resume: --strength is 5\.0 here but 10\.0"):
        unlearn(UnlearnConfig(**common, imagination_strength=5.0, resume=True))
    other = tmp_path / "other.jsonl"
    other.write_text(forget_file.read_text() + "\n" + json.dumps({"text": "One more line to forget."}))
    with pytest.raises(UserError, match="the forget set, tokenizer or focus gives other training data"):
        unlearn(UnlearnConfig(**{**common, "forget": str(other)}, resume=True))
    # Starting over needs --overwrite: the unfinished run is never discarded silently.
    with pytest.raises(UserError, match="pass --resume to continue it, or --overwrite"):
        unlearn(UnlearnConfig(**common))
    # Where outputs go and evaluation batching may change; the same data under another path too.
    copy = tmp_path / "copy.jsonl"
    copy.write_text(forget_file.read_text())
    metrics = unlearn(UnlearnConfig(**{**common, "forget": str(copy)}, eval_batch_size=3, resume=True))
    assert metrics["resumed_from_step"] == 3 and len(metrics["steps"]) == 6


# --- faults ------------------------------------------------------------------------------------


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(tiny_models, forget_file, tmp_path, monkeypatch, capsys):
    from unmemorize.methods.di import DeliberateImagination

    calls = {"n": 0}
    original = DeliberateImagination.token_target

    def nan_at_step_3(self, targets, teacher_logits=None, overwrite=False):  # one call a step: one micro-batch
        calls["n"] += 1
        target = original(self, targets, teacher_logits, overwrite)
        if calls["n"] == 3:
            target.constant = torch.full(targets.shape, float("nan"))
        return target

    monkeypatch.setattr(DeliberateImagination, "token_target", nan_at_step_3)
    out = tmp_path / "run"
    code = cli_code(["unlearn", "--model", str(tiny_models["llama"]), "--forget", str(forget_file),
                     "--batch-size", "4", "--epochs", "5", "--lr", "0.01", "--el-n", "2",
                     "--checkpoint-every", "1", "--out", str(out)])
    stderr = capsys.readouterr().err
    good = out.with_name("run.checkpoint") / "step-00000002"
    assert code == 2 and "Traceback" not in stderr
    assert f"training diverged at step 3: the loss is nan; lower --lr; last good checkpoint: {good} (step 2)" in stderr
    assert checkpoint.step_dirs(good.parent) == [good] and not out.exists()
    assert all(torch.isfinite(t).all() for t in load_file(good / "trainable.safetensors").values())


def test_non_finite_weights_stop_the_run(tiny_models, forget_file, tmp_path):
    config = UnlearnConfig(model=str(tiny_models["gpt_neo"]), forget=str(forget_file), lora=False,
                           optimizer="sgd", lr=1e38, max_grad_norm=0, batch_size=1, epochs=2,
                           el_n=[2], checkpoint_every=1, out=str(tmp_path / "run"))
    with pytest.raises(UserError, match=r"training diverged at step \d+: (the loss is|weight .* is not finite)") as info:
        unlearn(config)
    diverged = int(re.search(r"at step (\d+)", str(info.value)).group(1))
    kept = checkpoint.step_dirs(tmp_path / "run.checkpoint")
    assert [int(p.name[5:]) for p in kept] == ([diverged - 1] if diverged > 1 else [])
    for path in kept:
        assert all(torch.isfinite(t).all() for t in load_file(path / "trainable.safetensors").values())


def test_a_failed_checkpoint_write_keeps_the_previous_one(tmp_path, monkeypatch):
    weights = {"w": torch.ones(3)}
    first = checkpoint.save(tmp_path, 1, weights, {"rng": checkpoint.capture_rng()}, {"step": 1})

    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", disk_full)
    with pytest.raises(OSError):
        checkpoint.save(tmp_path, 2, {"w": torch.zeros(3)}, {}, {"step": 2})
    assert sorted(p.name for p in tmp_path.iterdir()) == [first.name]  # no half-written step-2
    assert torch.equal(checkpoint.load(first).trainable["w"], torch.ones(3))


def test_a_failed_output_write_keeps_the_previous_output(tiny_models, forget_file, tmp_path, monkeypatch):
    from transformers import PreTrainedTokenizerBase

    out = tmp_path / "run"
    base = dict(model=str(tiny_models["llama"]), forget=str(forget_file), max_steps=1, el_n=[2], out=str(out))
    unlearn(UnlearnConfig(**base))
    before = tree_digest(out)

    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(PreTrainedTokenizerBase, "save_pretrained", disk_full)
    with pytest.raises(OSError):
        unlearn(UnlearnConfig(**{**base, "max_steps": 2}, overwrite=True))
    assert tree_digest(out) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["forget.jsonl", "run"]  # no temporaries


def test_output_folders_get_the_umask_permissions_not_private_ones(tiny_models, forget_file, tmp_path):
    # Outputs are built in a temporary folder (mkdtemp: 0700) and renamed into place, reports and
    # figures written under temporary names (mkstemp: 0600); the results are ordinary folders and
    # files, readable as the umask allows, like anything else the user creates.
    from unmemorize.reporting.report import write_report

    umask = os.umask(0o022)
    try:
        out = tmp_path / "run"
        unlearn(UnlearnConfig(model=str(tiny_models["llama"]), forget=str(forget_file), max_steps=1,
                              el_n=[2], out=str(out)))
        write_report(out)
    finally:
        os.umask(umask)
    assert out.stat().st_mode & 0o777 == 0o755
    files = [p for p in out.rglob("*") if p.is_file()]
    assert {"report.html", "report.md", "README.md", "metrics.json", "memorization.png"} <= {p.name for p in files}
    assert {p.name: p.stat().st_mode & 0o777 for p in files} == {p.name: 0o644 for p in files}


def test_inputs_are_never_modified(tiny_models, forget_file, tmp_path):
    model = tiny_models["gpt_neo"]
    before = tree_digest(model), forget_file.read_bytes(), forget_file.stat().st_mtime_ns
    out = tmp_path / "run"
    cli_ok(["unlearn", "--model", str(model), "--forget", str(forget_file), "--max-steps", "2",
            "--batch-size", "2", "--el-n", "2", "--save-adapter", "--checkpoint-every", "1", "--out", str(out)])
    cli_ok(["unlearn", "--model", str(model), "--forget", str(forget_file), "--max-steps", "2",
            "--batch-size", "2", "--el-n", "2", "--no-lora", "--overwrite", "--out", str(out)])
    assert (tree_digest(model), forget_file.read_bytes(), forget_file.stat().st_mtime_ns) == before


# --- the forget set does not leak --------------------------------------------------------------


def secret_texts() -> list[str]:
    return [f"{t[:-1]}, code {SECRET}." for t in TEXTS]


@pytest.mark.timeout(300)
def test_planted_secret_never_appears_in_output_files_or_temporaries(tiny_models, tmp_path):
    """A run on a `datasets` folder (the loader that builds cache files): the secret is in no
    line of output, no written file, and nothing is left in the temporary folder or the
    datasets cache."""
    data = tmp_path / "secret-data"
    data.mkdir()
    (data / "train.jsonl").write_text("\n".join(json.dumps({"text": t}) for t in secret_texts()))
    temporary, datasets_cache, out = tmp_path / "tmp", tmp_path / "datasets-cache", tmp_path / "run"
    temporary.mkdir()
    datasets_cache.mkdir()
    result = subprocess.run(
        command("unlearn", "--model", str(tiny_models["llama"]), "--forget", str(data), "--focus", r"regex:\d+",
                "--focus-mode", "soft", "--max-steps", "3", "--batch-size", "2", "--el-n", "2",
                "--checkpoint-every", "1", "--out", str(out)),
        capture_output=True, text=True, env=child_env(TMPDIR=str(temporary), HF_DATASETS_CACHE=str(datasets_cache)),
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "forget set: 4 sequences" in result.stderr  # the run did report on the data
    assert SECRET not in result.stdout + result.stderr
    for path in tmp_path.rglob("*"):
        if path.is_file() and data not in path.parents:
            assert SECRET.encode() not in path.read_bytes(), path
    assert list(temporary.iterdir()) == []
    assert [p for p in datasets_cache.rglob("*") if p.is_file()] == []


def test_planted_secret_stays_out_of_reports_checkpoints_and_errors(tiny_models, tmp_path, capfd):
    forget = tmp_path / "forget.jsonl"
    forget.write_text("\n".join(json.dumps({"text": t}) for t in secret_texts()))
    # A run without --out keeps its checkpoint: its files are scanned too.
    cli_ok(["unlearn", "--model", str(tiny_models["llama"]), "--forget", str(forget), "--max-steps", "2",
            "--el-n", "2", "--checkpoint-every", "1", "--checkpoint-dir", str(tmp_path / "ckpt")])
    cli_ok(["audit", "--model", str(tiny_models["llama"]), "--data", str(forget), "--el-n", "2",
            "--json", str(tmp_path / "audit.json")])
    assert checkpoint.latest(tmp_path / "ckpt") is not None
    bad_inputs = {
        "span.jsonl": json.dumps({"text": "abc", "spans": [SECRET, [0, 1]]}),
        "span-object.jsonl": json.dumps({"text": "abc", "spans": [{"start": SECRET, "end": 2}]}),
        "json.jsonl": '{"text": "' + SECRET + '" oops}',
        "type.jsonl": json.dumps({"text": [SECRET]}),
        "noheader.csv": f"{SECRET} lives here,another field\nsecond row,x\n",
        "noheader-word.csv": f"{SECRET},x\nsecond row,y\n",
        "utf8.txt": f"{SECRET}\n".encode() + b"\xff\xfe",
    }
    for name, content in bad_inputs.items():
        path = tmp_path / name
        path.write_bytes(content if isinstance(content, bytes) else content.encode())
        assert cli_code(["unlearn", "--model", str(tiny_models["llama"]), "--forget", str(path)]) == 2, name
    captured = capfd.readouterr()
    assert captured.err.count("error:") == len(bad_inputs)
    assert SECRET not in captured.out + captured.err
    for path in [*(tmp_path / "ckpt").rglob("*"), tmp_path / "audit.json"]:
        if path.is_file():
            assert SECRET.encode() not in path.read_bytes(), path


def test_temporary_files_are_removed_when_a_run_fails(tiny_models, tmp_path, monkeypatch):
    data = tmp_path / "secret-data"
    data.mkdir()
    (data / "train.jsonl").write_text("\n".join(json.dumps({"text": t}) for t in secret_texts()))
    temporary = tmp_path / "tmp"
    temporary.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(temporary))
    with pytest.raises(UserError, match="more than --max-examples 2"):
        unlearn(UnlearnConfig(model=str(tiny_models["llama"]), forget=str(data), max_examples=2))
    assert list(temporary.iterdir()) == []


# --- security ----------------------------------------------------------------------------------


@pytest.fixture
def blocked_network(monkeypatch) -> list:
    """Every attempt to open a connection or resolve a name is recorded and fails."""
    attempts = []

    def refuse(*args, **kwargs):
        attempts.append(args[1:2] or args)
        raise OSError("network blocked by the test")

    monkeypatch.setattr(socket.socket, "connect", lambda self, *a: refuse(self, *a))
    monkeypatch.setattr(socket.socket, "connect_ex", lambda self, *a: refuse(self, *a))
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    return attempts


def test_no_network_request_offline_or_for_registry_models(tiny_models, forget_file, tmp_path, monkeypatch,
                                                          blocked_network, capsys):
    from unmemorize.models import registry_status

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    cli_ok(["unlearn", "--model", str(tiny_models["llama"]), "--forget", str(forget_file), "--max-steps", "1",
            "--el-n", "2", "--out", str(tmp_path / "run")])
    assert cli_code(["unlearn", "--model", "someone/some-model", "--forget", str(forget_file)]) == 2
    # Registry models come from the local cache even when the hub could be asked.
    monkeypatch.delenv("HF_HUB_OFFLINE")
    if not next(e for e in registry_status() if e["name"] == "gpt-neo-125m")["cached"]:
        assert cli_code(["unlearn", "--model", "gpt-neo-125m", "--forget", str(forget_file)]) == 2
        assert "not in the local Hugging Face cache" in capsys.readouterr().err
    assert blocked_network == []
