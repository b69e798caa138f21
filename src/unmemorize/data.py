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
from collections.abc import Iterator
from dataclasses import dataclass, field
from itertools import islice
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
    _check_reading(split, limit)
    text = str(source)
    if text.startswith("hf:"):
        examples = _load_hub_dataset(text[3:], text_column)
    elif _existing(source).is_dir():
        examples = _load_dataset_dir(_existing(source), text_column)
    else:
        examples = list(islice(iter_examples(source, split=split, text_column=text_column,
                                             npy_tokenizer=npy_tokenizer), limit))
    if not examples:
        raise UserError(f"no examples found in {source}")
    return examples[:limit] if limit else examples


def iter_examples(
    source: str | Path,
    *,
    split: str = "lines",
    text_column: str = "text",
    npy_tokenizer: str | Path | None = None,
) -> Iterator[Example]:
    """The examples of :func:`load_examples`, one at a time: a file is read a line (a chunk of
    token rows) at a time and a datasets directory or hub dataset is streamed, so memory stays
    bounded by the longest example whatever the source's size."""
    _check_reading(split, None)
    text = str(source)
    if text.startswith("hf:"):
        yield from _stream_hub_dataset(text[3:], text_column)
        return
    path = _existing(source)
    if path.is_dir():
        yield from _stream_dataset_dir(path, text_column)
        return
    suffix = path.suffix.lower()
    readers = {
        ".jsonl": _load_jsonl,
        ".json": _load_jsonl,
        ".csv": lambda p: _load_csv(p, text_column),
        ".txt": lambda p: _load_text(p, split),
        ".npy": lambda p: _load_npy(p, npy_tokenizer),
    }
    if suffix not in readers:
        raise UserError(
            f"unsupported data file {path.name}: use .jsonl, .csv, .txt, .npy, "
            "a saved datasets directory, or hf:NAME"
        )
    yield from readers[suffix](path)


def _check_reading(split: str, limit: int | None) -> None:
    if split not in ("lines", "paragraphs"):
        raise UserError(f"--split must be 'lines' or 'paragraphs', not {split!r}")
    if limit is not None and limit < 1:
        raise UserError(f"limit must be at least 1, not {limit}")


def _existing(source: str | Path) -> Path:
    path = Path(source).expanduser()
    if not path.exists():
        raise UserError(f"data file not found: {path}")
    return path


def read_examples(source: str | Path, options, limit: int | None = -1) -> list[Example]:
    """``source`` read with a config's reading options (``split``, ``text_column``,
    ``npy_tokenizer`` and, unless ``limit`` is given, ``limit``)."""
    return load_examples(source, split=options.split, text_column=options.text_column,
                         npy_tokenizer=options.npy_tokenizer, limit=options.limit if limit == -1 else limit)


def _text_lines(path: Path) -> Iterator[str]:
    """The file's text a line at a time (each with its line end), decoded as UTF-8."""
    consumed = 0
    try:
        with path.open("rb") as handle:
            for raw in handle:
                try:
                    yield raw.decode("utf-8")
                except UnicodeDecodeError as err:
                    raise UserError(f"{path} is not UTF-8 text (byte {consumed + err.start})") from None
                consumed += len(raw)
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


def _load_jsonl(path: Path) -> Iterator[Example]:
    count = 0
    for number, line in enumerate(_lines(path), start=1):
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
        ident = str(record.get("id", record.get("doc_id", count)))
        spans = _parse_spans(record.get("spans"), where, text)
        count += 1
        yield Example(text=text, id=ident, spans=spans, prefix_chars=prefix_chars)


def _lines(path: Path) -> Iterator[str]:
    """The lines of ``str.splitlines()`` on the whole text, without holding it."""
    for chunk in _text_lines(path):
        yield from chunk.splitlines()


def _load_csv(path: Path, text_column: str) -> Iterator[Example]:
    csv.field_size_limit(sys.maxsize)  # Pile documents exceed the 128 KiB default
    reader = csv.DictReader(_text_lines(path))
    columns = reader.fieldnames or []
    if text_column not in columns:
        shown = ", ".join(_column_label(c, i) for i, c in enumerate(columns) if c) or "none"
        raise UserError(f"{path.name} has no {text_column!r} column (columns: {shown}); pass --text-column")
    for index, row in enumerate(reader):
        ident = row.get("doc_id") or row.get("id") or str(index)
        yield Example(text=row[text_column] or "", id=str(ident))


def _column_label(name: str, index: int) -> str:
    """A CSV header name as it may appear in a message. A file without a header has data as
    its first row (possibly a secret), so only short identifier-like names are shown."""
    if re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]{0,23}", name):
        return repr(name)
    return f"<column {index + 1}>"


def _load_text(path: Path, split: str) -> Iterator[Example]:
    parts = _paragraphs(path) if split == "paragraphs" else (line.strip() for line in _lines(path))
    for index, part in enumerate(p for p in parts if p):
        yield Example(text=part, id=str(index))


def _paragraphs(path: Path) -> Iterator[str]:
    """The parts of the text (CRLF read as LF) between blank lines, stripped."""
    pending = ""
    for chunk in _text_lines(path):
        pending += chunk.replace("\r\n", "\n")
        while "\n\n" in pending:
            part, pending = pending.split("\n\n", 1)
            yield part.strip()
    yield pending.strip()


# Token rows decoded at a time from a .npy file (memory-mapped, never read whole).
_NPY_ROWS = 256


def _load_npy(path: Path, tokenizer_path: str | Path | None) -> Iterator[Example]:
    import numpy as np

    from .models import load_tokenizer

    try:
        array = np.load(path, allow_pickle=False, mmap_mode="r")
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
    for start in range(0, len(array), _NPY_ROWS):
        rows = np.asarray(array[start : start + _NPY_ROWS]).tolist()
        texts = tokenizer.batch_decode(rows, clean_up_tokenization_spaces=True)
        for offset, text in enumerate(texts):
            yield Example(text=text, id=str(start + offset))


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


def _stream_dataset_dir(path: Path, text_column: str) -> Iterator[Example]:
    import datasets

    try:
        if (path / "dataset_info.json").exists() or (path / "state.json").exists():
            records = datasets.load_from_disk(str(path))  # memory-mapped Arrow files
            if isinstance(records, datasets.DatasetDict):
                records = records["train"] if "train" in records else next(iter(records.values()))
        else:  # streamed: no Arrow copy of the data is written to a cache
            records = datasets.load_dataset(str(path), split="train", streaming=True)
    except Exception as err:  # datasets raises many types; their messages may quote the data
        detail = f": {_first_line(err)}" if isinstance(err, FileNotFoundError) else ""
        raise UserError(f"cannot load dataset directory {path} ({type(err).__name__}){detail}") from None
    yield from _stream_records(records, text_column, str(path))


def _stream_records(records, text_column: str, name: str) -> Iterator[Example]:
    columns = records.column_names
    if columns is not None and text_column not in columns:
        raise UserError(f"dataset {name} has no {text_column!r} column (columns: {', '.join(columns)})")
    for index, record in enumerate(records):
        if text_column not in record:
            raise UserError(f"dataset {name} has no {text_column!r} column")
        yield Example(text=str(record[text_column]), id=str(index))


def _stream_hub_dataset(spec: str, text_column: str) -> Iterator[Example]:
    import datasets

    name, _, split = spec.partition(":")
    try:
        records = datasets.load_dataset(name, split=split or "train", streaming=True)
    except Exception as err:  # the hub raises many types; all mean "not available here"
        raise UserError(f"dataset {name!r} could not be loaded from the hub ({type(err).__name__}); pass a local file") from None
    yield from _stream_records(records, text_column, name)


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
    items: list[TokenizedExample], weights: list[list[float]], pad_token_id: int,
    lowered: list[list[list[int]]] | None = None,
) -> dict[str, torch.Tensor]:
    """Right-padded batch. ``loss_weights[b, t]`` weighs the prediction of token t (made from
    position t-1); it is 0 at position 0 and on padding, so padding never enters a loss.
    ``lowered`` (per item, per position: the tokens deliberate imagination lowers there) adds
    ``lowered_ids`` [B, T, K], each position's set padded with its own token (lowering a token
    twice is lowering it once)."""
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
    out = {"input_ids": input_ids, "attention_mask": attention_mask, "loss_weights": loss_weights}
    if lowered is not None:
        width = max(len(tokens) for sets in lowered for tokens in sets)
        out["lowered_ids"] = input_ids.unsqueeze(-1).repeat(1, 1, width)
        for row, sets in enumerate(lowered):
            for position, tokens in enumerate(sets):
                out["lowered_ids"][row, position, : len(tokens)] = torch.tensor(tokens)
    return out


# --- windows of long documents (scan) ------------------------------------------------------


@dataclass
class Window:
    """A piece of a document as the model reads it: the tokenizer's leading specials (BOS) and
    up to ``window`` minus their number of the document's tokens. ``char_start``/``char_end``
    are character offsets into the document's text, so ``document.text[char_start:char_end]``
    is the window's text."""

    document: str  # the document's id
    index: int  # the window's number within its document
    input_ids: list[int]
    offsets: list[Span]  # character span of each token in the window's text; (0, 0) for specials
    char_start: int
    char_end: int
    text: str

    @property
    def id(self) -> str:
        return f"{self.document}#{self.index}"


def leading_specials(tokenizer) -> list[int]:
    """The ids the tokenizer puts before any text (BOS), found by encoding with and without them."""
    probe = "a"
    with_specials = tokenizer(probe, add_special_tokens=True)["input_ids"]
    plain = tokenizer(probe, add_special_tokens=False)["input_ids"]
    for start in range(len(with_specials) - len(plain) + 1):
        if with_specials[start : start + len(plain)] == plain:
            return list(with_specials[:start])
    return []


def document_windows(example: Example, tokenizer, window: int, stride: int | None = None,
                     specials: list[int] | None = None) -> list[Window]:
    """``example`` cut into windows of ``window`` tokens (``specials`` first, by default the
    tokenizer's :func:`leading_specials`), starting every ``stride`` text tokens (default: the
    window's text tokens, no overlap), and a last full window ending at the document's end when
    the strides do not reach it; a document shorter than a window is one window. A window has
    at least 2 tokens (a document of one token and no BOS gives none)."""
    if not getattr(tokenizer, "is_fast", False):
        raise UserError("this tokenizer has no fast implementation; character offsets are needed")
    specials = leading_specials(tokenizer) if specials is None else specials
    size = window - len(specials)
    if size < 1:
        raise UserError(f"--window {window} leaves no room for text after the tokenizer's {len(specials)} leading token(s)")
    stride = stride or size
    encoded = tokenizer(example.text, add_special_tokens=False, return_offsets_mapping=True)
    ids, offsets = encoded["input_ids"], [tuple(o) for o in encoded["offset_mapping"]]
    starts = list(range(0, max(len(ids) - size, 0) + 1, stride))
    if starts[-1] + size < len(ids):
        starts.append(len(ids) - size)  # a full window ending at the document's end
    windows = []
    for number, start in enumerate(starts):
        end = min(start + size, len(ids))
        if len(specials) + end - start >= 2:
            first, last = offsets[start][0], offsets[end - 1][1]
            windows.append(Window(example.id, number, specials + ids[start:end],
                                  [(0, 0)] * len(specials) + [(a - first, b - first) for a, b in offsets[start:end]],
                                  first, last, example.text[first:last]))
    return windows
