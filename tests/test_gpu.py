"""Checks that need a CUDA GPU: training steps, losses and metrics on the GPU agree with the CPU.

Skipped without one (CI has none). On a GPU machine: ``python -m pytest -m gpu``."""

import json

import pytest
import torch
from transformers import AutoModelForCausalLM

from unmemorize.config import EvalConfig
from unmemorize.recipes.evaluate import run_eval
from unmemorize.methods import get_method
from unmemorize.metrics.memorization import memorization
from unmemorize.models import load_model
from unmemorize.config import UnlearnConfig
from unmemorize.recipes.unlearn import unlearn

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]

TEXTS = [
    "Alice Johnson lives at 42 Baker Street in London.",
    "Contact mary.jones@example.com for the account.",
    "In 1999 the company Acme Corp opened an office.",
    "The quick brown fox jumps over the lazy dog.",
]
UNSEEN = [
    "A river runs through the valley below the old mill.",
    "The committee will meet again on the first Monday.",
    "Bread rises faster in a warm kitchen than a cold one.",
    "Her violin teacher lived on the other side of town.",
]


@pytest.fixture
def files(tmp_path):
    forget, reference = tmp_path / "forget.jsonl", tmp_path / "reference.jsonl"
    forget.write_text("\n".join(json.dumps({"text": t}) for t in TEXTS))
    reference.write_text("\n".join(json.dumps({"text": t}) for t in UNSEEN))
    return forget, reference


def _state(out) -> dict[str, torch.Tensor]:
    return AutoModelForCausalLM.from_pretrained(out).state_dict()


@pytest.mark.parametrize("method,params", [("di", {"imagination_strength": 5.0}), ("ga", {}), ("npo", {"beta": 0.1})])
def test_full_finetune_step_on_gpu_equals_cpu(tiny_models, files, tmp_path, method, params):
    forget, _ = files
    states = []
    for cpu in (True, False):
        out = tmp_path / f"{method}-{'cpu' if cpu else 'gpu'}"
        unlearn(UnlearnConfig(
            model=str(tiny_models["llama"]), forget=str(forget), method=method, **params, lora=False,
            optimizer="sgd", lr=0.05, max_steps=1, batch_size=4, warmup_steps=0, weight_decay=0.0,
            max_grad_norm=0.0, el_n=[2], el_stride=4, cpu=cpu, out=str(out),
        ))
        states.append(_state(out))
    moved = max((states[1][k] - AutoModelForCausalLM.from_pretrained(tiny_models["llama"]).state_dict()[k]).abs().max().item()
                for k in states[1])
    assert moved > 1e-4
    for key in states[0]:
        assert torch.allclose(states[0][key], states[1][key], atol=1e-5), key


def test_lora_run_on_gpu_follows_the_cpu_run(tiny_models, files, tmp_path):
    forget, _ = files
    runs = []
    for cpu in (True, False):
        out = tmp_path / ("cpu" if cpu else "gpu")
        unlearn(UnlearnConfig(
            model=str(tiny_models["gemma3"]), forget=str(forget), method="di", imagination_strength=10.0,
            lora=True, lora_dropout=0.0, lr=1e-2, max_steps=3, batch_size=2, el_n=[2], el_stride=4,
            cpu=cpu, out=str(out),
        ))
        runs.append(json.loads((out / "metrics.json").read_text()))
    cpu_losses = [s["loss"] for s in runs[0]["steps"]]
    gpu_losses = [s["loss"] for s in runs[1]["steps"]]
    assert len(gpu_losses) == 3
    assert gpu_losses == pytest.approx(cpu_losses, rel=1e-4)
    assert runs[1]["after"]["mean"]["ma"] == pytest.approx(runs[0]["after"]["mean"]["ma"], abs=1e-6)


@pytest.mark.parametrize("name,params", [("di", {"imagination_strength": 3.0}), ("ga", {}), ("npo", {}), ("simnpo", {})])
def test_losses_on_gpu_equal_cpu(name, params):
    torch.manual_seed(0)
    logits, teacher = torch.randn(2, 6, 50), torch.randn(2, 6, 50)
    ids = torch.randint(0, 50, (2, 6))
    weights = torch.tensor([[0, 1, 1, 1, 1, 0], [0, 1, 1, 0, 0, 0]], dtype=torch.float32)
    batch = {"input_ids": ids, "attention_mask": (weights > 0).long(), "loss_weights": weights}
    method = get_method(name, **params)
    on_cpu = method.loss(logits, batch, teacher)
    on_gpu = method.loss(logits.cuda(), {k: v.cuda() for k, v in batch.items()}, teacher.cuda())
    assert on_gpu.device.type == "cuda"
    assert on_gpu.item() == pytest.approx(on_cpu.item(), rel=1e-5)


def test_memorization_on_gpu_equals_cpu(tiny_models):
    results = []
    for device in ("cpu", "cuda"):
        loaded = load_model(str(tiny_models["gpt_neo"]), device=device)
        ids = [loaded.tokenizer(t)["input_ids"] for t in TEXTS]
        results.append(memorization(loaded.model, ids, ns=(2,), el_stride=1,
                                    pad_token_id=loaded.tokenizer.pad_token_id).means())
    assert results[1] == pytest.approx(results[0], abs=1e-6)


def test_eval_runs_on_the_gpu_by_default(tiny_models, files):
    forget, reference = files
    reports = []
    for device in ("cpu", None):
        reports.append(run_eval(EvalConfig(
            model=str(tiny_models["llama"]), forget=str(forget), reference=str(reference),
            suites=["memorization"], el_n=[2], el_stride=2, undial_el=False, extraction_prefix=4,
            extraction_suffix=2, device=device,
        )))
    assert reports[0]["device"] == "cpu" and reports[1]["device"] == "cuda"
    cpu, gpu = (r["results"]["model"]["memorization"] for r in reports)
    assert gpu["forget"]["ma"] == pytest.approx(cpu["forget"]["ma"], abs=1e-6)
    assert gpu["mia"]["loss"]["auc"] == pytest.approx(cpu["mia"]["loss"]["auc"], abs=1e-6)
