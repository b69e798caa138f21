"""unmemorize: make a causal language model forget memorized text, and prove it."""

__version__ = "0.1.0"
