"""Is forgotten text really gone? The numbers of the robustness attacks: how much of what
unlearning removed an attack brings back (recovery), and how well each layer's hidden state
still predicts the forget set (the logit lens).

Sources: quantization (Zhang et al. 2025, "Catastrophic Failure of LLM Unlearning via
Quantization", ICLR), relearning (Hu et al. 2024, "Jogging the Memory of Unlearned LLMs Through
Targeted Relearning Attacks"; Deeb & Roger 2024, "Do Unlearning Methods Remove Information from
Language Model Weights?"), latent knowledge (Lynch et al. 2024, "Eight Methods to Evaluate
Robust Unlearning in LLMs"; nostalgebraist 2020, "interpreting GPT: the logit lens")."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from unmemorize.metrics.decoding import evaluating, forward_hidden, greedy_tokens, split_model

# Below this gap between before and after unlearning there is nothing to recover: recovery is
# undefined (NaN), not a huge ratio of two rounding errors.
RECOVERY_MIN_GAP = 1e-6
# Positions per output-layer call of the lens (bounds the [positions, V] logits).
_LENS_POSITIONS = 256


def recovery(before: float, after_unlearning: float, after_attack: float,
             attack_on_original: float | None = None, min_gap: float = RECOVERY_MIN_GAP) -> float:
    """The share of what unlearning removed that an attack brings back (Zhang et al. 2025
    report knowledge retained after quantization the same way):

        recovery = (after attack − after unlearning) / (before − after unlearning)

    0: the attack recovers nothing; 1: the metric is back at the original's level; negative:
    the attack lowers it further; above 1: beyond the original. With ``attack_on_original``
    (the original model under the same attack, e.g. quantized the same way) the attack's own
    effect on any model is taken out first: ``after_attack − (attack_on_original − before)``,
    i.e. 1 − (gap under attack) / (gap without), so quantization noise is not counted as
    recovery. NaN when |before − after unlearning| ≤ ``min_gap`` (unlearning changed nothing on
    this metric, e.g. extraction that was already 0 before) or a value is missing."""
    values = (before, after_unlearning, after_attack) + (() if attack_on_original is None else (attack_on_original,))
    if any(v is None or math.isnan(v) for v in values):
        return math.nan
    gap = before - after_unlearning
    if abs(gap) <= min_gap:
        return math.nan
    attacked = after_attack if attack_on_original is None else after_attack - (attack_on_original - before)
    return (attacked - after_unlearning) / gap


def _decoder_layers(decoder: torch.nn.Module) -> tuple[torch.nn.ModuleList, torch.nn.Module]:
    layers, norm = getattr(decoder, "layers", None), getattr(decoder, "norm", None)
    if not isinstance(layers, torch.nn.ModuleList) or norm is None:
        raise ValueError("the logit lens needs a decoder with .layers and a final .norm (Llama, Gemma, Qwen...)")
    return layers, norm


def logit_lens_ma(model: torch.nn.Module, sequences: Sequence[Sequence[int]], *, pad_token_id: int,
                  batch_size: int = 4) -> list[float]:
    """MA of each decoder layer's output read through the final norm and the output layer (the
    logit lens of nostalgebraist 2020, as Lynch et al. 2024 use it on unlearned models): for
    layer l and each sample, the share of targets t = 1..T−1 where
    argmax head(norm(h_l[t−1])) = x_t, averaged over samples as MA is (Jang et al. 2022). The
    last layer's value is the model's own MA: its output through the final norm is the last
    hidden state."""
    parts = split_model(model)
    if parts is None:
        raise ValueError("the logit lens needs a model split_model knows")
    layers, norm = _decoder_layers(parts.decoder)
    captured: list[torch.Tensor] = []

    def keep(_module, _inputs, output):
        captured.append(output[0] if isinstance(output, tuple) else output)

    per_sample = [[0.0] * len(sequences) for _ in layers]
    hooks = [layer.register_forward_hook(keep) for layer in layers]
    try:
        with evaluating(model):
            for start in range(0, len(sequences), batch_size):
                batch = [list(s) for s in sequences[start : start + batch_size]]
                captured.clear()
                forward_hidden(parts, batch, pad_token_id=pad_token_id)
                for index, hidden in enumerate(captured):
                    state = norm(hidden)
                    for row, sequence in enumerate(batch):
                        flat = state[row, : len(sequence) - 1]
                        predicted = torch.cat([greedy_tokens(parts, flat[a : a + _LENS_POSITIONS])
                                               for a in range(0, len(flat), _LENS_POSITIONS)]).cpu()
                        hits = int((predicted == torch.tensor(sequence[1:])).sum())
                        per_sample[index][start + row] = hits / (len(sequence) - 1)
    finally:
        for hook in hooks:
            hook.remove()
    return [sum(values) / len(values) for values in per_sample]
