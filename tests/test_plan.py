"""The memory planner: parameter counts against the architectures' formulas written out, each
memory term against numbers computed by hand, the budget search and the command line. The
formula against the peak memory of real runs on Gemma-3 270M is benchmarks/plan_memory.py's
(a peak measured inside a test process depends on what the process did before)."""

import dataclasses
import json

import pytest

from conftest import exit_code, make_config
from unmemorize.errors import UserError
from unmemorize.training import memory
from unmemorize.training.memory import Architecture, Setting, architecture, memory_terms

GIB = 2**30


def test_parameter_counts_follow_the_architectures_formulas(tiny_models):
    from transformers import AutoConfig

    # Tiny Llama (tests/conftest.py): H 32, I 64, 2 layers, 4 heads of 8, 2 key/value heads, untied.
    config = AutoConfig.from_pretrained(tiny_models["llama"])
    layer = 32 * 32 + 32 * 16 + 32 * 16 + 32 * 32 + 3 * 32 * 64 + 2 * 32  # q k v o, gate up down, 2 norms
    arch = architecture(config, "tiny")
    assert arch.parameters == 2 * layer + 2 * config.vocab_size * 32 + 32
    assert (arch.largest_layer, arch.edges, arch.head) == (layer, 2 * config.vocab_size * 32 + 32, config.vocab_size * 32)
    assert arch.norm_inputs == 2 * 32
    # Gemma 3 270M: four norms of H = 640 per layer, and q/k norms over 4 query heads and 1
    # key/value head of 256.
    assert architecture(memory.known_config("gemma-3-270m"), "gemma").norm_inputs == 4 * 640 + 4 * 256 + 256
    # LoRA on q, k, v, o: r·(in + out) each, per layer.
    assert arch.lora_per_rank == 2 * ((32 + 32) + (32 + 16) + (32 + 16) + (32 + 32))
    # GPT-Neo 1.3B's published config: per layer 2 norms (2·2H), q k v (3H²), out_proj (H² + H),
    # c_fc (4H² + 4H), c_proj (4H² + H) = 12H² + 10H; tied embeddings V·H, positions 2048·H, ln_f 2H.
    H = 2048
    neo = architecture(memory.known_config("gpt-neo-1.3b"), "gpt-neo-1.3b")
    assert neo.parameters == 50257 * H + 2048 * H + 24 * (12 * H * H + 10 * H) + 2 * H == 1_315_575_808
    # Llama-3-8B's: embeddings and head untied (2·V·H), per layer q o (2H²), k v (2·H·1024),
    # gate up down (3·H·I), 2 norms; the final norm.
    I, V = 14336, 128256
    llama = architecture(memory.known_config("llama-3-8b"), "llama-3-8b")
    assert llama.parameters == 2 * V * 4096 + 32 * (2 * 4096**2 + 2 * 4096 * 1024 + 3 * 4096 * I + 2 * 4096) + 4096


ARCH = Architecture(name="hand", parameters=1000, largest_layer=100, edges=300, head=200, layers=2, hidden=4,
                    query_width=8, kv_width=4, intermediate=16, gated_mlp=True, heads=2, vocab=50,
                    lora_per_rank=10, lora_inputs=12, norm_inputs=8)


def test_each_term_matches_the_hand_computed_bytes():
    full = memory_terms(ARCH, Setting(batch_size=2, max_length=3, device="cuda"))
    # 6 tokens; per token and layer: norms 8, projection inputs 2·4, q k v and output 3·8 + 2·4,
    # MLP 4·16 = 112 (no attention probabilities on a GPU); 2 layers + the final norm's 2·4 = 232.
    # Chunk buffers: 2^26 // 50 = 1,342,177 rows of 50, three of them (teacher: yes), plus the
    # head's gradient 200 floats.
    assert full == {"weights": 4000, "teacher": 4000, "gradients": 4000, "optimizer": 8000,
                    "activations": 6 * 232 * 4, "logits": 3 * 1_342_177 * 50 * 4 + 800,
                    "runtime": memory.RUNTIME_BYTES["cuda"]}
    lora = memory_terms(ARCH, Setting(batch_size=2, max_length=3, lora=True, lora_r=4, device="cpu",
                                      optimizer="sgd", chunked=False))
    # LoRA: 40 trainable, no teacher copy, no optimizer state (SGD); on a CPU the attention
    # probabilities (2 heads × 3) and LoRA's dropout (2·12) join: 112 + 6 + 24 = 142 per layer.
    # Full logits: 4 × 6 tokens × 50 floats.
    assert lora == {"weights": 4000, "teacher": 0, "gradients": 160, "optimizer": 0,
                    "activations": 6 * (2 * 142 + 8) * 4, "logits": 4 * 6 * 50 * 4,
                    "runtime": memory.RUNTIME_BYTES["cpu"]}
    fsdp = memory_terms(ARCH, Setting(batch_size=2, max_length=3, strategy="fsdp", processes=4))
    # A quarter of the weights, plus the root unit (300) and two layers (2·100) gathered.
    assert (fsdp["weights"], fsdp["teacher"], fsdp["gradients"], fsdp["optimizer"]) == (3000, 3000, 1000, 2000)
    zero2 = memory_terms(ARCH, Setting(batch_size=2, max_length=3, strategy="zero2", processes=4))
    assert (zero2["weights"], zero2["gradients"], zero2["optimizer"]) == (4000, 1000, 2000)


def test_the_search_returns_the_first_setting_that_fits():
    asked = Setting(batch_size=8, max_length=3, chunked=False, device="cuda")
    total = lambda s: sum(memory_terms(ARCH, s).values())  # noqa: E731
    found = memory.fitting_setting(ARCH, asked, total(asked), 1)
    assert found == asked  # fits as asked: nothing changes
    smaller = memory.fitting_setting(ARCH, asked, total(asked) - 1, 1)
    assert (smaller.batch_size, smaller.grad_accum, smaller.lora) == (4, 2, False)  # the step's batch is kept
    # Every process holding everything does not fit even one sequence at a time: shard.
    one = dataclasses.replace(asked, batch_size=1, grad_accum=8)
    sharded = memory.fitting_setting(ARCH, asked, total(one) - 1, 4)
    # ZeRO-2 saves 3/4 of gradients and moments (9000 bytes); each sequence more costs 5184
    # (logits 4·3·50·4, activations 3·232·4): micro-batch b fits while 5184·(b − 1) < 9000.
    assert (sharded.strategy, sharded.batch_size, sharded.grad_accum, sharded.processes) == ("zero2", 2, 4, 4)
    assert memory.fitting_setting(ARCH, asked, 1000, 4) is None


@pytest.mark.parametrize("text,expected", [("24GB", 24 * 10**9), ("80GiB", 80 * GIB), ("512MB", 512 * 10**6),
                                           ("1.5G", int(1.5 * GIB))])
def test_sizes_are_read_as_written(text, expected):
    assert memory.parse_size(text) == expected


@pytest.mark.parametrize("args", [["--memory", "lots"], ["--gpus", "8x"], ["--gpus", "x80GB"],
                                  ["--memory", "1GB", "--gpus", "2x1GB"], ["--model", "no-such-model"],
                                  ["--method", "dpd"]])
def test_bad_plan_input_is_one_line_exit_2(args, tmp_path, capsys):
    out = tmp_path / "plan.json"
    assert exit_code(["plan", "--model", "gpt-neo-1.3b", *args, "--json", str(out)]) == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1
    assert not out.exists()
    with pytest.raises(UserError):
        memory.parse_gpus("0x80GB")


def test_plan_command_reports_the_terms_and_a_setting_that_fits(tmp_path, capsys):
    out = tmp_path / "plan.json"
    assert exit_code(["plan", "--model", "llama-3-8b", "--no-lora", "--batch-size", "8", "--max-length", "512",
                      "--gpus", "8x80GB", "--json", str(out)]) == 0
    plan = json.loads(out.read_text())
    assert plan["architecture"]["parameters"] == 8_030_261_248
    assert not plan["budget"]["fits"] and plan["budget"]["fitting"]["setting"]["strategy"] == "fsdp"
    assert plan["budget"]["fitting"]["total"] <= 80 * 10**9
    assert "configs/accelerate/fsdp.yaml" in capsys.readouterr().out.replace("\n", "")


def test_local_directories_are_planned_from_their_config(tiny_models):
    from unmemorize.config import PlanConfig
    from unmemorize.recipes.plan import run_plan

    plan = run_plan(PlanConfig(model=str(tiny_models["gemma3"]), lora=False, device="cpu"))
    config = make_config("gemma3", plan["architecture"]["vocab"])
    assert plan["architecture"]["layers"] == config.num_hidden_layers
    assert plan["asked"]["terms"]["teacher"] == plan["asked"]["terms"]["weights"]  # di: a frozen copy


