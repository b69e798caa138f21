"""Baseline methods: each loss against its formula written out by hand, the retain term (its
own normalization, accumulation and processes equal one big batch, exact resume), task
arithmetic's weights, private decoding's distribution, and the options each method refuses."""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from unmemorize.errors import UserError
from unmemorize.methods import get_method, method_parameters
from unmemorize.methods.dpd import DPD_FILE, apply_dpd, dpd_logits
from unmemorize.metrics.decoding import choose_argmax, decode
from unmemorize.models import load_model
from unmemorize.config import UnlearnConfig
from unmemorize.events import Events
from unmemorize.recipes.unlearn import unlearn
from unmemorize.training.components import RetainStream
from unmemorize.training.loop import Interrupted

from conftest import exit_code

TEXTS = [
    "Alice Johnson lives at 42 Baker Street in London.",
    "Contact mary.jones@example.com for the account.",
    "In 1999 the company Acme Corp opened an office.",
    "The quick brown fox jumps over the lazy dog.",
]
RETAIN = [
    "Memorized text is text a model can reproduce word for word.",
    "Bob Smith watches from Paris.",
    "Deliberate imagination lowers the logit of the memorized token and keeps the rest.",
    "The company opened an office in New York City.",
]


def write_jsonl(path, texts):
    path.write_text("\n".join(json.dumps({"text": t}) for t in texts))
    return path


@pytest.fixture
def forget_file(tmp_path):
    return write_jsonl(tmp_path / "forget.jsonl", TEXTS)


@pytest.fixture
def retain_file(tmp_path):
    return write_jsonl(tmp_path / "retain.jsonl", RETAIN)


# --- losses on random logits, against loops over the formula ----------------------------------


def make_batch(seed=0, B=4, T=6, V=7):
    """float64 logits; sequence lengths 6, 4, 2 and 1 (the last has no target at all)."""
    g = torch.Generator().manual_seed(seed)
    student = torch.randn(B, T, V, generator=g, dtype=torch.float64) * 3
    teacher = torch.randn(B, T, V, generator=g, dtype=torch.float64) * 3
    ids = torch.randint(0, V, (B, T), generator=g)
    weights = torch.zeros(B, T)
    for b, n in enumerate([6, 4, 2, 1]):
        weights[b, 1:n] = 1.0
    return student, teacher, ids, weights


def log_prob(logits_row, token) -> float:
    z = [float(x) for x in logits_row]
    top = max(z)
    return z[token] - top - math.log(sum(math.exp(x - top) for x in z))


def hand_sequence_loglik(logits, ids, weights, b) -> float:
    return sum(float(weights[b, t]) * log_prob(logits[b, t - 1], int(ids[b, t]))
               for t in range(1, ids.shape[1]) if weights[b, t] > 0)


def soft_focus(weights):
    focus = torch.zeros_like(weights)
    focus[0, 2] = focus[0, 4] = focus[1, 3] = 1
    return weights * torch.where(focus > 0, 10.0, 1.0)


@pytest.mark.parametrize("focused", [False, True])
def test_ga_is_minus_the_weighted_mean_nll(focused):
    student, _, ids, weights = make_batch()
    w = soft_focus(weights) if focused else weights
    nll = sum(-float(w[b, t]) * log_prob(student[b, t - 1], int(ids[b, t]))
              for b in range(ids.shape[0]) for t in range(1, ids.shape[1]) if w[b, t] > 0)
    expected = -nll / float(w.sum())
    got = get_method("ga").loss(student, {"input_ids": ids, "loss_weights": w}).item()
    assert got == pytest.approx(expected, rel=1e-9) and got < 0


def test_ga_ignores_padding_content():
    student, _, ids, weights = make_batch(seed=3)
    batch = {"input_ids": ids, "loss_weights": weights}
    before = get_method("ga").loss(student, batch)
    s2, ids2 = student.clone(), ids.clone()
    for b, n in enumerate([6, 4, 2, 1]):
        s2[b, n - 1:] = 1e3  # logits at and after the last real token predict only padding
        ids2[b, n:] = 0
    assert torch.equal(before, get_method("ga").loss(s2, {"input_ids": ids2, "loss_weights": weights}))


@pytest.mark.parametrize("beta", [0.1, 1.0])
def test_npo_matches_the_per_sequence_formula(beta):
    student, teacher, ids, weights = make_batch(seed=1)
    terms = []
    for b in range(ids.shape[0]):
        if weights[b, 1:].sum() == 0:
            continue  # a sequence without targets is no preference pair
        u = hand_sequence_loglik(student, ids, weights, b) - hand_sequence_loglik(teacher, ids, weights, b)
        terms.append(-(2 / beta) * math.log(1 / (1 + math.exp(beta * u))))  # log σ(−βu)
    method = get_method("npo", beta=beta)
    batch = {"input_ids": ids, "loss_weights": weights}
    assert method.normalizer(batch).item() == 3
    assert method.loss(student, batch, teacher).item() == pytest.approx(sum(terms) / len(terms), rel=1e-9)
    # With the student equal to the reference every u_i is 0: the loss is (2/β)·log 2.
    assert method.loss(teacher, batch, teacher).item() == pytest.approx(2 / beta * math.log(2), rel=1e-9)


@pytest.mark.parametrize("beta,margin", [(2.5, 0.0), (1.0, 0.7)])
def test_simnpo_matches_the_length_normalized_formula(beta, margin):
    student, _, ids, weights = make_batch(seed=2)
    w = soft_focus(weights)
    terms = []
    for b in range(ids.shape[0]):
        length = float(w[b, 1:].sum())
        if length == 0:
            continue
        x = -(beta / length) * hand_sequence_loglik(student, ids, w, b) - margin
        terms.append(-(2 / beta) * -math.log1p(math.exp(-x)))  # log σ(x) = −log(1 + e^−x)
    method = get_method("simnpo", beta=beta, margin=margin)
    got = method.loss(student, {"input_ids": ids, "loss_weights": w}).item()
    assert got == pytest.approx(sum(terms) / len(terms), rel=1e-9)


def test_kl_retain_term_matches_hand_kl():
    student, teacher, ids, weights = make_batch(seed=4)
    total = 0.0
    for b in range(ids.shape[0]):
        for t in range(1, ids.shape[1]):
            if weights[b, t] == 0:
                continue
            p = [math.exp(log_prob(teacher[b, t - 1], v)) for v in range(teacher.shape[-1])]
            q = [math.exp(log_prob(student[b, t - 1], v)) for v in range(student.shape[-1])]
            total += float(weights[b, t]) * sum(pv * math.log(pv / qv) for pv, qv in zip(p, q))
    method = get_method("kl")
    batch = {"input_ids": ids, "loss_weights": weights}
    assert method.retain_loss_sum(student, batch, teacher).item() == pytest.approx(total, rel=1e-9)
    assert method.retain_loss_sum(teacher, batch, teacher).abs().item() < 1e-12
    # Every other method's retain term is the plain weighted NLL.
    nll = -sum(float(weights[b, t]) * log_prob(student[b, t - 1], int(ids[b, t]))
               for b in range(4) for t in range(1, 6) if weights[b, t] > 0)
    for name in ("ga", "gd", "npo", "di"):
        assert get_method(name).retain_loss_sum(student, batch).item() == pytest.approx(nll, rel=1e-9)


def test_methods_declare_their_parameters():
    assert method_parameters("di") == ["imagination_strength"]
    assert method_parameters("npo") == ["beta"] and get_method("npo").beta == 0.1
    assert method_parameters("simnpo") == ["beta", "margin"] and get_method("simnpo").beta == 2.5
    assert method_parameters("task-vector") == ["task_vector_alpha"]
    assert method_parameters("dpd") == ["dpd_lambda"] and get_method("dpd").dpd_lambda == 0.75
    assert method_parameters("ga") == method_parameters("gd") == method_parameters("kl") == []
    with pytest.raises(UserError, match="takes no beta"):
        get_method("ga", beta=1.0)


# --- one exact optimizer step with a retain term ------------------------------------------------


def mean_nll(model, tok, texts):
    enc = tok(texts, padding=True, return_tensors="pt")
    ids, mask = enc["input_ids"], enc["attention_mask"]
    logp = model(input_ids=ids, attention_mask=mask).logits[:, :-1].log_softmax(-1)
    nll = -logp.gather(-1, ids[:, 1:, None]).squeeze(-1)
    w = mask[:, 1:].float()
    return (nll * w).sum() / w.sum()


def hand_sgd(model_dir, loss_of, lr):
    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    loss_of(model, tok).backward()
    with torch.no_grad():
        for p in model.parameters():
            if p.grad is not None:
                p -= lr * p.grad
    return model


def assert_same_weights(got, expected, original, atol=1e-6):
    for (name, a), b in zip(got.named_parameters(), expected.parameters()):
        assert torch.allclose(a, b, atol=atol), name
    moved = max((a - c).abs().max().item() for a, c in zip(got.parameters(), original.parameters()))
    assert moved > 1e-4  # the step did change the weights


SGD_STEP = ["--no-lora", "--optimizer", "sgd", "--max-steps", "1", "--batch-size", "4",
            "--max-grad-norm", "0", "--el-n", "3", "--el-stride", "4"]


def test_one_gd_step_is_ascent_on_forget_plus_weighted_descent_on_retain(tiny_models, forget_file, retain_file, tmp_path):
    model_dir = tiny_models["gemma3"]
    out = tmp_path / "gd"
    assert exit_code(["unlearn", "--model", str(model_dir), "--forget", str(forget_file), "--method", "gd",
                "--retain", str(retain_file), "--retain-weight", "0.5", "--lr", "0.01", *SGD_STEP,
                "--out", str(out)]) == 0
    # One batch holds all four retain texts (in some order): the step is order-free.
    expected = hand_sgd(model_dir, lambda m, t: -mean_nll(m, t, TEXTS) + 0.5 * mean_nll(m, t, RETAIN), 0.01)
    got = AutoModelForCausalLM.from_pretrained(out)
    assert_same_weights(got, expected, AutoModelForCausalLM.from_pretrained(model_dir))
    metrics = json.loads((out / "metrics.json").read_text())
    step = metrics["steps"][0]
    assert step["retain_loss"] > 0 and step["loss"] < step["retain_loss"]  # −NLL_f + 0.5·NLL_r
    config = json.loads((out / "unlearn_config.json").read_text())
    assert config["retain"] == str(retain_file) and config["retain_weight"] == 0.5


def test_retain_term_with_accumulation_equals_one_big_batch(tiny_models, forget_file, tmp_path):
    retain = write_jsonl(tmp_path / "r3.jsonl", RETAIN[:3])  # fewer than a batch: the stream cycles
    base = dict(model=str(tiny_models["llama"]), forget=str(forget_file), method="gd", retain=str(retain),
                retain_weight=2.0, lora=False, optimizer="sgd", lr=0.05, max_steps=1, max_grad_norm=0.0,
                el_n=[2], el_stride=4)
    results = []
    for batch_size, accum in ((4, 1), (2, 2), (1, 4)):
        out = tmp_path / f"acc{batch_size}"
        unlearn(UnlearnConfig(**base, batch_size=batch_size, grad_accum=accum, out=str(out)))
        results.append(load_file(out / "model.safetensors"))
    for other in results[1:]:
        for key in results[0]:
            assert torch.allclose(results[0][key], other[key], atol=1e-6), key


def test_retain_stream_splits_one_big_batch_across_processes():
    class Item:
        def __init__(self, i):
            self.input_ids = [1, 10 + i]

    stream = RetainStream([Item(i) for i in range(5)], batch_size=2, seed=3, pad_id=0)
    whole = RetainStream([Item(i) for i in range(5)], batch_size=4, seed=3, pad_id=0)
    for k in range(4):  # crosses passes over the set: every pass is a new permutation
        parts = [stream.batch(k, rank, 2)["input_ids"] for rank in (0, 1)]
        assert torch.equal(torch.cat(parts), whole.batch(k)["input_ids"])
    first_pass = torch.cat([whole.batch(0)["input_ids"][:, 1], whole.batch(1)["input_ids"][:1, 1]])
    assert sorted(first_pass.tolist()) == [10, 11, 12, 13, 14]  # each item once per pass


def test_kl_first_step_sees_the_original_model_as_teacher(tiny_models, forget_file, retain_file, tmp_path):
    for lora in (True, False):
        metrics = unlearn(UnlearnConfig(
            model=str(tiny_models["gpt_neo"]), forget=str(forget_file), method="kl", retain=str(retain_file),
            lora=lora, lr=0.01, max_steps=2, batch_size=2, el_n=[2], el_stride=4,
        ))
        first, second = metrics["steps"]
        assert abs(first["retain_loss"]) < 1e-6, lora  # KL(original ‖ student) before any update
        assert second["retain_loss"] > 0, lora


class InterruptAt(Events):
    def __init__(self, step):
        self.at = step

    def step(self, record, total_steps):
        if record.step == self.at:
            raise KeyboardInterrupt


def test_retain_runs_resume_exactly_and_check_retain_options(tiny_models, forget_file, retain_file, tmp_path):
    retain = write_jsonl(tmp_path / "r3.jsonl", RETAIN[:3])
    common = dict(model=str(tiny_models["llama"]), forget=str(forget_file), method="npo", retain=str(retain),
                  lr=0.01, batch_size=2, epochs=2, el_n=[2], el_stride=4)
    unlearn(UnlearnConfig(**common, out=str(tmp_path / "whole")))
    with pytest.raises(Interrupted):
        unlearn(UnlearnConfig(**common, out=str(tmp_path / "run")), InterruptAt(step=3))
    with pytest.raises(UserError, match=r"--resume: --beta is 0\.2 here but 0\.1"):
        unlearn(UnlearnConfig(**common, beta=0.2, out=str(tmp_path / "run"), resume=True))
    with pytest.raises(UserError, match=r"--resume: --retain-weight is 3\.0 here but 1\.0"):
        unlearn(UnlearnConfig(**{**common, "retain_weight": 3.0}, out=str(tmp_path / "run"), resume=True))
    with pytest.raises(UserError, match="gives other training data"):
        unlearn(UnlearnConfig(**{**common, "retain": str(retain_file)}, out=str(tmp_path / "run"), resume=True))
    metrics = unlearn(UnlearnConfig(**common, out=str(tmp_path / "run"), resume=True))
    assert metrics["resumed_from_step"] == 3
    a, b = load_file(tmp_path / "whole" / "model.safetensors"), load_file(tmp_path / "run" / "model.safetensors")
    for name in a:
        assert torch.equal(a[name], b[name]), name


# --- task arithmetic ------------------------------------------------------------------------------


def test_task_vector_weights(tiny_models, forget_file, tmp_path):
    model_dir = tiny_models["llama"]
    original = AutoModelForCausalLM.from_pretrained(model_dir)
    base = ["unlearn", "--model", str(model_dir), "--forget", str(forget_file), "--method", "task-vector",
            "--lr", "0.05", *SGD_STEP]
    assert exit_code([*base, "--alpha", "0", "--out", str(tmp_path / "a0")]) == 0
    for a, b in zip(AutoModelForCausalLM.from_pretrained(tmp_path / "a0").parameters(), original.parameters()):
        assert torch.equal(a, b)
    assert exit_code([*base, "--out", str(tmp_path / "a1")]) == 0  # α = 1 by default
    fine_tuned = hand_sgd(model_dir, lambda m, t: mean_nll(m, t, TEXTS), 0.05)  # θ_ft: one NLL descent step
    with torch.no_grad():
        for p, p0 in zip(fine_tuned.parameters(), original.parameters()):
            p.copy_(2 * p0 - p)  # 2θ − θ_ft
    assert_same_weights(AutoModelForCausalLM.from_pretrained(tmp_path / "a1"), fine_tuned, original)
    assert json.loads((tmp_path / "a1" / "unlearn_config.json").read_text())["task_vector_alpha"] == 1.0


def test_task_vector_memorization_is_measured_on_the_final_weights(tiny_models, forget_file):
    common = dict(model=str(tiny_models["llama"]), forget=str(forget_file), method="task-vector", lora=False,
                  lr=0.01, epochs=4, batch_size=4, el_n=[3], el_stride=4)
    # The same training in both runs; α = −1 evaluates θ_ft itself, which learns the forget set.
    learned = unlearn(UnlearnConfig(**common, task_vector_alpha=-1.0))
    negated = unlearn(UnlearnConfig(**common, task_vector_alpha=1.0))
    assert learned["epochs"][-1]["ma"] > learned["before"]["mean"]["ma"] + 0.1
    assert [e["ma"] for e in negated["epochs"]] != [e["ma"] for e in learned["epochs"]]
    assert negated["epochs"][-1]["ma"] == negated["after"]["mean"]["ma"] <= negated["before"]["mean"]["ma"]
    # The stop rule sees the final weights too: with them below any threshold it stops at once.
    stopped = unlearn(UnlearnConfig(**common, task_vector_alpha=1.0, stop_ma=0.0))
    assert stopped["stopped_because"].startswith("memorization below") and len(stopped["epochs"]) == 1


def test_task_vector_with_lora_negates_the_merged_delta(tiny_models, forget_file, tmp_path):
    common = dict(model=str(tiny_models["gemma3"]), forget=str(forget_file), method="task-vector", lora=True,
                  lr=0.05, max_steps=1, batch_size=4, el_n=[2], el_stride=4)
    merged = {}
    for alpha in (0.0, -1.0, 1.0):  # α = −1 gives θ_ft itself
        out = tmp_path / f"lora{alpha}"
        unlearn(UnlearnConfig(**common, task_vector_alpha=alpha, out=str(out)))
        merged[alpha] = load_file(out / "model.safetensors")
    original = AutoModelForCausalLM.from_pretrained(tiny_models["gemma3"]).state_dict()
    changed = 0
    for name, w0 in merged[0.0].items():
        assert torch.equal(w0, original[name]), name
        assert torch.allclose(merged[1.0][name], 2 * w0 - merged[-1.0][name], atol=1e-6), name
        changed += not torch.equal(merged[1.0][name], w0)
    assert changed > 0


# --- private decoding ---------------------------------------------------------------------------


def test_dpd_logits_are_the_probability_mixture():
    logits = torch.randn(2, 3, 11, dtype=torch.float64) * 4
    for lam in (0.0, 0.3, 0.75, 1.0):
        mixed = lam * logits.softmax(-1) + (1 - lam) / 11
        assert torch.allclose(dpd_logits(logits, lam), mixed.log(), atol=1e-12), lam
    assert torch.allclose(dpd_logits(logits, 1.0), logits.log_softmax(-1))


def test_dpd_model_at_lambda_one_is_the_original(tiny_models):
    model_dir = tiny_models["gemma3"]
    original = load_model(str(model_dir)).model
    wrapped = apply_dpd(load_model(str(model_dir)).model, 1.0)
    ids = torch.tensor([[1, 5, 9, 22, 40, 41, 7]])
    with torch.no_grad():
        assert torch.allclose(wrapped(input_ids=ids).logits, original(input_ids=ids).logits.log_softmax(-1), atol=1e-6)
    prefixes = [[1, 5, 9], [1, 40, 41, 7]]
    greedy = [decode(m, prefixes, [12, 12], choose_argmax, pad_token_id=0) for m in (original, wrapped)]
    assert greedy[0] == greedy[1]


def test_unlearn_dpd_writes_a_model_that_loads_wrapped(tiny_models, forget_file, tmp_path, capsys):
    model_dir = tiny_models["llama"]
    out = tmp_path / "dpd"
    assert exit_code(["unlearn", "--model", str(model_dir), "--forget", str(forget_file), "--method", "dpd",
                "--dpd-lambda", "0.5", "--el-n", "2", "--el-stride", "4", "--out", str(out)]) == 0
    assert json.loads((out / DPD_FILE).read_text())["lambda"] == 0.5
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["steps"] == [] and metrics["stopped_because"].startswith("inference-time")
    config = json.loads((out / "unlearn_config.json").read_text())
    assert config["dpd_lambda"] == 0.5 and config["lora"] is False
    # The saved weights are the original ones; loading the folder mixes the distribution again.
    saved, plain = load_file(out / "model.safetensors"), AutoModelForCausalLM.from_pretrained(model_dir)
    assert all(torch.equal(saved[k], v) for k, v in plain.state_dict().items() if k in saved)
    loaded = load_model(str(out)).model
    ids = torch.tensor([[1, 5, 9, 22, 40]])
    with torch.no_grad():
        expected = (0.5 * plain(input_ids=ids).logits.softmax(-1) + 0.5 / loaded.config.vocab_size).log()
        assert torch.allclose(loaded(input_ids=ids).logits, expected, atol=1e-5)
    # Mixing with uniform keeps every argmax: greedy memorization is unchanged.
    assert metrics["after"]["mean"]["ma"] == metrics["before"]["mean"]["ma"]


# --- the options each method takes, and divergence ----------------------------------------------


@pytest.mark.parametrize("extra,message", [
    (["--method", "ga", "--strength", "3"], "--strength does not apply to --method ga"),
    (["--method", "di", "--beta", "1"], "--beta does not apply to --method di (it takes --strength)"),
    (["--method", "npo", "--alpha", "1"], "--alpha does not apply to --method npo"),
    (["--method", "gd"], "--method gd needs --retain FILE"),
    (["--method", "kl"], "--method kl needs --retain FILE"),
    (["--method", "npo", "--beta", "0"], "--beta must be positive"),
    (["--method", "dpd", "--dpd-lambda", "1.5"], "--dpd-lambda must be in [0, 1]"),
    (["--method", "dpd", "--retain", "RETAIN"], "--retain does not apply to --method dpd"),
    (["--method", "ga", "--retain-weight", "-1"], "--retain-weight must be >= 0"),
    (["--method", "nope"], "unknown method 'nope'"),
])
def test_options_that_do_not_apply_are_refused(tiny_models, forget_file, retain_file, capsys, extra, message):
    extra = [str(retain_file) if a == "RETAIN" else a for a in extra]
    assert exit_code(["unlearn", "--model", str(tiny_models["llama"]), "--forget", str(forget_file), *extra]) == 2
    stderr = capsys.readouterr().err.strip()
    assert message in stderr and "Traceback" not in stderr and len(stderr.splitlines()) == 1


def test_gradient_ascent_with_a_huge_lr_stops_as_diverged(tiny_models, forget_file, tmp_path, capsys):
    code = exit_code(["unlearn", "--model", str(tiny_models["gpt_neo"]), "--forget", str(forget_file), "--method", "ga",
                "--no-lora", "--optimizer", "sgd", "--lr", "1e30", "--max-grad-norm", "0", "--batch-size", "1",
                "--epochs", "3", "--el-n", "2", "--out", str(tmp_path / "ga")])
    stderr = capsys.readouterr().err
    assert code == 2 and "training diverged at step" in stderr and "Traceback" not in stderr
    assert not (tmp_path / "ga").exists()


@pytest.mark.multiprocess
@pytest.mark.timeout(600)
def test_retain_term_under_two_processes_equals_one(tiny_models, forget_file, tmp_path):
    torchrun = os.path.join(os.path.dirname(sys.executable), "torchrun")
    if not os.path.exists(torchrun) and shutil.which("torchrun") is None:
        pytest.skip("torchrun not found")
    retain = write_jsonl(tmp_path / "r3.jsonl", RETAIN[:3])
    common = ["unlearn", "--model", str(tiny_models["llama"]), "--forget", str(forget_file), "--method", "gd",
              "--retain", str(retain), "--no-lora", "--optimizer", "sgd", "--lr", "0.05", "--max-steps", "1",
              "--max-grad-norm", "0", "--el-n", "2", "--el-stride", "8", "--cpu"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    runs = {
        "two": [torchrun, "--nproc_per_node", "2", "--master_port", "29547", "-m", "unmemorize.cli",
                *common, "--batch-size", "2", "--out", str(tmp_path / "two")],
        "one": [sys.executable, "-m", "unmemorize.cli", *common, "--batch-size", "4", "--out", str(tmp_path / "one")],
    }
    for name, command in runs.items():
        done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=540)
        assert done.returncode == 0, done.stderr[-3000:]
    one, two = load_file(tmp_path / "one" / "model.safetensors"), load_file(tmp_path / "two" / "model.safetensors")
    for key in one:
        assert torch.allclose(one[key], two[key], atol=1e-5), key
