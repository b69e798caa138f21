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
