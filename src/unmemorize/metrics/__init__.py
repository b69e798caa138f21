"""Metrics that say how much of a text a model has memorized."""

from unmemorize.metrics.memorization import (
    MemorizationResult,
    extraction_likelihood,
    memorization,
    ngram_overlap,
    token_accuracy,
)

__all__ = [
    "MemorizationResult",
    "extraction_likelihood",
    "memorization",
    "ngram_overlap",
    "token_accuracy",
]
