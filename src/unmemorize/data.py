"""Data: sources (JSONL, CSV, text, token arrays, Hugging Face datasets) -> examples -> token
batches.

An `Example` is text plus optional focus spans (character offsets into the text). Tokenizing keeps
each token's character offsets, which is how focus spans become token weights (see `focus`)."""

from __future__ import annotations

import csv
import json
import re
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .errors import UserError
from .paths import data_path

Span = tuple[int, int]


@dataclass
class Example:
    text: str
    id: str
    spans: list[Span] = field(default_factory=list)
    # Characters of `text` that form the prompt when the source gave prefix + suffix.
    prefix_chars: int | None = None


@dataclass
class TokenizedExample:
    example: Example
    input_ids: list[int]
    offsets: list[Span]  # character span of each token in example.text; (0, 0) for specials


def load_examples(
    source: str | Path,
    *,
    split: str = "lines",
    text_column: str = "text",
    npy_tokenizer: str | Path | None = None,
    limit: int | None = None,
) -> list[Example]:
    """Read examples from a file, a saved `datasets` directory, or `hf:NAME[:SPLIT]` (hub).

    - ``.jsonl``: one object per line with ``text`` or ``prefix`` + ``suffix``; optional ``spans``
      (``[[start, end], ...]`` character offsets into the text).
    - ``.csv``: a ``text`` column (other columns are kept as the id when named ``doc_id``/``id``).
    - ``.txt``: one example per line (``split="lines"``) or per blank-line-separated paragraph.
    - ``.npy``: token-id arrays (one row per example), decoded with ``npy_tokenizer``
      (default: the GPT-2 tokenizer under the data location).
    """
    if split not in ("lines", "paragraphs"):
        raise UserError(f"--split must be 'lines' or 'paragraphs', not {split!r}")
    if limit is not None and limit < 1:
        raise UserError(f"limit must be at least 1, not {limit}")
    text = str(source)
    if text.startswith("hf:"):
        examples = _load_hub_dataset(text[3:], text_column)
    else:
        path = Path(source).expanduser()
        if not path.exists():
            raise UserError(f"data file not found: {path}")
        if path.is_dir():
            examples = _load_dataset_dir(path, text_column)
        else:
            suffix = path.suffix.lower()
            loaders = {
                ".jsonl": _load_jsonl,
                ".json": _load_jsonl,
                ".csv": lambda p: _load_csv(p, text_column),
                ".txt": lambda p: _load_text(p, split),
                ".npy": lambda p: _load_npy(p, npy_tokenizer, limit),
            }
            if suffix not in loaders:
                raise UserError(
                    f"unsupported data file {path.name}: use .jsonl, .csv, .txt, .npy, "
                    "a saved datasets directory, or hf:NAME"
                )
            examples = loaders[suffix](path)
    if not examples:
        raise UserError(f"no examples found in {source}")
    return examples[:limit] if limit else examples


def read_examples(source: str | Path, options, limit: int | None = -1) -> list[Example]:
    """``source`` read with a config's reading options (``split``, ``text_column``,
    ``npy_tokenizer`` and, unless ``limit`` is given, ``limit``)."""
    return load_examples(source, split=options.split, text_column=options.text_column,
                         npy_tokenizer=options.npy_tokenizer, limit=options.limit if limit == -1 else limit)


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise UserError(f"{path} is not UTF-8 text (byte {err.start})") from None
    except OSError as err:
        raise UserError(f"cannot read {path}: {err.strerror}") from None


def _parse_spans(raw: object, where: str, text: str) -> list[Span]:
    spans: list[Span] = []
    if raw is None:
        return spans
    if not isinstance(raw, list):
        raise UserError(f"{where}: 'spans' must be a list of [start, end] pairs")
    for number, item in enumerate(raw, start=1):
        if isinstance(item, dict):
            item = [item.get("start"), item.get("end")]
        pair = isinstance(item, (list, tuple)) and len(item) == 2 and all(type(v) is int for v in item)
        if not pair or not 0 <= item[0] < item[1] <= len(text):
            # Echo the span only when it is two integers: anything else may be forget-set text.
            shown = f"{list(item)} " if pair else ""
            raise UserError(
                f"{where}: bad span #{number} {shown}(need [start, end] integers with "
                f"0 <= start < end <= {len(text)}, the text's length)"
            )
        spans.append((item[0], item[1]))
    return spans


def _load_jsonl(path: Path) -> list[Example]:
    examples = []
    for number, line in enumerate(_read_text(path).splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{path.name} line {number}"
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise UserError(f"{where}: invalid JSON ({err.msg})") from None
        if not isinstance(record, dict):
            raise UserError(f"{where}: expected a JSON object")
        prefix_chars = None
        if "text" in record:
            text = record["text"]
        elif "prefix" in record and "suffix" in record:
            text = f"{record['prefix']}{record['suffix']}"
            prefix_chars = len(str(record["prefix"]))
        else:
            raise UserError(f"{where}: needs a 'text' field, or 'prefix' and 'suffix'")
        if not isinstance(text, str):
            raise UserError(f"{where}: text must be a string")
        ident = str(record.get("id", record.get("doc_id", len(examples))))
        spans = _parse_spans(record.get("spans"), where, text)
        examples.append(Example(text=text, id=ident, spans=spans, prefix_chars=prefix_chars))
    return examples


def _load_csv(path: Path, text_column: str) -> list[Example]:
    csv.field_size_limit(sys.maxsize)  # Pile documents exceed the 128 KiB default
    rows = list(csv.DictReader(_read_text(path).splitlines(keepends=True)))
    if not rows or text_column not in rows[0]:
        columns = ", ".join(_column_label(c, i) for i, c in enumerate(rows[0].keys() if rows else []) if c) or "none"
        raise UserError(f"{path.name} has no {text_column!r} column (columns: {columns}); pass --text-column")
    examples = []
    for index, row in enumerate(rows):
        ident = row.get("doc_id") or row.get("id") or str(index)
        examples.append(Example(text=row[text_column] or "", id=str(ident)))
    return examples


def _column_label(name: str, index: int) -> str:
    """A CSV header name as it may appear in a message. A file without a header has data as
    its first row (possibly a secret), so only short identifier-like names are shown."""
    if re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]{0,23}", name):
        return repr(name)
    return f"<column {index + 1}>"


def _load_text(path: Path, split: str) -> list[Example]:
    content = _read_text(path)
    if split == "paragraphs":
        parts = [p.strip() for p in content.replace("\r\n", "\n").split("\n\n")]
    else:
        parts = [line.strip() for line in content.splitlines()]
    return [Example(text=p, id=str(i)) for i, p in enumerate(q for q in parts if q)]


def _load_npy(path: Path, tokenizer_path: str | Path | None, limit: int | None) -> list[Example]:
    import numpy as np

    from .models import load_tokenizer

    try:
        array = np.load(path, allow_pickle=False)
    except (ValueError, OSError) as err:
        raise UserError(f"cannot read token array {path.name}: {err}") from None
    if array.ndim == 1:
        array = array[None, :]
    if array.ndim != 2 or array.dtype.kind not in "iu":
        raise UserError(f"{path.name}: expected a 2-D integer token array, got {array.dtype} {array.shape}")
    if tokenizer_path is None:
        tokenizer_path = data_path("tokenizers/gpt2")
        if tokenizer_path is None:
            raise UserError(
                f"{path.name} holds token ids: pass the tokenizer that made them (--npy-tokenizer)"
            )
    tokenizer = load_tokenizer(str(tokenizer_path))
    array = array[:limit] if limit else array  # decode only what is used
    texts = tokenizer.batch_decode(array.tolist(), clean_up_tokenization_spaces=True)
    return [Example(text=t, id=str(i)) for i, t in enumerate(texts)]


def _records_to_examples(records, text_column: str, name: str) -> list[Example]:
    if text_column not in records.column_names:
        raise UserError(f"dataset {name} has no {text_column!r} column (columns: {', '.join(records.column_names)})")
    return [Example(text=str(t), id=str(i)) for i, t in enumerate(records[text_column])]


def _load_dataset_dir(path: Path, text_column: str) -> list[Example]:
    import datasets

    # load_dataset converts data files into Arrow files under its cache, which would leave a copy
    # of the forget set on disk after the run: build them in a temporary folder removed at once
    # (the records are kept in memory, so no open mapping holds the files).
    with tempfile.TemporaryDirectory(prefix="unmemorize-data-") as cache:
        try:
            if (path / "dataset_info.json").exists() or (path / "state.json").exists():
                records = datasets.load_from_disk(str(path))
            else:
                records = datasets.load_dataset(str(path), split="train", cache_dir=cache, keep_in_memory=True)
        except Exception as err:  # datasets raises many types; their messages may quote the data
            detail = f": {_first_line(err)}" if isinstance(err, FileNotFoundError) else ""
            raise UserError(f"cannot load dataset directory {path} ({type(err).__name__}){detail}") from None
        if isinstance(records, datasets.DatasetDict):
            records = records["train"] if "train" in records else next(iter(records.values()))
        return _records_to_examples(records, text_column, str(path))


def _first_line(error: BaseException) -> str:
    return next((line.strip() for line in str(error).splitlines() if line.strip()), "")[:200]


def _load_hub_dataset(spec: str, text_column: str) -> list[Example]:
    import datasets

    name, _, split = spec.partition(":")
    try:
        records = datasets.load_dataset(name, split=split or "train")
    except Exception as err:  # the hub raises many types; all mean "not available here"
        raise UserError(f"dataset {name!r} could not be loaded from the hub ({type(err).__name__}); pass a local file") from None
    return _records_to_examples(records, text_column, name)


def tokenize_examples(
    examples: list[Example], tokenizer, max_length: int = 200
) -> list[TokenizedExample]:
    """Tokenize with the model's tokenizer (specials included, e.g. BOS), truncated to max_length.
    Every sequence needs at least 2 tokens: one to condition on, one to predict."""
    if max_length < 2:
        raise UserError(f"--max-length must be at least 2, not {max_length}")
    if not getattr(tokenizer, "is_fast", False):
        raise UserError("this tokenizer has no fast implementation; character offsets are needed")
    encoded = tokenizer(
        [e.text for e in examples],
        truncation=True,
        max_length=max_length,
        return_offsets_mapping=True,
        add_special_tokens=True,
    )
    out = []
    for index, (example, ids, offsets) in enumerate(
        zip(examples, encoded["input_ids"], encoded["offset_mapping"])
    ):
        if len(ids) < 2:
            raise UserError(
                f"sample {index} (id {example.id}) is shorter than 2 tokens; remove it or add text"
            )
        out.append(TokenizedExample(example, list(ids), [tuple(o) for o in offsets]))
    return out


def collate(
    items: list[TokenizedExample], weights: list[list[float]], pad_token_id: int
) -> dict[str, torch.Tensor]:
    """Right-padded batch. ``loss_weights[b, t]`` weighs the prediction of token t (made from
    position t-1); it is 0 at position 0 and on padding, so padding never enters a loss."""
    length = max(len(i.input_ids) for i in items)
    batch = len(items)
    input_ids = torch.full((batch, length), pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros((batch, length), dtype=torch.long)
    loss_weights = torch.zeros((batch, length), dtype=torch.float32)
    for row, (item, w) in enumerate(zip(items, weights)):
        n = len(item.input_ids)
        if len(w) != n:
            raise ValueError(f"weights of length {len(w)} for a sequence of {n} tokens")
        input_ids[row, :n] = torch.tensor(item.input_ids)
        attention_mask[row, :n] = 1
        loss_weights[row, :n] = torch.tensor(w, dtype=torch.float32)
        loss_weights[row, 0] = 0.0
    return {"input_ids": input_ids, "attention_mask": attention_mask, "loss_weights": loss_weights}
