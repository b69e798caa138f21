"""Attacks that try to bring forgotten text back: each takes a loaded model and returns another
(quantized, fine-tuned again) or other inputs (prompts), which the robustness suite scores with
the forget set's metrics. Quantization (`quantize`), relearning (`relearn`) and prompt variation
(`prefix`); the logit lens is a metric (`metrics.robustness.logit_lens_ma`)."""

ATTACKS = ("quantize", "relearn", "prefix", "logit-lens")
