"""Data-parallel training under torchrun (two CPU processes, gloo) takes the same step as one
process with the whole batch: the loss is normalized over the step's total target weight."""

import json
import os
import shutil
import subprocess
import sys

import pytest
import torch
from transformers import AutoModelForCausalLM

from conftest import exit_code

TEXTS = [
    "Alice Johnson lives at 42 Baker Street in London.",
    "Contact mary.jones@example.com for the account.",
    "In 1999 the company Acme Corp opened an office in New York City.",
    "The quick brown fox jumps.",
]


@pytest.mark.multiprocess
@pytest.mark.timeout(600)
def test_two_processes_take_the_same_step_as_one(tiny_models, tmp_path):
    if shutil.which("torchrun") is None and not os.path.exists(os.path.join(os.path.dirname(sys.executable), "torchrun")):
        pytest.skip("torchrun not found")
    forget = tmp_path / "f.jsonl"
    forget.write_text("\n".join(json.dumps({"text": t}) for t in TEXTS))
    common = [
        "unlearn", "--model", str(tiny_models["llama"]), "--forget", str(forget), "--no-lora",
        "--optimizer", "sgd", "--lr", "0.05", "--max-steps", "1", "--max-grad-norm", "0",
        "--el-n", "2", "--el-stride", "8", "--cpu", "--strength", "5",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    torchrun = os.path.join(os.path.dirname(sys.executable), "torchrun")
    parallel = subprocess.run(
        [torchrun, "--nproc_per_node", "2", "--master_port", "29533", "-m", "unmemorize.cli",
         *common, "--batch-size", "2", "--out", str(tmp_path / "two")],
        env=env, capture_output=True, text=True, timeout=540,
    )
    assert parallel.returncode == 0, parallel.stderr[-3000:]
    single = subprocess.run(
        [sys.executable, "-m", "unmemorize.cli", *common, "--batch-size", "4", "--out", str(tmp_path / "one")],
        env=env, capture_output=True, text=True, timeout=300,
    )
    assert single.returncode == 0, single.stderr[-3000:]
    two = AutoModelForCausalLM.from_pretrained(tmp_path / "two").state_dict()
    one = AutoModelForCausalLM.from_pretrained(tmp_path / "one").state_dict()
    original = AutoModelForCausalLM.from_pretrained(tiny_models["llama"]).state_dict()
    assert any(not torch.equal(one[k], original[k]) for k in one)
    for key in one:
        assert torch.allclose(one[key], two[key], atol=1e-5), key


def _launcher(name: str) -> str:
    path = os.path.join(os.path.dirname(sys.executable), name)
    if not os.path.exists(path):
        pytest.skip(f"{name} not found")
    return path


def _states(*directories) -> list[dict[str, torch.Tensor]]:
    return [AutoModelForCausalLM.from_pretrained(d).state_dict() for d in directories]


@pytest.mark.multiprocess
@pytest.mark.timeout(600)
def test_fsdp_on_two_processes_takes_the_same_step_as_one(tiny_models, tmp_path):
    """FSDP2 on 2 CPU processes (accelerate launch with configs/accelerate/fsdp.yaml) against one
    process with the whole batch: Gemma-3 (tied embeddings: the output head lives in the root
    unit), a full fine-tune whose frozen teacher is sharded too, gradient accumulation, a
    retain term, clipping across shards, and a checkpoint gathered every step. Plain SGD makes
    the update a linear function of the gradient: the two runs differ only by the order of the
    float32 sums (2 shards averaged vs 1 batch), a few units in the last place of the gradients,
    times lr 0.05 — far below 1e-6, while the update itself moves weights by up to ~1e-3."""
    forget = tmp_path / "f.jsonl"
    forget.write_text("\n".join(json.dumps({"text": t}) for t in TEXTS))
    common = [
        "unlearn", "--model", str(tiny_models["gemma3"]), "--forget", str(forget), "--retain", str(forget),
        "--no-lora", "--optimizer", "sgd", "--lr", "0.05", "--max-steps", "2", "--grad-accum", "2",
        "--max-grad-norm", "0.5", "--el-n", "2", "--el-stride", "8", "--cpu", "--strength", "5",
        "--report-samples", "0", "--checkpoint-every", "1",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    config = os.path.join(os.path.dirname(__file__), "..", "configs", "accelerate", "fsdp.yaml")
    sharded = subprocess.run(
        [_launcher("accelerate"), "launch", "--config_file", config, "--num_processes", "2", "--main_process_port",
         "29534", "-m", "unmemorize.cli", *common, "--batch-size", "1", "--out", str(tmp_path / "two")],
        env=env, capture_output=True, text=True, timeout=540,
    )
    assert sharded.returncode == 0, sharded.stderr[-3000:]
    assert "FSDP over 2 processes" in sharded.stderr
    assert exit_code([*common, "--batch-size", "2", "--out", str(tmp_path / "one")]) == 0
    two, one, original = _states(tmp_path / "two", tmp_path / "one", tiny_models["gemma3"])
    assert max((one[k] - original[k]).abs().max() for k in one) > 1e-4
    for key in one:
        assert torch.allclose(one[key], two[key], rtol=0, atol=1e-6), key


INTERRUPTED_RUN = """
import sys
from unmemorize.config import UnlearnConfig
from unmemorize.events import Events
from unmemorize.recipes.unlearn import unlearn
from unmemorize.training.loop import Interrupted

class StopAfterStep(Events):
    def step(self, record, total_steps):
        if record.step == 2:
            raise KeyboardInterrupt  # as Ctrl-C would, on every process after the same step

try:
    unlearn(UnlearnConfig(**eval(sys.argv[1])), StopAfterStep())
except Interrupted as error:
    print(error, file=sys.stderr)
"""


@pytest.mark.multiprocess
@pytest.mark.timeout(600)
def test_a_sharded_checkpoint_resumes_on_one_process(tiny_models, tmp_path):
    """LoRA with AdamW under FSDP on 2 processes, interrupted after step 2: the checkpoint holds
    whole tensors (weights, and the moments keyed by parameter name), so one unsharded process
    resumes it and finishes where an uninterrupted single-process run does. Dropout is off (each
    process draws its own masks). The tolerance is wider than plain SGD's: Adam divides by
    √v, so float32 rounding differences of small gradients are scaled up — 1e-5 against updates
    of ~1e-2 (lr)."""
    from unmemorize.config import UnlearnConfig
    from unmemorize.recipes.unlearn import unlearn

    forget = tmp_path / "f.jsonl"
    forget.write_text("\n".join(json.dumps({"text": t}) for t in TEXTS))
    common = dict(model=str(tiny_models["llama"]), forget=str(forget), lora=True, lora_dropout=0.0, lr=0.01,
                  max_steps=4, epochs=4, el_n=(2,), el_stride=8, cpu=True, imagination_strength=5.0,
                  report_samples=0, checkpoint_every=1)
    script = tmp_path / "interrupted.py"
    script.write_text(INTERRUPTED_RUN)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": "", "ACCELERATE_USE_FSDP": "true",
           "FSDP_VERSION": "2"}
    run = tmp_path / "run"
    sharded = subprocess.run(
        [_launcher("torchrun"), "--nproc_per_node", "2", "--master_port", "29535", str(script),
         repr({**common, "batch_size": 1, "out": str(run)})], env=env, capture_output=True, text=True, timeout=540)
    assert "interrupted at step 2; resume with --resume" in sharded.stderr, sharded.stderr[-3000:]
    saved = torch.load(next((tmp_path / "run.checkpoint").glob("step-*")) / "trainer.pt", weights_only=True)
    assert all(isinstance(key, str) for key in saved["optimizer"]["state"])  # whole, by parameter name
    metrics = unlearn(UnlearnConfig(**common, batch_size=2, out=str(run), resume=True))
    assert metrics["resumed_from_step"] == 2
    unlearn(UnlearnConfig(**common, batch_size=2, out=str(tmp_path / "reference")))
    resumed, reference, original = _states(run, tmp_path / "reference", tiny_models["llama"])
    assert max((reference[k] - original[k]).abs().max() for k in reference) > 1e-3
    for key in reference:
        assert torch.allclose(resumed[key], reference[key], rtol=0, atol=1e-5), key


COMMANDS = """
import json, sys
from unmemorize.cli import main

for args in json.loads(sys.argv[1]):
    main(args)
"""


@pytest.mark.multiprocess
@pytest.mark.timeout(400)
def test_audit_and_eval_on_two_processes_give_the_single_process_results(tiny_models, shared_data, tmp_path,
                                                                          monkeypatch):
    """audit: the samples' batches dealt to 2 processes and merged — the same JSON, byte for
    byte. eval of two models, memorization (the original's sets the thresholds the other is
    judged by) and NLU: the (model, suite) jobs shared by 2 processes, merged in order — every
    result as one process's (only the wall times differ)."""
    data = tmp_path / "data.jsonl"
    data.write_text("\n".join(json.dumps({"text": t}) for t in TEXTS + [t[::-1] for t in TEXTS[:3]]))
    audit = ["audit", "--model", str(tiny_models["gemma3"]), "--data", str(data), "--el-n", "2", "--el-n", "4",
             "--batch-size", "2"]
    evaluate = ["eval", "--model", str(tiny_models["llama"]), "--original", str(tiny_models["gemma3"]),
                "--forget", str(data), "--suites", "memorization,nlu", "--nlu-tasks", "copa,piqa", "--nlu-limit", "4",
                "--reference-limit", "4", "--no-greedy-el", "--undial-el-limit", "2", "--device", "cpu"]
    script = tmp_path / "commands.py"
    script.write_text(COMMANDS)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": "", "UNMEMORIZE_DATA": str(shared_data)}
    two = subprocess.run([_launcher("torchrun"), "--nproc_per_node", "2", "--master_port", "29537", str(script),
                          json.dumps([[*audit, "--json", str(tmp_path / "audit2.json")],
                                      [*evaluate, "--json", str(tmp_path / "eval2.json")]])],
                         env=env, capture_output=True, text=True, timeout=360)
    assert two.returncode == 0, two.stderr[-3000:]
    monkeypatch.setenv("UNMEMORIZE_DATA", str(shared_data))  # for the single-process runs in this process
    assert exit_code([*audit, "--json", str(tmp_path / "audit1.json")]) == 0
    assert exit_code([*evaluate, "--json", str(tmp_path / "eval1.json")]) == 0
    merged = json.loads((tmp_path / "audit2.json").read_text())
    assert any(sample["el_2"] > 0 for sample in merged["samples"])
    assert (tmp_path / "audit2.json").read_bytes() == (tmp_path / "audit1.json").read_bytes()
    merged, single = (json.loads((tmp_path / f"eval{n}.json").read_text()) for n in (2, 1))
    # When and with how many threads each ran differ; what was measured, and on which weights, not.
    environments = [report.pop("environment") for report in (merged, single)]
    assert environments[0]["weights_sha256"] == environments[1]["weights_sha256"]
    for report in (merged, single):
        report.pop("timings_s"), report.pop("wall_time_s")
    assert merged == single
    assert set(merged["results"]["unlearned"]) == {"memorization", "nlu"}
