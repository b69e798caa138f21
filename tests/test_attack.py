"""Robustness attacks: recovery arithmetic, quantization round-trip bounds computed by hand, a
relearning step equal to the finetune recipe's step, the logit lens's last layer equal to the
model's own MA, prompt variants built as described, the attack command end to end and its bad
input."""

import json
import math

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from unmemorize.attacks.prefix import variants
from unmemorize.attacks.quantize import gguf_round_trip, quantized_copy
from unmemorize.attacks.relearn import RelearnSetting, relearn_curve
from unmemorize.config import UnlearnConfig
from unmemorize.data import Example, tokenize_examples
from unmemorize.errors import UserError
from unmemorize.metrics.robustness import logit_lens_ma, recovery
from unmemorize.recipes.unlearn import unlearn
from unmemorize.suites.robustness import recovery_rows, strongest

from conftest import exit_code

TEXTS = [
    "Alice Johnson lives at 42 Baker Street in London and her phone is 555-0199.",
    "Contact mary.jones@example.com for the account number 1234-5678-9012.",
    "In 1999 the company Acme Corp opened an office in New York City.",
    "The quick brown fox jumps over the lazy dog while Bob Smith watches from Paris.",
]


@pytest.fixture
def forget_file(tmp_path):
    path = tmp_path / "forget.jsonl"
    path.write_text("\n".join(json.dumps({"text": t}) for t in TEXTS))
    return path


# --- recovery ----------------------------------------------------------------------------------


def test_recovery_is_the_share_of_the_forgetting_undone():
    # MA 0.55 before, 0.38 after unlearning, 0.50 after the attack: 0.12 of 0.17 came back.
    assert recovery(0.55, 0.38, 0.50) == pytest.approx(0.12 / 0.17)
    assert recovery(0.55, 0.38, 0.38) == 0.0
    assert recovery(0.55, 0.38, 0.55) == pytest.approx(1.0)
    assert recovery(0.55, 0.38, 0.30) == pytest.approx(-0.08 / 0.17)
    # The original under the same attack lost 0.02: that much of the attacked value is the
    # attack's own noise, so 0.50 counts as 0.52 -> 0.14 of 0.17.
    assert recovery(0.55, 0.38, 0.50, attack_on_original=0.53) == pytest.approx(0.14 / 0.17)
    # Nothing was unlearned (extraction 0 before and after): no ratio of two zeros.
    assert math.isnan(recovery(0.0, 0.0, 0.25))
    assert math.isnan(recovery(0.5, 0.5 + 1e-9, 0.6))
    assert math.isnan(recovery(0.55, math.nan, 0.5))


def _scores(ma, extractable):
    return {"ma": ma, "el": math.nan, "extractable": extractable,
            "per_sample": {"ma": [ma, ma], "el": [], "exact": [None, extractable > 0]}}


def test_recovery_rows_use_the_original_under_the_same_attack():
    base = {"standard": _scores(0.6, 0.5), "attacks": {"quantize": {"gguf-q4_0": {"scores": _scores(0.58, 0.5)}}}}
    own = {"standard": _scores(0.4, 0.0), "attacks": {"quantize": {"gguf-q4_0": {"scores": _scores(0.5, 0.5)}}}}
    [row] = recovery_rows(base, own)
    assert row["recovery"]["ma"] == pytest.approx((0.5 - 0.4) / (0.6 - 0.4))
    assert row["net_recovery"]["ma"] == pytest.approx((0.5 + 0.02 - 0.4) / (0.6 - 0.4))
    assert row["recovery"]["extractable"] == pytest.approx(1.0)
    assert strongest([row])["ma"] == {"quantize": pytest.approx(0.6), "all": pytest.approx(0.6)}


def test_logit_lens_rows_read_a_layer_instead_of_the_output():
    base = {"standard": _scores(0.6, 0.0), "attacks": {"logit-lens": {"layers": [0.001, 0.3, 0.64]}}}
    own = {"standard": _scores(0.4, 0.0), "attacks": {"logit-lens": {"layers": [0.001, 0.38, 0.34]}}}
    first, second = recovery_rows(base, own)
    # Layer 2 of the unlearned model predicts 0.38 where its output gives 0.34: 0.04 of the
    # output's 0.30 gap is still readable inside. Layer 1 knows nothing in either model.
    assert second["recovery"]["ma"] == pytest.approx(0.04 / 0.30)
    assert first["recovery"]["ma"] == pytest.approx((0.001 - 0.34) / 0.30)
    assert first["net_recovery"] is None and second["values"]["ma"]["original_attacked"] == 0.3
    assert strongest([first, second])["ma"]["logit-lens"] == pytest.approx(0.04 / 0.30)


# --- quantization -------------------------------------------------------------------------------


def test_gguf_q8_0_round_trip_within_half_a_step_per_block():
    generator = torch.Generator().manual_seed(0)
    weight = torch.randn(8, 64, generator=generator) * torch.logspace(-3, 1, 8)[:, None]
    restored = gguf_round_trip(weight, "gguf-q8_0").double()
    blocks = weight.double().reshape(-1, 32)
    # Q8_0: per block of 32, d = max|w| / 127 stored as float16, w ≈ round(w / d) · d.
    d = blocks.abs().amax(dim=1) / 127
    d16 = d.to(torch.float16).double()
    bound = d / 2 + 127 * (d - d16).abs() + 1e-12
    error = (restored.reshape(-1, 32) - blocks).abs()
    assert bool((error <= bound[:, None]).all())
    assert float(error.max()) > 0  # it is quantized, not copied


def test_gguf_q4_0_round_trip_within_one_step_per_block():
    weight = torch.randn(4, 96, generator=torch.Generator().manual_seed(1))
    restored = gguf_round_trip(weight, "gguf-q4_0").double()
    blocks = weight.double().reshape(-1, 32)
    # Q4_0: d = (the value of largest magnitude) / -8, 16 levels (q - 8) · d; the top level is
    # 7·d, so values near +8·d lose up to one step.
    d = (blocks.gather(1, blocks.abs().argmax(dim=1, keepdim=True)).squeeze(1) / -8).abs()
    d16 = d.to(torch.float16).double()
    bound = d + 8 * (d - d16).abs() + 1e-12
    error = (restored.reshape(-1, 32) - blocks).abs()
    assert bool((error <= bound[:, None]).all())


def test_gguf_leaves_rows_that_are_not_whole_blocks_in_float():
    assert gguf_round_trip(torch.randn(4, 40), "gguf-q8_0") is None
    model = torch.nn.Sequential(torch.nn.Linear(40, 32), torch.nn.Linear(32, 8))
    quantized, counts = quantized_copy(model, "gguf-q8_0")
    assert counts == {"quantized": 1, "kept_float": 1}
    assert torch.equal(quantized[0].weight, model[0].weight)
    assert not torch.equal(quantized[1].weight, model[1].weight)


def test_int8_weight_only_round_trip_within_half_a_step_per_row():
    pytest.importorskip("optimum.quanto")

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.body = torch.nn.Linear(64, 32)
            self.head = torch.nn.Linear(32, 16)

        def get_output_embeddings(self):
            return self.head

    torch.manual_seed(0)
    net = Net()
    quantized, counts = quantized_copy(net, "int8")
    assert counts == {"quantized": 1, "kept_float": 1}  # the output layer stays float
    weight = net.body.weight.double()
    restored = quantized.body.weight.double()
    # Symmetric per output row: scale = max|w_row| / 127, error at most half a step.
    bound = weight.abs().amax(dim=1, keepdim=True) / 127 / 2 * (1 + 1e-3)
    assert bool(((restored - weight).abs() <= bound).all())
    assert torch.equal(quantized.head.weight, net.head.weight)


def test_quanto_missing_is_a_user_error(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "optimum.quanto", None)
    with pytest.raises(UserError, match="optimum-quanto"):
        quantized_copy(torch.nn.Linear(32, 32), "int4")


# --- relearning ---------------------------------------------------------------------------------


def test_relearning_steps_are_the_finetune_recipes_steps(learnable_model, forget_file, tmp_path):
    # Full fine-tuning: no random initialization, so the recipe's weights after one step must be
    # the curve's bit for bit (LoRA's adapters start from the global RNG, which loading a model
    # in the recipe advances differently).
    setting = RelearnSetting(lora=False, lr=5e-3, batch_size=2, steps=(1, 2), seed=7)
    tokenizer = AutoTokenizer.from_pretrained(learnable_model)
    model = AutoModelForCausalLM.from_pretrained(learnable_model)
    items = tokenize_examples([Example(text=t, id=str(i)) for i, t in enumerate(TEXTS)], tokenizer, 200)
    kept = {}

    def measure(network):
        kept[len(kept) + 1] = {k: v.detach().clone() for k, v in network.state_dict().items()}
        return {"ma": 0.5}

    curve = relearn_curve(model, items, setting, tokenizer.pad_token_id, measure)
    assert [point["step"] for point in curve] == [1, 2] and all(point["ma"] == 0.5 for point in curve)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    config = setting.unlearn_config(model)
    out = tmp_path / "finetuned"
    unlearn(UnlearnConfig(**{**{f: getattr(config, f) for f in (
        "method", "lora", "lr", "batch_size", "epochs", "seed", "warmup_steps", "lora_targets")},
        "max_steps": 1, "model": str(learnable_model), "forget": str(forget_file), "out": str(out),
        "measure_el": False, "report_samples": 0}))
    recipe = AutoModelForCausalLM.from_pretrained(out).state_dict()
    changed = [k for k in recipe if not torch.equal(recipe[k], before[k])]
    assert changed, "one finetune step changed nothing"
    for key in recipe:
        torch.testing.assert_close(kept[1][key], recipe[key], rtol=0, atol=1e-6)
    # The caller's model is never trained.
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


# --- logit lens ---------------------------------------------------------------------------------


@pytest.mark.parametrize("arch", ["llama", "gemma3"])
def test_logit_lens_last_layer_is_the_models_own_ma(tiny_models, arch):
    tokenizer = AutoTokenizer.from_pretrained(tiny_models[arch])
    model = AutoModelForCausalLM.from_pretrained(tiny_models[arch]).eval()
    sequences = [tokenizer(t)["input_ids"] for t in TEXTS]
    layers = logit_lens_ma(model, sequences, pad_token_id=tokenizer.pad_token_id, batch_size=3)
    assert len(layers) == model.config.num_hidden_layers
    naive = []
    for ids in sequences:  # each sequence alone, the whole model's logits
        with torch.no_grad():
            predicted = model(input_ids=torch.tensor([ids])).logits[0].argmax(-1).tolist()
        naive.append(sum(predicted[t - 1] == ids[t] for t in range(1, len(ids))) / (len(ids) - 1))
    assert layers[-1] == pytest.approx(sum(naive) / len(naive), abs=1e-12)
    # The first layer read through the final norm and the head, from transformers' own hidden
    # states (hidden_states[1]: the first layer's output), each sequence alone.
    first = []
    for ids in sequences:
        with torch.no_grad():
            states = model(input_ids=torch.tensor([ids]), output_hidden_states=True).hidden_states
            logits = model.lm_head(model.model.norm(states[1]))[0]
            cap = getattr(model.config, "final_logit_softcapping", None)
            logits = torch.tanh(logits / cap) * cap if cap else logits
        predicted = logits.argmax(-1).tolist()
        first.append(sum(predicted[t - 1] == ids[t] for t in range(1, len(ids))) / (len(ids) - 1))
    assert layers[0] == pytest.approx(sum(first) / len(first), abs=1e-12)


# --- prompt variants ----------------------------------------------------------------------------


def test_prompt_variants_are_built_as_described(tiny_models):
    tokenizer = AutoTokenizer.from_pretrained(tiny_models["llama"])
    items = tokenize_examples([Example(text=t, id=str(i)) for i, t in enumerate(TEXTS)], tokenizer, 200)
    found = {v.name: v for v in variants(items, tokenizer, bos=1, prefix=4, suffix=30, lengths=(6,), shifts=(3,),
                                         changes=("upper",), contexts=(2,), context_tokens=5, max_length=200)}
    sequences = [t.input_ids for t in items]
    longest = max(len(s) for s in sequences)
    assert found["prefix-6"].sequences == sequences and found["prefix-6"].prefix == 6
    assert found["prefix-6"].suffix == min(30, longest - 1 - 6)
    assert found["shift-3"].sequences == [s[:1] + s[4:] for s in sequences]
    assert found["upper"].sequences == [tokenizer(t.upper())["input_ids"] for t in TEXTS]
    context = found["context-2"]
    assert context.text_start == 1 + 2 * 5
    assert context.sequences[3] == sequences[3][:1] + sequences[0][1:6] + sequences[1][1:6] + sequences[3][1:]


# --- the command --------------------------------------------------------------------------------


def test_attack_command_writes_recovery_and_report(tiny_models, forget_file, tmp_path):
    out = tmp_path / "attack"
    code = exit_code(["attack", "--model", str(tiny_models["gemma3"]), "--original", str(tiny_models["llama"]),
                      "--forget", str(forget_file), "--out", str(out), "--attacks", "quantize,prefix,logit-lens",
                      "--quantizations", "gguf-q8_0", "--prefix-lengths", "8", "--prefix-shifts", "2",
                      "--prefix-changes", "lower", "--context-samples", "1", "--context-tokens", "4",
                      "--extraction-prefix", "6", "--extraction-suffix", "6"])
    assert code == 0
    report = json.loads((out / "eval.json").read_text())
    own = report["results"]["unlearned"]["robustness"]
    base = report["results"]["original"]["robustness"]
    row = next(r for r in own["recovery"] if r["variant"] == "gguf-q8_0")
    ma = row["values"]["ma"]
    assert ma["before"] == base["standard"]["ma"] and ma["after_unlearning"] == own["standard"]["ma"]
    assert ma["after_attack"] == own["attacks"]["quantize"]["gguf-q8_0"]["scores"]["ma"]
    expected = recovery(ma["before"], ma["after_unlearning"], ma["after_attack"])
    assert (math.isnan(expected) and math.isnan(row["recovery"]["ma"])) or row["recovery"]["ma"] == expected
    assert set(own["timings_s"]) == {"standard", "quantize", "prefix", "logit-lens"}
    assert "Robustness" in (out / "report.md").read_text()


@pytest.mark.parametrize("args, message", [
    (["--forget", "F", "--out", "O"], "--original"),
    (["--original", "M", "--forget", "F", "--out", "O", "--attacks", "melt"], "--attacks"),
    (["--original", "M", "--forget", "F", "--out", "O", "--quantizations", "q3_k"], "--quantizations"),
    (["--original", "M", "--forget", "F", "--out", "O", "--relearn-steps", "0"], "--relearn-steps"),
])
def test_attack_bad_input_exits_2_and_writes_nothing(tiny_models, tmp_path, capsys, args, message):
    args = [str(tmp_path / a) if a in ("F", "O") else str(tiny_models["llama"]) if a == "M" else a for a in args]
    assert exit_code(["attack", "--model", str(tiny_models["llama"]), *args]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "O").exists()


# --- the embedded model -------------------------------------------------------------------------


@pytest.mark.slow
def test_gemma_logit_lens_and_gguf_quantization(shared_data):
    """Gemma-3 270M: the lens's last layer is the model's MA on a forget sample; a Q8_0 round trip
    of a real projection stays within its per-block bound; the quantized copy leaves the model
    as it was."""
    from unmemorize.attacks.scoring import ScoreOptions, score
    from unmemorize.models import load_model

    lm = load_model("gemma-3-270m")
    forget = shared_data / "extraction/forget_sets/lm_extraction_8_0.csv"
    from unmemorize.data import load_examples

    items = tokenize_examples(load_examples(forget, limit=1), lm.tokenizer, 24)
    sequences = [t.input_ids for t in items]
    layers = logit_lens_ma(lm.model, sequences, pad_token_id=lm.tokenizer.pad_token_id)
    own = score(lm.model, sequences, ScoreOptions(pad_token_id=lm.tokenizer.pad_token_id, prefix=8, suffix=8),
                text_start=1)
    assert len(layers) == lm.model.config.num_hidden_layers
    assert layers[-1] == own["ma"]
    projection = lm.model.model.layers[0].self_attn.q_proj.weight
    restored = gguf_round_trip(projection, "gguf-q8_0").double()
    blocks = projection.detach().double().reshape(-1, 32)
    d = blocks.abs().amax(dim=1) / 127
    bound = d / 2 + 127 * (d - d.to(torch.float16).double()).abs() + 1e-12
    assert bool(((restored.reshape(-1, 32) - blocks).abs() <= bound[:, None]).all())


def test_attack_model_directory_is_the_robustness_of_the_unlearned_model(tiny_models, forget_file):
    from unmemorize.recipes.attack import attack_model_directory

    found = attack_model_directory(tiny_models["gemma3"], tiny_models["llama"], forget_file, attacks=("quantize",),
                                   quantizations=("gguf-q4_0",), extraction_prefix=6, extraction_suffix=6)
    assert set(found["attacks"]) == {"quantize"} and [r["variant"] for r in found["recovery"]] == ["gguf-q4_0"]
    assert found["recovery_max"]["ma"].keys() <= {"quantize", "all"}
