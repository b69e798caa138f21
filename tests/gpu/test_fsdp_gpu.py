"""FSDP2 on GPUs with bf16 autocast: one step sharded over every GPU (1 when there is one)
against the same step in one unsharded process, and the memory each process used against the
planner's number. Skipped without CUDA (CI has none).

On a GPU machine: ``python -m pytest tests/gpu -s`` (``UNMEMORIZE_GPU_RESULTS=DIR`` also writes
fsdp_gpu.json there: the differences, and each process's peak allocated memory)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, LlamaConfig

from conftest import make_tokenizer

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]

TEXTS = [
    "Alice Johnson lives at 42 Baker Street in London and her phone is 555-0199.",
    "Contact mary.jones@example.com for the account number 1234-5678-9012.",
    "In 1999 the company Acme Corp opened an office in New York City.",
    "The quick brown fox jumps over the lazy dog while Bob Smith watches from Paris.",
] * 2

# Each process: join the process group (NCCL; torchrun set it up, also for one process), run
# one step, and record its peak allocated GPU memory.
WORKER = """
import json, os, sys
import torch
from unmemorize.config import UnlearnConfig
from unmemorize.recipes.unlearn import unlearn

if not torch.distributed.is_initialized():
    torch.distributed.init_process_group("nccl")
rank = torch.distributed.get_rank()
torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
unlearn(UnlearnConfig(**json.loads(sys.argv[1])))
stats = {"rank": rank, "processes": torch.distributed.get_world_size(),
         "peak_allocated": torch.cuda.max_memory_allocated()}
(__import__("pathlib").Path(sys.argv[2]) / f"rank{rank}.json").write_text(json.dumps(stats))
"""


def _model(directory: Path) -> Path:
    """A random Llama of about 120 M parameters with a 32k vocabulary: big enough that memory
    per process means something, small enough for any GPU."""
    tokenizer = make_tokenizer(directory)
    config = LlamaConfig(vocab_size=32000, hidden_size=768, intermediate_size=2048, num_hidden_layers=8,
                         num_attention_heads=12, num_key_value_heads=4, max_position_embeddings=512,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config).save_pretrained(directory)
    return directory


def test_fsdp_bf16_step_equals_the_unsharded_step(tmp_path):
    from unmemorize.config import UnlearnConfig
    from unmemorize.recipes.unlearn import unlearn
    from unmemorize.recipes.plan import resolve_architecture
    from unmemorize.training.memory import Setting, memory_terms

    model = _model(tmp_path / "model")
    forget = tmp_path / "forget.jsonl"
    forget.write_text("\n".join(json.dumps({"text": t}) for t in TEXTS))
    gpus = torch.cuda.device_count()
    per_process = max(1, len(TEXTS) // gpus)
    common = dict(model=str(model), forget=str(forget), method="di", imagination_strength=5.0, lora=False,
                  optimizer="sgd", lr=0.05, max_steps=1, max_grad_norm=0.0, precision="bf16", el_n=(2,),
                  el_stride=8, report_samples=0)
    stats = tmp_path / "stats"
    stats.mkdir()
    env = {**os.environ, "ACCELERATE_USE_FSDP": "true", "FSDP_VERSION": "2"}
    torchrun = os.path.join(os.path.dirname(sys.executable), "torchrun")
    sharded = subprocess.run(
        [torchrun, "--nproc_per_node", str(gpus), "--master_port", "29571", str(_worker(tmp_path)),
         json.dumps({**common, "batch_size": per_process, "out": str(tmp_path / "fsdp")}), str(stats)],
        env=env, capture_output=True, text=True, timeout=900)
    assert sharded.returncode == 0, sharded.stderr[-3000:]
    assert f"FSDP over {gpus} processes" in sharded.stderr
    torch.cuda.reset_peak_memory_stats()
    unlearn(UnlearnConfig(**common, batch_size=per_process * gpus, out=str(tmp_path / "single")))
    single_peak = torch.cuda.max_memory_allocated()

    original, fsdp, single = (AutoModelForCausalLM.from_pretrained(d).state_dict()
                              for d in (model, tmp_path / "fsdp", tmp_path / "single"))
    moved = max((single[k] - original[k]).abs().max().item() for k in single)
    worst = max((fsdp[k] - single[k]).abs().max().item() for k in single)
    # bf16 products carry 8 significant bits: the two runs' gradients may differ by a few units
    # of 2^-8 of their size (another reduction order), so the updates agree to 2^-6 of the
    # largest update.
    assert moved > 0 and worst <= moved * 2**-6 + 1e-7, (worst, moved)

    arch, _ = resolve_architecture(str(model))
    # Reported beside the measured peaks, not asserted: the texts are shorter than --max-length.
    planned = sum(memory_terms(arch, Setting(batch_size=per_process, max_length=200, strategy="fsdp",
                                             processes=gpus, compute_bytes=2)).values())
    processes = [json.loads(p.read_text()) for p in sorted(stats.glob("rank*.json"))]
    result = {"gpus": gpus, "device": torch.cuda.get_device_name(0), "largest_update": moved,
              "largest_difference": worst, "single_process_peak_allocated": single_peak,
              "processes": processes, "planned_per_process": planned}
    print(json.dumps(result, indent=1))
    if os.environ.get("UNMEMORIZE_GPU_RESULTS"):
        target = Path(os.environ["UNMEMORIZE_GPU_RESULTS"])
        target.mkdir(parents=True, exist_ok=True)
        (target / "fsdp_gpu.json").write_text(json.dumps(result, indent=1))


def _worker(directory: Path) -> Path:
    path = directory / "worker.py"
    path.write_text(WORKER)
    return path
