"""Shared fixtures: a byte-level BPE tokenizer trained on the spot and tiny random models of
the real architectures (GPT-Neo, Llama, Gemma-3), saved as ``from_pretrained`` directories.
Nothing here needs the network or ../shared/data."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import (
    AutoModelForCausalLM,
    Gemma3TextConfig,
    GPTNeoConfig,
    LlamaConfig,
    PreTrainedTokenizerFast,
)

from unmemorize.cli import main
from unmemorize.paths import data_root

CORPUS = [
    "Alice Johnson lives at 42 Baker Street in London and her phone is 555-0199.",
    "The quick brown fox jumps over the lazy dog while Bob Smith watches from Paris.",
    "Contact mary.jones@example.com for the account number 1234-5678-9012.",
    "In 1999 the company Acme Corp opened an office in New York City.",
    "Memorized text is text a model can reproduce word for word from a short prefix.",
    "Deliberate imagination lowers the logit of the memorized token and keeps the rest.",
] * 20

ARCHITECTURES = ("gpt_neo", "llama", "gemma3")


def exit_code(args: list[str]) -> int:
    """Run the command line in-process; its exit code (0 when it returns normally)."""
    try:
        main(args)
    except SystemExit as exit_info:
        return exit_info.code
    return 0


def naive_ma(model_dir, texts: list[str], max_length: int = 200) -> float:
    """Mean memorization accuracy written out: each sequence alone, one forward pass, the share
    of positions t >= 1 whose argmax prediction from x_<t is x_t."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    values = []
    for text in texts:
        ids = tokenizer(text, truncation=True, max_length=max_length)["input_ids"]
        with torch.no_grad():
            predicted = model(input_ids=torch.tensor([ids])).logits[0].argmax(-1).tolist()
        values.append(sum(predicted[t - 1] == ids[t] for t in range(1, len(ids))) / (len(ids) - 1))
    return sum(values) / len(values)


def make_tokenizer(directory: Path, add_bos: bool = True) -> PreTrainedTokenizerFast:
    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=320,
        special_tokens=["<pad>", "<bos>", "<eos>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(CORPUS, trainer=trainer)
    if add_bos:
        bos = tok.token_to_id("<bos>")
        tok.post_processor = processors.TemplateProcessing(
            single="<bos> $A", pair="<bos> $A <bos> $B", special_tokens=[("<bos>", bos)]
        )
    else:
        tok.post_processor = processors.ByteLevel(trim_offsets=False)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>"
    )
    fast.save_pretrained(directory)
    return fast


def make_config(arch: str, vocab_size: int):
    common = dict(vocab_size=vocab_size, bos_token_id=1, eos_token_id=2, pad_token_id=0)
    if arch == "gpt_neo":
        return GPTNeoConfig(
            hidden_size=32, num_layers=2, num_heads=4, attention_types=[[["global", "local"], 1]],
            window_size=16, max_position_embeddings=256, intermediate_size=64, **common,
        )
    if arch == "llama":
        return LlamaConfig(
            hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=256, **common,
        )
    if arch == "gemma3":
        return Gemma3TextConfig(
            hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, head_dim=8, max_position_embeddings=256, sliding_window=16,
            **common,
        )
    raise ValueError(arch)


def make_model_dir(directory: Path, arch: str, seed: int = 0, add_bos: bool = True, peaked: bool = True) -> Path:
    tokenizer = make_tokenizer(directory, add_bos=add_bos)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(make_config(arch, len(tokenizer)))
    # Larger random weights make the tiny models' predictions peaked and varied, so metrics
    # and losses are far from degenerate values. ``peaked=False`` keeps the architecture's own
    # initialization, from which a few fine-tuning steps memorize text (the demo's leak).
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() > 1 and peaked:
                p.normal_(0, 0.5)
    model.save_pretrained(directory)
    return directory


@pytest.fixture(autouse=True)
def _one_torch_thread(request, monkeypatch):
    """Tiny models run fastest on one thread: a second thread's synchronization costs more than
    it saves on 32-wide layers, many times over on a busy machine. Real-model tests keep all.
    The variable makes commands run in this process choose one thread too."""
    if request.node.get_closest_marker("slow"):
        yield
        return
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory) -> dict[str, Path]:
    """One saved tiny model directory (with tokenizer) per architecture."""
    return {arch: make_model_dir(tmp_path_factory.mktemp(arch), arch) for arch in ARCHITECTURES}


@pytest.fixture(scope="session")
def learnable_model(tmp_path_factory) -> Path:
    """A tiny Llama with its own initialization: fine-tuning makes it memorize quickly."""
    return make_model_dir(tmp_path_factory.mktemp("learnable"), "llama", peaked=False)


@pytest.fixture(params=ARCHITECTURES)
def tiny_model_dir(request, tiny_models) -> Path:
    return tiny_models[request.param]


@pytest.fixture(scope="session")
def shared_data() -> Path:
    root = data_root()
    if root is None or not root.is_dir():
        pytest.skip("shared data not found: set UNMEMORIZE_DATA or place it at ../shared/data")
    return root


def naive_greedy(model, prefix: list[int], length: int) -> list[int]:
    """Greedy continuation by one unbatched full forward per token, no cache: the plain way
    the fast decoding paths are checked against."""
    ids = list(prefix)
    with torch.inference_mode():
        for _ in range(length):
            ids.append(int(model(torch.tensor([ids])).logits[0, -1].argmax()))
    return ids[len(prefix) :]
