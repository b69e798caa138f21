"""How much memory one training process needs: the planner's formula, in one place.

`Architecture` is what the formula reads from a model: parameter counts taken from the model
built on the meta device from its config (no weights are read or allocated), and the widths of
its layers. `Setting` is how it is trained. `memory_terms` turns both into bytes per process,
term by term; `fitting_setting` searches the smallest change to a setting that fits a budget.

The published architectures of `KNOWN` are there because nothing can be downloaded: their
numbers are those of the model's own ``config.json`` on the Hugging Face hub (cited per entry),
and any other model is read with ``transformers.AutoConfig`` from a local directory or the cache.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import torch

from ..errors import UserError

GIB = 2**30
FLOAT32 = 4
# The chunked loss holds [rows, V] float32 buffers of 2^26 elements each (training.loss).
CHUNK_ELEMENTS = 2**26
# The process before any model is loaded: the interpreter with torch, transformers, peft and the
# tokenizer imported (CPU: 0.83 GiB measured by benchmarks/plan_memory.py on Linux), or the CUDA
# context and kernels a GPU process keeps outside PyTorch's allocator (typical for CUDA 12).
RUNTIME_BYTES = {"cpu": int(0.83 * GIB), "cuda": int(0.5 * GIB)}
STRATEGIES = ("ddp", "zero2", "fsdp", "zero3")  # ddp: every process holds everything


# Published config.json values (https://huggingface.co/<hub id>/blob/main/config.json). The
# keys are the transformers config class's own; nothing else is assumed about these models.
KNOWN: dict[str, tuple[str, str, dict]] = {
    "gemma-3-270m": ("google/gemma-3-270m", "gemma3_text", dict(
        vocab_size=262144, hidden_size=640, intermediate_size=2048, num_hidden_layers=18,
        num_attention_heads=4, num_key_value_heads=1, head_dim=256, tie_word_embeddings=True)),
    "gpt-neo-125m": ("EleutherAI/gpt-neo-125M", "gpt_neo", dict(
        vocab_size=50257, hidden_size=768, num_layers=12, num_heads=12, max_position_embeddings=2048,
        attention_types=[[["global", "local"], 6]])),
    "gpt-neo-1.3b": ("EleutherAI/gpt-neo-1.3B", "gpt_neo", dict(
        vocab_size=50257, hidden_size=2048, num_layers=24, num_heads=16, max_position_embeddings=2048,
        attention_types=[[["global", "local"], 12]])),
    "gpt-neo-2.7b": ("EleutherAI/gpt-neo-2.7B", "gpt_neo", dict(
        vocab_size=50257, hidden_size=2560, num_layers=32, num_heads=20, max_position_embeddings=2048,
        attention_types=[[["global", "local"], 16]])),
    "llama-2-7b": ("meta-llama/Llama-2-7b-hf", "llama", dict(
        vocab_size=32000, hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
        num_attention_heads=32, num_key_value_heads=32, tie_word_embeddings=False)),
    "llama-3-8b": ("meta-llama/Meta-Llama-3-8B", "llama", dict(
        vocab_size=128256, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
        num_attention_heads=32, num_key_value_heads=8, tie_word_embeddings=False)),
    "llama-3.2-1b": ("meta-llama/Llama-3.2-1B", "llama", dict(
        vocab_size=128256, hidden_size=2048, intermediate_size=8192, num_hidden_layers=16,
        num_attention_heads=32, num_key_value_heads=8, head_dim=64, tie_word_embeddings=True)),
}


@dataclass(frozen=True)
class Architecture:
    """What the memory formula reads from a model (counts in parameters, widths in elements)."""

    name: str
    parameters: int  # every distinct parameter (tied embeddings counted once)
    largest_layer: int  # parameters of the largest decoder layer (an FSDP unit)
    edges: int  # parameters outside the decoder layers: embeddings, final norm, head
    head: int  # the output layer's weight (V·H), whether or not it is tied to the embeddings
    layers: int
    hidden: int  # H
    query_width: int  # heads × head dim
    kv_width: int  # key/value heads × head dim
    intermediate: int  # the MLP's inner width
    gated_mlp: bool  # gate and up projections (Llama, Gemma) or one (GPT-Neo)
    heads: int
    vocab: int
    lora_per_rank: int  # LoRA parameters per unit of rank on the attention projections
    lora_inputs: int  # summed input widths of those projections in one layer (LoRA's dropout)
    norm_inputs: int  # summed input widths of one layer's norms (2H for Llama; Gemma adds four)


def _meta_model(config):
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(config)


def decoder_layers(model) -> list[torch.nn.Module]:
    """The model's decoder layers: the modules transformers keeps whole when splitting it."""
    names = set(getattr(model, "_no_split_modules", None) or [])
    found = [m for m in model.modules() if type(m).__name__ in names]
    if not found:
        raise UserError(f"cannot find the decoder layers of {type(model).__name__} to plan its memory")
    return found


def architecture(config, name: str) -> Architecture:
    """The `Architecture` of a transformers config, from the model built on the meta device."""
    from .components import attention_projections

    model = _meta_model(config)
    distinct = {id(p): p.numel() for p in model.parameters()}
    layers = decoder_layers(model)
    in_layers = {id(p) for layer in layers for p in layer.parameters()}
    head = model.get_output_embeddings()
    targets = set(attention_projections(layers[0]))
    projections = [m for n, m in layers[0].named_modules() if n.rsplit(".", 1)[-1] in targets]
    widths = [_in_out(m) for m in projections]
    hidden = config.hidden_size
    heads = getattr(config, "num_attention_heads", None) or config.num_heads
    head_dim = getattr(config, "head_dim", None) or hidden // heads
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    intermediate = getattr(config, "intermediate_size", None) or 4 * hidden
    return Architecture(
        name=name, parameters=sum(distinct.values()),
        largest_layer=max(sum(p.numel() for p in layer.parameters()) for layer in layers),
        edges=sum(n for i, n in distinct.items() if i not in in_layers), head=head.weight.numel(),
        layers=len(layers), hidden=hidden, query_width=heads * head_dim, kv_width=kv_heads * head_dim,
        intermediate=intermediate, gated_mlp=any("gate" in n for n, _ in layers[0].named_modules()),
        heads=heads, vocab=head.weight.shape[0], lora_per_rank=len(layers) * sum(i + o for i, o in widths),
        lora_inputs=sum(i for i, _ in widths),
        norm_inputs=sum(_norm_width(n, m, heads * head_dim, kv_heads * head_dim) for n, m in layers[0].named_modules()
                        if "Norm" in type(m).__name__),
    )


def _norm_width(name: str, module: torch.nn.Module, query_width: int, kv_width: int) -> int:
    """Floats per token a norm saves: its input. Query and key norms (Gemma 3) normalize each
    head's vector: their input is every head's."""
    leaf = name.rsplit(".", 1)[-1]
    if leaf == "q_norm":
        return query_width
    if leaf == "k_norm":
        return kv_width
    return module.weight.shape[0]


def _in_out(module: torch.nn.Module) -> tuple[int, int]:
    weight = module.weight  # nn.Linear is [out, in]; GPT-2's Conv1D is [in, out]
    return (weight.shape[1], weight.shape[0]) if isinstance(module, torch.nn.Linear) else tuple(weight.shape)


def known_config(name: str):
    """The transformers config of a `KNOWN` architecture (None when the name is not one)."""
    from transformers import AutoConfig

    if name.lower() not in KNOWN:
        return None
    _, model_type, values = KNOWN[name.lower()]
    return AutoConfig.for_model(model_type, **values)


@dataclass(frozen=True)
class Setting:
    """How a model is trained, as far as memory goes."""

    batch_size: int = 8  # sequences per micro-batch
    max_length: int = 200
    lora: bool = False
    lora_r: int = 8
    teacher: bool = True  # the method reads the original model (di, kl, npo, ...)
    optimizer: str = "adamw"
    chunked: bool = True  # the chunked loss (training.loss); False: full [B, T, V] logits
    compute_bytes: int = FLOAT32  # activations: 4 in float32, 2 under bf16 autocast
    strategy: str = "ddp"
    processes: int = 1
    grad_accum: int = 1
    device: str = "cuda"


def trainable(arch: Architecture, setting: Setting) -> int:
    return arch.lora_per_rank * setting.lora_r if setting.lora else arch.parameters


def memory_terms(arch: Architecture, setting: Setting) -> dict[str, int]:
    """Bytes one process needs at its peak, by term. Weights, gradients and optimizer state are
    float32 (bf16 runs autocast the products; the weights stay float32):

    - **weights**: every parameter, 4 bytes; divided by the processes under FSDP / ZeRO-3, plus
      what those gather: the parameters outside the layers (embeddings, head: gathered for the
      whole forward and backward) and two layers (the one running and the one prefetched).
    - **teacher**: a full fine-tune whose method reads the original model keeps a frozen copy,
      sharded like the weights; with LoRA the teacher is the student with its adapters off (0).
    - **gradients**: one float per trainable parameter (ZeRO-2, FSDP and ZeRO-3 keep a shard).
    - **optimizer**: AdamW's two moments per trainable parameter (sharded likewise); plain SGD 0.
    - **activations**: what backward needs of every layer, per token (the accounting of
      Korthikanti et al. 2022, *Reducing Activation Recomputation in Large Transformer Models*,
      §4.1, done for the model's own layer): each norm's input (`Architecture.norm_inputs`), the
      inputs of the attention and MLP projections (2H), the attention's q, k, v and output
      (2·Hq + 2·Hkv), the output projection's input (Hq), the MLP's inner activations (gate,
      activation, up, product: 4I; 2I without a gate), and on a CPU the attention
      probabilities, heads × L (a GPU's fused attention keeps only their log-sum-exp); LoRA adds
      the dropout's output and mask on each adapted projection's input; plus the final norm's
      input and output (2H) once. In the compute precision, for every token of a micro-batch.
    - **logits**: the chunked loss holds its [rows, V] float32 buffers (2^26 elements each:
      student, teacher and a scratch for the soft target; on a CPU only the rows written, one
      per token at most, take memory) and, when the head is trained, its
      gradient (V·H floats, computed in the forward pass). Full logits (the plain path) hold
      [B, T, V] floats four times with a teacher (teacher logits → target, student logits,
      log-probabilities, their gradient) and three times without.
    - **runtime**: the process before the model (see `RUNTIME_BYTES`).
    """
    sharded_weights = setting.strategy in ("fsdp", "zero3")
    sharded_states = setting.strategy != "ddp"
    n = setting.processes
    train = trainable(arch, setting)
    tokens = setting.batch_size * setting.max_length

    def weights_of_one_model() -> float:
        if not sharded_weights or n == 1:
            return arch.parameters * FLOAT32
        return (arch.parameters / n + arch.edges + 2 * arch.largest_layer) * FLOAT32

    probabilities = arch.heads * setting.max_length if setting.device == "cpu" else 0
    per_token_layer = (arch.norm_inputs + 2 * arch.hidden + 3 * arch.query_width + 2 * arch.kv_width
                       + (4 if arch.gated_mlp else 2) * arch.intermediate + probabilities
                       + (2 * arch.lora_inputs if setting.lora else 0))
    activations = tokens * (arch.layers * per_token_layer + 2 * arch.hidden) * setting.compute_bytes
    if setting.chunked:
        rows = max(1, CHUNK_ELEMENTS // arch.vocab)
        if setting.device == "cpu":  # pages of a buffer count once written: at most a row per token
            rows = min(rows, tokens)
        buffers = 3 if setting.teacher else 2
        head_gradient = arch.head * FLOAT32 if not setting.lora else 0
        logits = buffers * rows * arch.vocab * FLOAT32 + head_gradient
    else:
        logits = (4 if setting.teacher else 3) * tokens * arch.vocab * FLOAT32
    state_share = n if sharded_states else 1
    return {
        "weights": int(weights_of_one_model()),
        "teacher": int(weights_of_one_model()) if setting.teacher and not setting.lora else 0,
        "gradients": math.ceil(train * FLOAT32 / state_share),
        "optimizer": math.ceil((2 if setting.optimizer == "adamw" else 0) * train * FLOAT32 / state_share),
        "activations": int(activations),
        "logits": int(logits),
        "runtime": RUNTIME_BYTES[setting.device],
    }


def candidates(setting: Setting, processes: int) -> list[Setting]:
    """Settings to try against a budget, in order of preference: the setting as asked with each
    strategy (no sharding first), each with the micro-batch halved down to 1 (gradient
    accumulation keeps the step's batch), then the same with LoRA when it was not asked for."""
    found = []
    for lora in (setting.lora, True) if not setting.lora else (True,):
        for strategy in (("ddp",) + STRATEGIES[1:] if processes > 1 else ("ddp",)):
            batch = setting.batch_size
            while True:
                found.append(dataclasses.replace(
                    setting, lora=lora, strategy=strategy, processes=processes, batch_size=batch,
                    grad_accum=setting.grad_accum * setting.batch_size // batch))
                if batch == 1:
                    break
                batch = max(1, batch // 2)
    return found


def fitting_setting(arch: Architecture, setting: Setting, budget: int, processes: int) -> Setting | None:
    """The first of `candidates` whose total fits ``budget`` bytes per process, or None."""
    return next((c for c in candidates(setting, processes) if sum(memory_terms(arch, c).values()) <= budget), None)


def parse_size(text: str) -> int:
    """'24GB', '24GiB', '80G', '512MB' -> bytes (GB = 10^9, GiB = 2^30: GPU makers mean GB)."""
    units = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12, "K": 2**10, "M": 2**20,
             "G": 2**30, "T": 2**40, "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40}
    cleaned = text.strip().upper().replace(" ", "")
    number = cleaned.rstrip("KMGTIB")
    try:
        value = float(number)
        unit = units[cleaned[len(number):]]
    except (ValueError, KeyError):
        raise UserError(f"cannot read the memory size {text!r}: write e.g. 24GB, 80GiB or 512MB") from None
    if value <= 0:
        raise UserError(f"memory size {text!r} must be positive")
    return int(value * unit)


def parse_gpus(text: str) -> tuple[int, int]:
    """'8x80GB' -> (8, bytes per GPU)."""
    count, sep, size = text.lower().partition("x")
    if not sep or not count.strip().isdigit() or int(count) < 1:
        raise UserError(f"cannot read --gpus {text!r}: write COUNTxSIZE, e.g. 8x80GB")
    return int(count), parse_size(size)
