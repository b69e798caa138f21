"""`unmemorize audit`: memorization (MA, EL_n) of a model on a set of texts, per sample.

Under ``accelerate launch`` / ``torchrun`` the samples' batches are shared among the processes
(`metrics.distributed`) and merged to the single-process result; the main process writes."""

from __future__ import annotations

import json
from pathlib import Path

from ..config import AuditConfig
from ..data import read_examples, tokenize_examples
from ..events import Events
from ..metrics.distributed import join_launch, sharded_memorization
from ..models import default_device, load_model
from ..paths import write_atomic


def run_audit(config: AuditConfig, events: Events | None = None) -> dict:
    """Per-sample and mean MA/EL of ``config.data`` under ``config.model``; written to
    ``config.json_path`` when given. Returns the payload (with the sample ids and token counts)."""
    events = events or Events()
    examples = read_examples(config.data, config)
    state = join_launch()
    loaded = load_model(config.model, device=str(state.device) if state.num_processes > 1 else default_device(),
                        allow_pickle=config.allow_pickle, trust_remote_code=config.trust_remote_code,
                        progress=events.message)
    tokenized = tokenize_examples(examples, loaded.tokenizer, config.max_length)
    result = sharded_memorization(
        loaded.model, [t.input_ids for t in tokenized], ns=config.el_n, el_stride=config.el_stride,
        batch_size=config.batch_size, el_batch_size=config.el_batch_size, pad_token_id=loaded.tokenizer.pad_token_id,
        progress=events.progress("memorization"),
    )
    payload = result.to_json()
    payload.update(model=config.model, data=str(config.data), el_stride=config.el_stride,
                   max_length=config.max_length, ids=[t.example.id for t in tokenized],
                   tokens=[len(t.input_ids) for t in tokenized])
    if config.json_path and state.is_main_process:
        write_atomic(Path(config.json_path), json.dumps(payload, indent=2))
    return payload

