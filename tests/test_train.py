"""The training loop: exact steps, LoRA teacher, accumulation, outputs, and the CLI end to end."""

import json

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from unmemorize.cli import main
from unmemorize.errors import UserError
from unmemorize.config import UnlearnConfig
from unmemorize.recipes.unlearn import unlearn
from unmemorize.training.components import attention_projections

from conftest import naive_ma

TEXTS = [
    "Alice Johnson lives at 42 Baker Street in London.",
    "Contact mary.jones@example.com for the account.",
    "In 1999 the company Acme Corp opened an office.",
    "The quick brown fox jumps over the lazy dog.",
]


@pytest.fixture
def forget_file(tmp_path):
    path = tmp_path / "forget.jsonl"
    path.write_text("\n".join(json.dumps({"text": t}) for t in TEXTS))
    return path


def run_cli(args):
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    return exit_info.value.code


def cli_ok(args):
    try:
        main(args)
    except SystemExit as error:  # pragma: no cover - shows the message on failure
        raise AssertionError(f"exit {error.code}") from None


def hand_sgd_step(model_dir, texts, gamma, lr):
    """θ − lr·∇L with L = Σ_t w_t ℓ_t / Σ_t w_t written out with log_softmax and softmax."""
    tok = AutoTokenizer.from_pretrained(model_dir)
    student = AutoModelForCausalLM.from_pretrained(model_dir)
    teacher = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    enc = tok(texts, padding=True, return_tensors="pt")
    ids, mask = enc["input_ids"], enc["attention_mask"]
    with torch.no_grad():
        z = teacher(input_ids=ids, attention_mask=mask).logits[:, :-1]
    z = z - gamma * torch.nn.functional.one_hot(ids[:, 1:], z.shape[-1])
    target = z.softmax(-1)
    logq = student(input_ids=ids, attention_mask=mask).logits[:, :-1].log_softmax(-1)
    token_loss = -(target * logq).sum(-1)
    w = mask[:, 1:].float()
    loss = (token_loss * w).sum() / w.sum()
    loss.backward()
    with torch.no_grad():
        for p in student.parameters():
            if p.grad is not None:
                p -= lr * p.grad
    return student


def test_one_sgd_step_is_exactly_the_defined_loss(tiny_models, forget_file, tmp_path):
    model_dir = tiny_models["gemma3"]
    out = tmp_path / "out"
    cli_ok([
        "unlearn", "--model", str(model_dir), "--forget", str(forget_file), "--method", "di",
        "--strength", "3", "--focus", "all", "--no-lora", "--optimizer", "sgd", "--lr", "0.01",
        "--max-steps", "1", "--batch-size", "4", "--warmup-steps", "0", "--weight-decay", "0",
        "--max-grad-norm", "0", "--el-n", "3", "--out", str(out),
    ])
    got = AutoModelForCausalLM.from_pretrained(out)
    expected = hand_sgd_step(model_dir, TEXTS, gamma=3.0, lr=0.01)
    original = AutoModelForCausalLM.from_pretrained(model_dir)
    moved = 0.0
    for (name, a), b, c in zip(got.named_parameters(), expected.parameters(), original.parameters()):
        assert torch.allclose(a, b, atol=1e-6), name
        moved = max(moved, (a - c).abs().max().item())
    assert moved > 1e-4  # the step did change the weights
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["stopped_because"] == "max steps" and len(metrics["steps"]) == 1
    config = json.loads((out / "unlearn_config.json").read_text())
    assert config["imagination_strength"] == 3.0 and config["lora"] is False


def test_gradient_accumulation_gives_the_same_step(tiny_models, forget_file):
    base = dict(model=str(tiny_models["llama"]), forget=str(forget_file), lora=False,
                optimizer="sgd", lr=0.05, max_steps=1, max_grad_norm=0.0, el_n=[2], el_stride=4)
    results = []
    for batch_size, accum in ((4, 1), (2, 2), (1, 4)):
        out = f"{forget_file.parent}/acc{batch_size}"
        unlearn(UnlearnConfig(**base, batch_size=batch_size, grad_accum=accum, out=out))
        results.append(AutoModelForCausalLM.from_pretrained(out).state_dict())
    for other in results[1:]:
        for key in results[0]:
            assert torch.allclose(results[0][key], other[key], atol=1e-6), key


def test_lora_teacher_is_the_original_model(tiny_models):
    from peft import LoraConfig, get_peft_model

    for arch, model_dir in tiny_models.items():
        original = AutoModelForCausalLM.from_pretrained(model_dir).eval()
        model = AutoModelForCausalLM.from_pretrained(model_dir)
        peft_model = get_peft_model(model, LoraConfig(r=4, target_modules=attention_projections(model))).eval()
        with torch.no_grad():
            for name, p in peft_model.named_parameters():
                if "lora_B" in name:
                    p.normal_()  # adapters that really change the output
            ids = torch.tensor([[1, 5, 9, 22, 40, 41, 7]])
            adapted = peft_model(input_ids=ids).logits
            with peft_model.disable_adapter():
                teacher = peft_model(input_ids=ids).logits
            reference = original(input_ids=ids).logits
        assert torch.allclose(teacher, reference, atol=1e-6), arch
        assert not torch.allclose(adapted, reference, atol=1e-3), arch


def test_attention_projections_per_architecture(tiny_models):
    names = {arch: attention_projections(AutoModelForCausalLM.from_pretrained(d)) for arch, d in tiny_models.items()}
    assert names["gpt_neo"] == ["k_proj", "out_proj", "q_proj", "v_proj"]
    assert names["llama"] == names["gemma3"] == ["k_proj", "o_proj", "q_proj", "v_proj"]


def test_cli_end_to_end_lora_then_audit(tiny_models, forget_file, tmp_path, capsys):
    out = tmp_path / "run"
    cli_ok([
        "unlearn", "--model", str(tiny_models["gpt_neo"]), "--forget", str(forget_file),
        "--strength", "10", "--lora", "--lr", "0.01", "--epochs", "2", "--batch-size", "2",
        "--el-n", "2", "--el-n", "4", "--save-adapter", "--out", str(out),
    ])
    for name in ("model.safetensors", "config.json", "tokenizer.json", "unlearn_config.json",
                 "metrics.json", "adapter/adapter_config.json"):
        assert (out / name).exists(), name
    metrics = json.loads((out / "metrics.json").read_text())
    assert [e["epoch"] for e in metrics["epochs"]] == [1, 2]
    assert set(metrics["before"]["mean"]) == {"ma", "el_2", "el_4"}
    assert len(metrics["after"]["samples"]) == len(TEXTS)
    # The merged model is a plain model: it loads without peft and differs from the original.
    merged = AutoModelForCausalLM.from_pretrained(out)
    original = AutoModelForCausalLM.from_pretrained(tiny_models["gpt_neo"])
    assert any(not torch.equal(a, b) for a, b in zip(merged.parameters(), original.parameters()))
    report = tmp_path / "audit.json"
    cli_ok(["audit", "--model", str(out), "--data", str(forget_file), "--el-n", "2", "--json", str(report)])
    audited = json.loads(report.read_text())
    assert audited["mean"]["ma"] == pytest.approx(metrics["after"]["mean"]["ma"], abs=1e-6)
    assert len(audited["samples"]) == len(TEXTS) and "el_2" in audited["samples"][0]
    shown = capsys.readouterr().out
    assert "mean" in shown and TEXTS[0] not in shown  # forget text is not printed


def test_stop_rule_ends_training_early(tiny_models, forget_file, tmp_path):
    metrics = unlearn(UnlearnConfig(
        model=str(tiny_models["llama"]), forget=str(forget_file), epochs=5, batch_size=4,
        el_n=[2], stop_ma=1.0, stop_el=1.0, out=str(tmp_path / "o"),
    ))
    assert metrics["stopped_because"].startswith("memorization below")
    assert len(metrics["epochs"]) == 1


def test_hard_focus_reports_sequences_without_focus(tiny_models, forget_file, tmp_path):
    messages = []

    class Collect:
        def __getattr__(self, name):
            return lambda *a, **k: None

        def message(self, text):
            messages.append(text)

    metrics = unlearn(UnlearnConfig(
        model=str(tiny_models["llama"]), forget=str(forget_file), focus=r"regex:\d+", max_steps=1,
        el_n=[2],
    ), Collect())
    assert metrics["sequences_without_focus"] == ["1", "3"]
    assert any("2 of 4 sequences have no token in focus" in m for m in messages)
    with pytest.raises(UserError, match="no sequence has a token in focus"):
        unlearn(UnlearnConfig(model=str(tiny_models["llama"]), forget=str(forget_file), focus="regex:ZZZ"))


def test_config_file_with_flag_override(tiny_models, forget_file, tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text(f"model: {tiny_models['llama']}\nforget: {forget_file}\nstrength: 7\nmax-steps: 1\nlr: 0.5\nel-n: [2]\n")
    out = tmp_path / "o"
    cli_ok(["unlearn", "--config", str(config), "--lr", "0.001", "--out", str(out)])
    resolved = json.loads((out / "unlearn_config.json").read_text())
    assert resolved["imagination_strength"] == 7.0 and resolved["lr"] == 0.001 and resolved["el_n"] == [2]
    config.write_text("strenght: 3\n")
    assert run_cli(["unlearn", "--config", str(config)]) == 2


@pytest.mark.parametrize("extra,message", [
    (["--method", "nope"], "unknown method"),
    (["--focus", "regex:("], "invalid regex"),
    (["--strength", "-1"], "strength"),
    (["--lr", "0"], "--lr must be positive"),
    (["--batch-size", "0"], "--batch-size must be positive"),
    (["--save-adapter", "--no-lora"], "--save-adapter needs --lora"),
])
def test_cli_user_errors_exit_2_with_one_line(tiny_models, forget_file, capsys, extra, message):
    code = run_cli(["unlearn", "--model", str(tiny_models["llama"]), "--forget", str(forget_file), *extra])
    assert code == 2
    stderr = capsys.readouterr().err.strip()
    assert message in stderr and "Traceback" not in stderr and len(stderr.splitlines()) == 1


def test_cli_missing_and_empty_files(tiny_models, tmp_path, capsys):
    assert run_cli(["audit", "--model", str(tiny_models["llama"]), "--data", str(tmp_path / "nope.csv")]) == 2
    (tmp_path / "empty.txt").write_text("")
    assert run_cli(["audit", "--model", str(tiny_models["llama"]), "--data", str(tmp_path / "empty.txt")]) == 2
    stderr = capsys.readouterr().err
    assert "not found" in stderr and "no examples" in stderr


def test_output_directory_safety(tiny_models, forget_file, tmp_path):
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "keep.txt").write_text("x")
    with pytest.raises(UserError, match="not empty"):
        unlearn(UnlearnConfig(model=str(tiny_models["llama"]), forget=str(forget_file), out=str(busy)))
    with pytest.raises(UserError, match="input model"):
        unlearn(UnlearnConfig(model=str(tiny_models["llama"]), forget=str(forget_file),
                              out=str(tiny_models["llama"]), overwrite=True))
    assert (busy / "keep.txt").read_text() == "x"


def test_auto_thresholds_come_from_unseen_text(tiny_models, forget_file, tmp_path):
    reference = tmp_path / "unseen.txt"
    reference.write_text("Some other sentence about weather.\nA second unseen line of text here.\n")
    metrics = unlearn(UnlearnConfig(
        model=str(tiny_models["llama"]), forget=str(forget_file), max_steps=1, el_n=[2],
        el_stride=3, stop_ma="auto", stop_el="auto", reference=str(reference),
    ))
    levels = metrics["reference_levels"]
    unseen = ["Some other sentence about weather.", "A second unseen line of text here."]
    assert levels["sequences"] == 2 and levels["ma"] == pytest.approx(naive_ma(tiny_models["llama"], unseen))
    assert metrics["thresholds"] == {"ma": levels["ma"], "el": levels["el_2"]}
    with pytest.raises(UserError, match="number or 'auto'"):
        unlearn(UnlearnConfig(model=str(tiny_models["llama"]), forget=str(forget_file), stop_ma="often"))
