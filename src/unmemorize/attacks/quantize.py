"""Quantization as users ship models: GGUF types written and read with the `gguf` package's own
quantizers (what llama.cpp's converter stores), and int8/int4 weight-only quantization with
optimum-quanto (the `attack` extra). Zhang et al. (2025) found 4-bit quantization restores much
of what unlearning with a utility constraint removed: its small weight change is rounded away.

Each scheme returns a quantized copy; the caller's model is left as it was."""

from __future__ import annotations

import copy

import torch

from ..errors import UserError

GGUF_SCHEMES = ("gguf-q8_0", "gguf-q4_0")
QUANTO_SCHEMES = ("int8", "int4")
SCHEMES = GGUF_SCHEMES + QUANTO_SCHEMES


def gguf_type(scheme: str):
    from gguf import GGMLQuantizationType

    return GGMLQuantizationType[scheme.removeprefix("gguf-").upper()]


def gguf_round_trip(weight: torch.Tensor, scheme: str) -> torch.Tensor | None:
    """``weight`` written in the GGUF type of ``scheme`` with `gguf.quants.quantize` and read back
    with `gguf.quants.dequantize`; None when its rows are not a whole number of the type's
    blocks (llama.cpp's converter keeps such tensors in float too)."""
    from gguf import GGML_QUANT_SIZES, quants

    qtype = gguf_type(scheme)
    block = GGML_QUANT_SIZES[qtype][0]
    if weight.dim() != 2 or weight.shape[-1] % block:
        return None
    data = weight.detach().to(torch.float32).cpu().numpy()
    restored = quants.dequantize(quants.quantize(data, qtype), qtype).reshape(data.shape)
    return torch.from_numpy(restored).to(device=weight.device, dtype=weight.dtype)


def _gguf_model(model: torch.nn.Module, scheme: str) -> tuple[torch.nn.Module, dict]:
    """Every 2-D weight of a linear or embedding layer round-tripped (a tied embedding and output
    layer once, as the file stores it once); norms and biases stay float, as in llama.cpp."""
    quantized = copy.deepcopy(model)
    done: set[int] = set()
    counts = {"quantized": 0, "kept_float": 0}
    with torch.no_grad():
        for module in quantized.modules():
            if not isinstance(module, (torch.nn.Linear, torch.nn.Embedding)) or id(module.weight) in done:
                continue
            done.add(id(module.weight))
            restored = gguf_round_trip(module.weight, scheme)
            if restored is None:
                counts["kept_float"] += 1
                continue
            module.weight.copy_(restored)
            counts["quantized"] += 1
    return quantized, counts


def _quanto_model(model: torch.nn.Module, scheme: str) -> tuple[torch.nn.Module, dict]:
    """optimum-quanto's weight-only int8 / int4 (groups of 128) of the decoder's linear layers,
    frozen to integer weights and read back (dequantized) into float layers: the values quanto's
    kernels compute with, run by the same decoding as every other model (quanto's own int4
    modules refuse PyTorch's inference mode). The output layer is left in float: quanto leaves
    embeddings so, and on a tied model it is the embedding."""
    try:
        from optimum.quanto import freeze, qint4, qint8, quantize
    except ImportError:
        raise UserError(f"--quantizations {scheme} needs optimum-quanto: pip install 'unmemorize[attack]'") from None
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    names = [name for name, module in model.named_modules() if module is head]
    work = copy.deepcopy(model)
    quantize(work, weights=qint8 if scheme == "int8" else qint4, exclude=names or None)
    freeze(work)
    restored = {name: module.weight.dequantize().detach() for name, module in work.named_modules()
                if type(module).__name__ == "QLinear"}
    del work
    quantized = copy.deepcopy(model)
    with torch.no_grad():
        for name, module in quantized.named_modules():
            if name in restored:
                module.weight.copy_(restored[name].to(module.weight.dtype))
    return quantized, {"quantized": len(restored), "kept_float": len(names)}


def quantized_copy(model: torch.nn.Module, scheme: str) -> tuple[torch.nn.Module, dict]:
    """A copy of ``model`` quantized by ``scheme`` (one of SCHEMES) and what was quantized."""
    if scheme in GGUF_SCHEMES:
        return _gguf_model(model, scheme)
    if scheme in QUANTO_SCHEMES:
        return _quanto_model(model, scheme)
    raise UserError(f"unknown quantization {scheme!r}; choose from {', '.join(SCHEMES)}")
