"""Privacy metrics: verbatim extraction, membership inference and the "forgotten" reference level.

Inputs follow :mod:`unmemorize.metrics.memorization`: a sample is a list of token ids x of length
T (already tokenized and truncated, BOS included when the tokenizer adds one); targets are the
positions t = 1..T-1, token x_t predicted from the prefix x_<t.

* :func:`extractable` — the extraction attack of Carlini et al. (2021) as scored by the
  Training Data Extraction Challenge: greedy continuation of a fixed-length prefix compared with
  the true suffix.
* :func:`membership_scores`, :func:`auc`, :func:`mia_report` — loss-based membership inference
  (Yeom et al. 2018), the zlib ratio of Carlini et al. (2021), Min-K% Prob (Shi et al. 2024) and
  Min-K%++ (Zhang et al. 2024), scored by ROC AUC of forget-set vs unseen reference text.
* :func:`undial_extraction_likelihood` — EL_n as the UNDIAL paper's code samples it.
* :func:`reference_thresholds` — MA and EL_n on unseen text: the level at which Jang et al.
  (2022) call a forget set forgotten.

Decoding never stops at end-of-text: it is an ordinary token, as in memorization.py.
"""

from __future__ import annotations

import hashlib
import math
import zlib
from collections.abc import Sequence

import torch

from unmemorize.errors import UserError
from unmemorize.metrics.decoding import (
    ModelParts,
    PrefixState,
    ProgressCallback,
    at_least_float32,
    check_positive,
    choose_argmax,
    decode,
    decode_from_states,
    evaluating,
    model_device,
    nucleus_sample,
    prefix_states,
    split_model,
    token_counter,
)
from unmemorize.metrics.memorization import (
    MemorizationResult,
    TeacherForced,
    _accuracy,
    _check_ns,
    _check_sequences,
    _mean,
    el_requests,
    el_values,
    first_mismatches,
    greedy_continuations,
    requested_tokens,
    teacher_forced_pass,
)

MIA_METRICS = ("loss", "zlib", "min_k", "min_k_plus_plus")

# A standard deviation below this is treated as this, so a one-hot or uniform next-token
# distribution gives a finite Min-K%++ term instead of 0/0.
_MIN_SIGMA = 1e-12


# --- extraction ---------------------------------------------------------------------------


def extractable(
    model: torch.nn.Module,
    sequences: Sequence[Sequence[int]],
    *,
    prefix_tokens: int = 50,
    suffix_tokens: int = 50,
    text_start: int = 0,
    batch_size: int = 32,
    pad_token_id: int = 0,
    progress: ProgressCallback | None = None,
) -> dict:
    """Greedy verbatim extraction of each sample's suffix from its prefix: k-extractability
    (Carlini et al. 2021, "Extracting Training Data from Large Language Models"; Carlini et al.
    2023, "Quantifying Memorization Across Neural Language Models") with a fixed k-token prefix
    and m-token suffix, 50 and 50 by default as in the Training Data Extraction Challenge
    (google-research/lm-extraction-benchmark). The challenge's prompt is tokens 100-149 of its
    200-token samples with the first 100 withheld; here the prompt starts at the text's start.

    Positions are counted in text tokens: the first ``text_start`` tokens (BOS) are context the
    tokenizer adds and count toward neither part. The prompt is x[:text_start + k]; the true
    suffix is s = the next m tokens; g is the greedy continuation of the prompt, m tokens long.
    Per sample:

    * ``exact``: g == s (every one of the L suffix tokens reproduced);
    * ``longest_prefix_match``: the largest k with g[:k] == s[:k];
    * ``longest_run``: the largest k such that g[i:i+k] == s[i:i+k] for some i, i.e. the longest
      run of consecutive positions where the generated token equals the true token at the same
      position (a shifted copy does not count).

    Samples with fewer than k + m text tokens are skipped rather than scored on a shorter
    prompt or suffix (a different, easier or harder, attack); their input indices are listed in
    ``skipped``, so the denominator is always said.

    Returns ``{"fraction_extractable", "samples", "skipped", "prefix_tokens", "suffix_tokens"}``;
    ``samples`` holds one dict per scored sample, in input order, with its input ``index``.
    ``fraction_extractable`` is the share of scored samples that are ``exact`` (NaN when none
    was scored). ``progress(done, total)`` counts generated tokens.
    """
    check_positive("prefix_tokens", prefix_tokens)
    check_positive("suffix_tokens", suffix_tokens)
    check_positive("batch_size", batch_size)
    sequences = [[int(token) for token in seq] for seq in sequences]
    prompt_end = text_start + prefix_tokens
    end = prompt_end + suffix_tokens
    scored = [i for i, seq in enumerate(sequences) if len(seq) >= end]
    skipped = [i for i, seq in enumerate(sequences) if len(seq) < end]
    suffixes = {i: sequences[i][prompt_end:end] for i in scored}

    on_tokens = token_counter(progress, sum(len(suffix) for suffix in suffixes.values()))
    # Equal suffix lengths share a batch, so no row generates tokens it throws away.
    order = sorted(scored, key=lambda i: len(suffixes[i]), reverse=True)
    generated: dict[int, list[int]] = {}
    with evaluating(model):
        for start in range(0, len(order), batch_size):
            batch = order[start : start + batch_size]
            continuations = decode(
                model,
                [sequences[i][:prompt_end] for i in batch],
                [len(suffixes[i]) for i in batch],
                choose_argmax,
                pad_token_id=pad_token_id,
                on_tokens=on_tokens,
            )
            generated.update(zip(batch, continuations))

    return _extraction_result(sequences, generated, suffixes, skipped, prefix_tokens, suffix_tokens)


def _extraction_result(
    sequences: list[list[int]],
    generated: dict[int, list[int]],
    suffixes: dict[int, list[int]],
    skipped: list[int],
    prefix_tokens: int,
    suffix_tokens: int,
) -> dict:
    """The :func:`extractable` report from each scored sample's continuation."""
    samples = []
    for i in sorted(suffixes):
        matches = [g == s for g, s in zip(generated[i], suffixes[i])]
        samples.append(
            {
                "index": i,
                "exact": all(matches),
                "longest_prefix_match": _leading_true(matches),
                "longest_run": _longest_true_run(matches),
                "suffix_length": len(suffixes[i]),
            }
        )
    exact_count = sum(sample["exact"] for sample in samples)
    return {
        "fraction_extractable": exact_count / len(samples) if samples else math.nan,
        "samples": samples,
        "skipped": skipped,
        "prefix_tokens": prefix_tokens,
        "suffix_tokens": suffix_tokens,
    }


class ExtractionRequests:
    """The extraction attack from a teacher-forced pass (see :func:`extractable`): where the
    model predicts the true suffix its greedy continuation is that suffix, so only the
    continuation from the first mispredicted position m >= prefix_tokens is generated (and
    shared with EL's continuation of the same m)."""

    def __init__(self, sequences, first_mismatch, prefix_tokens, suffix_tokens, requests, text_start=0):
        check_positive("prefix_tokens", prefix_tokens)
        check_positive("suffix_tokens", suffix_tokens)
        self.sequences, self.prefix_tokens, self.suffix_tokens = sequences, prefix_tokens, suffix_tokens
        self.start = text_start + prefix_tokens
        end = self.start + suffix_tokens
        self.skipped = [i for i, seq in enumerate(sequences) if len(seq) < end]
        self.suffixes = {i: seq[self.start : end] for i, seq in enumerate(sequences) if len(seq) >= end}
        self.mismatch = {}
        for i, suffix in self.suffixes.items():
            m = first_mismatch[i][self.start]
            if m is not None and m < end:
                self.mismatch[i] = m
                requests[(i, m)] = max(requests.get((i, m), 0), end - m)

    def result(self, continuations: dict[tuple[int, int], list[int]]) -> dict:
        generated = {}
        for i, suffix in self.suffixes.items():
            m = self.mismatch.get(i)
            if m is None:
                generated[i] = list(suffix)
            else:
                end = self.start + len(suffix)
                generated[i] = self.sequences[i][self.start : m] + continuations[(i, m)][: end - m]
        return _extraction_result(
            self.sequences, generated, self.suffixes, self.skipped, self.prefix_tokens, self.suffix_tokens
        )


def _leading_true(flags: list[bool]) -> int:
    for position, flag in enumerate(flags):
        if not flag:
            return position
    return len(flags)


def _longest_true_run(flags: list[bool]) -> int:
    longest = current = 0
    for flag in flags:
        current = current + 1 if flag else 0
        longest = max(longest, current)
    return longest


# --- membership inference -----------------------------------------------------------------


def membership_scores(
    model: torch.nn.Module,
    sequences: Sequence[Sequence[int]],
    texts: Sequence[str],
    *,
    k_percent: float = 20.0,
    batch_size: int = 8,
    pad_token_id: int = 0,
) -> dict[str, list[float]]:
    """Per-sample membership-inference scores, each oriented so that higher = more likely a
    training member. With l_t = log p(x_t | x_<t) over the targets t = 1..T-1:

    * ``loss`` = mean_t l_t (minus the mean NLL; Yeom et al. 2018).
    * ``zlib`` = -(mean NLL) / zlib_bytes, where zlib_bytes = len(zlib.compress(text.encode()))
      of the sample's text: the log-perplexity to zlib-entropy ratio of Carlini et al. (2021),
      negated. Carlini et al. rank by zlib / log-perplexity; for positive values the negated
      ratio ranks identically and stays finite when the NLL reaches 0.
    * ``min_k`` = mean of the k lowest l_t, k = max(1, floor((T-1) * k_percent / 100))
      (Min-K% Prob, Shi et al. 2024).
    * ``min_k_plus_plus`` = mean of the k lowest z_t = (l_t - mu_t) / sigma_t, where, with p the
      model's next-token distribution at that position over the full vocabulary,
      mu_t = E_{z~p}[log p(z)] and sigma_t^2 = E_{z~p}[(log p(z) - mu_t)^2] (Min-K%++, Zhang et
      al. 2024; the variance is computed centred, which equals E[(log p)^2] - mu^2 but does not
      cancel catastrophically in float32).

    One teacher-forced pass per batch of ``batch_size`` samples (right padding, so padding never
    reaches a real token; see :func:`unmemorize.metrics.memorization.teacher_forced_pass`). The
    full-vocabulary quantities are reduced per position right away, a slice of positions at a
    time, so no batch x T x vocab log-probabilities are kept.
    """
    sequences = _check_sequences(sequences)
    texts = _check_texts(texts, sequences, k_percent)
    check_positive("batch_size", batch_size)

    with evaluating(model):
        prepared = teacher_forced_pass(
            model, sequences, batch_size=batch_size, pad_token_id=pad_token_id,
            statistics=_position_statistics,
        )
    return membership_from(prepared, texts, k_percent)


def membership_from(prepared: TeacherForced, texts: Sequence[str], k_percent: float) -> dict[str, list[float]]:
    """The scores of :func:`membership_scores` from a teacher-forced pass that collected
    :func:`_position_statistics`."""
    scores: dict[str, list[float]] = {name: [] for name in MIA_METRICS}
    for (token_log_probs, standardized), text in zip(prepared.statistics, texts):
        for name, value in scores_from_statistics(token_log_probs, standardized, text, k_percent).items():
            scores[name].append(value)
    return scores


def scores_from_statistics(
    token_log_probs: torch.Tensor, standardized: torch.Tensor, text: str, k_percent: float
) -> dict[str, float]:
    """One sample's membership scores (see :func:`membership_scores`) from its l_t and z_t."""
    mean_log_prob = token_log_probs.mean().item()
    k = max(1, math.floor(len(token_log_probs) * k_percent / 100))
    return {
        "loss": mean_log_prob,
        # The NLL is >= 0 and the compressed length >= 8 bytes, so the ratio is finite.
        "zlib": mean_log_prob / len(zlib.compress(text.encode("utf-8"))),
        "min_k": token_log_probs.sort().values[:k].mean().item(),
        "min_k_plus_plus": standardized.sort().values[:k].mean().item(),
    }


def _check_texts(texts: Sequence[str], sequences: list[list[int]], k_percent: float) -> list[str]:
    texts = list(texts)
    if len(texts) != len(sequences):
        raise UserError(
            f"membership scores need one text per sequence: got {len(texts)} texts for "
            f"{len(sequences)} sequences"
        )
    _check_percent(k_percent)
    return texts


def _check_percent(k_percent: float) -> None:
    if isinstance(k_percent, bool) or not isinstance(k_percent, (int, float)):
        raise UserError(f"k_percent must be a number in (0, 100], got {k_percent!r}")
    if not 0 < k_percent <= 100:
        raise UserError(f"k_percent must be in (0, 100], got {k_percent!r}")


def _position_statistics(
    logits: torch.Tensor, targets: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """log p(target) and its Min-K%++ standardization for a few positions ([P, V] logits).

    With s = logits - max (so log p = s - log Z, Z = sum exp s): log p(x) - mu = s(x) - E_p[s]
    and the variance of log p is that of s, so log Z is needed for log p(x) only. Written as a
    few in-place passes and two matrix-vector products over the vocabulary because on a 262k
    vocabulary these reductions cost about as much as the forward pass (float32 relative error
    of the standardized score ~1e-6).
    """
    logits = at_least_float32(logits)  # half-precision softmax sums lose too many digits
    shifted = logits - logits.amax(dim=-1, keepdim=True)  # a copy: the logits stay untouched
    target_shifted = shifted.gather(-1, targets[:, None]).squeeze(-1)
    # A -inf logit has probability exactly 0; clamping keeps 0 * -inf from becoming NaN and
    # changes nothing else (exp(-1e4) is 0 in float64 too).
    shifted.clamp_(min=-1e4)
    weights = shifted.exp()
    normalizer = weights.sum(dim=-1)
    mean_shifted = _weighted_sums(weights, shifted) / normalizer
    centred_squares = shifted.sub_(mean_shifted[:, None]).square_()
    variance = _weighted_sums(weights, centred_squares) / normalizer
    sigma = variance.sqrt().clamp(min=_MIN_SIGMA)
    target_log_probs = target_shifted - normalizer.log()
    standardized = (target_shifted - mean_shifted) / sigma
    return target_log_probs.double().cpu(), standardized.double().cpu()


def _weighted_sums(weights: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """Row-wise dot products of two [P, V] tensors. Not bmm/einsum: on CPU their float32
    accumulation over 262k terms is off by ~4e-4 relative, vecdot's by ~1e-7."""
    return torch.linalg.vecdot(weights, values)


def auc(member_scores: Sequence[float], nonmember_scores: Sequence[float]) -> float:
    """ROC AUC of separating members from non-members by score (higher = member):
    P(member score > non-member score) + 0.5 * P(tie), over all member/non-member pairs.

    Computed as the Mann-Whitney U statistic from average ranks (ties share the mean of their
    ranks), in O(n log n). 1.0: every member outscores every non-member; 0.5: no separation.
    """
    members = [float(score) for score in member_scores]
    nonmembers = [float(score) for score in nonmember_scores]
    if not members or not nonmembers:
        raise UserError(
            f"AUC needs at least one member and one non-member score, got {len(members)} and "
            f"{len(nonmembers)}"
        )
    if any(math.isnan(score) for score in members + nonmembers):
        raise ValueError("AUC is undefined for NaN scores")
    labelled = sorted(
        [(score, True) for score in members] + [(score, False) for score in nonmembers]
    )
    member_rank_sum = 0.0
    start = 0
    while start < len(labelled):
        end = start
        while end < len(labelled) and labelled[end][0] == labelled[start][0]:
            end += 1
        # Ranks start + 1 .. end (1-based) tie; each gets their mean.
        average_rank = (start + 1 + end) / 2
        tied_members = sum(1 for _, is_member in labelled[start:end] if is_member)
        member_rank_sum += average_rank * tied_members
        start = end
    n_members, n_nonmembers = len(members), len(nonmembers)
    u_statistic = member_rank_sum - n_members * (n_members + 1) / 2
    return u_statistic / (n_members * n_nonmembers)


def mia_report(
    model: torch.nn.Module,
    forget_sequences: Sequence[Sequence[int]],
    forget_texts: Sequence[str],
    reference_sequences: Sequence[Sequence[int]],
    reference_texts: Sequence[str],
    **kw,
) -> dict[str, dict[str, float]]:
    """Membership inference of the forget set (members) against unseen reference text.

    For each score of :func:`membership_scores` (``kw`` goes to it):
    ``{"auc": ..., "forget_mean": ..., "reference_mean": ...}``. An AUC near 0.5 means the
    score no longer tells the forget set from text the model never saw.
    """
    forget = membership_scores(model, forget_sequences, forget_texts, **kw)
    reference = membership_scores(model, reference_sequences, reference_texts, **kw)
    return mia_summary(forget, reference)


def mia_summary(
    forget: dict[str, list[float]], reference: dict[str, list[float]]
) -> dict[str, dict[str, float]]:
    """:func:`mia_report` from membership scores already computed (e.g. by
    :func:`unmemorize.metrics.memorization.memorization` with ``texts``)."""
    return {
        name: {
            "auc": auc(forget[name], reference[name]),
            "forget_mean": _mean(forget[name]),
            "reference_mean": _mean(reference[name]),
        }
        for name in MIA_METRICS
    }


# --- extraction likelihood as the UNDIAL authors' code samples it ---------------------------


def undial_overlap(generated: Sequence[int], target: Sequence[int], n: int) -> float:
    """|set(n-grams of generated) ∩ set(n-grams of target)| / |set(n-grams of generated)|: the
    n-gram *precision* of a generation, distinct n-grams only, 0.0 when the generation has no
    n-gram or the target is empty (dong-river/LLM_unlearning, utils/eval_utils.py,
    ``_get_overlap``). Unlike Jang et al.'s EL (memorization.ngram_overlap: generated n-grams
    counted against the true suffix's n-gram count) a perfect copy that runs past the end of a
    short target scores below 1."""
    _check_ns((n,))
    generated_ngrams = {tuple(generated[i : i + n]) for i in range(len(generated) - n + 1)}
    if not generated_ngrams or not target:
        return 0.0
    target_ngrams = {tuple(target[i : i + n]) for i in range(len(target) - n + 1)}
    return len(generated_ngrams & target_ngrams) / len(generated_ngrams)


def undial_extraction_likelihood(
    model: torch.nn.Module,
    sequences: Sequence[Sequence[int]],
    *,
    n: int = 10,
    text_start: int = 0,
    seed: int = 0,
    batch_size: int = 128,
    pad_token_id: int = 0,
    stop_token_ids: Sequence[int] = (),
    recode=None,
    progress: ProgressCallback | None = None,
    **sampling,
) -> list[list[float]]:
    """EL_n as the UNDIAL paper's code computes it (dong-river/LLM_unlearning: main.py, the
    memorization loop; utils/data_utils.py, ``ExtractChallengeDataset(split="test")``;
    utils/eval_utils.py, ``get_extraction_likelihood``; utils/other_utils.py,
    ``get_gen_args``). Returns one list per sample: the score of each of its cuts.

    For a sample of L tokens from ``text_start`` on (0, as the code: it counts every id the
    tokenizer gives, BOS included), the prompts are the first c = w, 2w, ... (L // w - 1)·w
    tokens (w = ``window``, 40), each
    continued by ``new_tokens`` (200) tokens sampled at temperature 1 from the top ``top_k`` (50,
    transformers' default, which the code's ``generate`` call leaves in force) then the top-p
    (0.95) nucleus of those; a row ends at its first stop token. The target is the rest of the
    text, x[c:]. Generation and target are decoded and re-encoded by ``recode`` when given, as
    the code does (``batch_decode(skip_special_tokens=True)`` then the tokenizer with its
    defaults); the memorization suite passes that round trip. Each (sample, cut) scores
    :func:`undial_overlap`; the paper's EL is the mean over ALL (sample, cut) pairs, not over
    samples (:func:`undial_mean`). (The code's loop also ``break``s after its first batch of
    32 pairs — the first 8 samples when they have 200 tokens; ``--undial-el-limit 8`` takes
    those 8 samples, whatever their number of cuts.)

    Every (sample, cut) draws from its own generator seeded from (``seed``, sample, cut), so the
    value does not depend on ``batch_size`` or on the other samples.
    """
    job = UndialEL(_check_sequences(sequences), n=n, text_start=text_start, seed=seed,
                   batch_size=batch_size, stop_token_ids=stop_token_ids, recode=recode, **sampling)
    on_tokens = token_counter(progress, job.total_tokens)
    with evaluating(model):
        parts = split_model(model)
        states = None
        if parts is not None and job.jobs:
            states = prefix_states(parts, job.sequences, batch_size=8, pad_token_id=pad_token_id)
        return job.run(model, states, parts, pad_token_id=pad_token_id, on_tokens=on_tokens)


def undial_mean(scores: Sequence[Sequence[float]]) -> float:
    """The paper-code EL: the mean over every (sample, cut) pair; NaN when there is none."""
    pairs = [value for sample in scores for value in sample]
    return sum(pairs) / len(pairs) if pairs else math.nan


class UndialEL:
    """The (sample, cut) generations of :func:`undial_extraction_likelihood`, run from kept keys
    and values (see ``memorization_report``'s ``undial_el``) or from scratch."""

    def __init__(self, sequences: list[list[int]], *, n: int = 10, window: int = 40,
                 new_tokens: int = 200, top_k: int = 50, top_p: float = 0.95, text_start: int = 0,
                 seed: int = 0, batch_size: int = 128, stop_token_ids: Sequence[int] = (),
                 recode=None):
        _check_ns((n,))
        for name, value in (("window", window), ("new_tokens", new_tokens), ("top_k", top_k),
                            ("batch_size", batch_size)):
            check_positive(name, value)
        if isinstance(top_p, bool) or not isinstance(top_p, (int, float)) or not 0 < top_p <= 1:
            raise UserError(f"top_p must be in (0, 1], got {top_p!r}")
        self.sequences, self.n, self.top_k, self.top_p = sequences, n, top_k, float(top_p)
        self.seed, self.batch_size, self.new_tokens = seed, batch_size, new_tokens
        self.stop_token_ids, self.recode = set(stop_token_ids), recode
        # (sample, prompt length in tokens, BOS included); range(1, L // w) as in the code.
        self.jobs = [
            (i, text_start + window * k)
            for i, seq in enumerate(sequences)
            for k in range(1, max(len(seq) - text_start, 0) // window)
        ]
        self.total_tokens = len(self.jobs) * new_tokens

    def run(self, model: torch.nn.Module, states: list[PrefixState] | None,
            parts: ModelParts | None, *, pad_token_id: int, on_tokens=None) -> list[list[float]]:
        """Scores per sample and cut; ``states`` (per sample, with ``parts``) spare the prefill."""
        sequences, device = self.sequences, model_device(model)
        generators = [_job_generator(self.seed, i, cut, device) for i, cut in self.jobs]
        lengths = [self.new_tokens] * len(self.jobs)
        if states is not None:  # x[:cut-1] from the kept keys and values, then x[cut-1] fed
            generated = decode_from_states(
                parts, [states[i] for i, _ in self.jobs], [cut - 1 for _, cut in self.jobs],
                [sequences[i][cut - 1] for i, cut in self.jobs], lengths,
                lambda logits, rows: self._sample(logits, [generators[r] for r in rows]),
                batch_size=self.batch_size, pad_token_id=pad_token_id, on_tokens=on_tokens,
            )
        else:
            generated = []
            for start in range(0, len(self.jobs), self.batch_size):
                batch = self.jobs[start : start + self.batch_size]
                batch_generators = generators[start : start + self.batch_size]
                generated += decode(
                    model, [sequences[i][:cut] for i, cut in batch], lengths[start : start + len(batch)],
                    lambda logits, _step, g=batch_generators: self._sample(logits, g),
                    pad_token_id=pad_token_id, on_tokens=on_tokens,
                )
        scores: list[list[float]] = [[] for _ in sequences]
        for (i, cut), tokens in zip(self.jobs, generated):
            tokens, target = self._until_stop(tokens), sequences[i][cut:]
            if self.recode is not None:
                tokens, target = self.recode(tokens), self.recode(target)
            scores[i].append(undial_overlap(tokens, target, self.n))
        return scores

    def _until_stop(self, tokens: list[int]) -> list[int]:
        # generate() ends a row at its end-of-text token; batch_decode(skip_special_tokens) drops it.
        for position, token in enumerate(tokens):
            if token in self.stop_token_ids:
                return tokens[:position]
        return tokens

    def _sample(self, logits: torch.Tensor, generators: list[torch.Generator]) -> torch.Tensor:
        return top_k_top_p_sample(logits, self.top_k, self.top_p, generators)


def _job_generator(seed: int, index: int, cut: int, device: torch.device) -> torch.Generator:
    # A hash, not seed + index + cut, so neighbouring jobs never share a stream.
    digest = hashlib.blake2b(f"{seed}/{index}/{cut}".encode(), digest_size=8).digest()
    generator = torch.Generator(device=device)
    generator.manual_seed(int.from_bytes(digest, "little") & ((1 << 63) - 1))
    return generator


def top_k_top_p_sample(
    logits: torch.Tensor, top_k: int, top_p: float, generators: list[torch.Generator]
) -> torch.Tensor:
    """One token per row of [rows, V] logits, as transformers' sampling with TopK then TopP
    warpers: the ``top_k`` most likely tokens, renormalized, then the smallest set of them whose
    mass reaches ``top_p``. Row r draws its uniform with generators[r]."""
    probs = torch.softmax(at_least_float32(logits), dim=-1)
    top_probs, top_ids = probs.topk(min(top_k, probs.shape[-1]), dim=-1)
    top_probs = top_probs / top_probs.sum(dim=-1, keepdim=True)
    uniforms = torch.cat([torch.rand(1, generator=g, device=g.device) for g in generators])
    picked = nucleus_sample(top_probs, top_p, uniforms.to(probs.device))
    return top_ids.gather(-1, picked[:, None]).squeeze(-1)


# --- everything from one teacher-forced pass ------------------------------------------------


def memorization_report(
    model: torch.nn.Module,
    sequences: Sequence[Sequence[int]],
    texts: Sequence[str] | None = None,
    *,
    ns: Sequence[int] = (10,),
    el_stride: int = 1,
    compute_el: bool = True,
    batch_size: int = 8,
    el_batch_size: int = 128,
    pad_token_id: int = 0,
    k_percent: float = 20.0,
    extraction: tuple[int, int] | None = None,
    text_start: int = 0,
    undial_el: dict | None = None,
    ma_start: int = 1,
    progress: ProgressCallback | None = None,
) -> MemorizationResult:
    """:func:`unmemorize.metrics.memorization.memorization` plus, from the same teacher-forced
    pass, whichever of these is asked for, each equal to what its own function returns:

    * ``texts`` (one per sample): :func:`membership_scores` with ``k_percent``, in
      ``result.membership`` (full fp32 logits then give MA's argmax too);
    * ``extraction=(prefix_tokens, suffix_tokens)``: :func:`extractable` (with ``text_start``),
      in ``result.extraction``; the identity of memorization.py spares the continuation wherever
      the model predicts the true suffix, and a continuation EL also needs is generated once;
    * ``undial_el``: keyword arguments of :func:`undial_extraction_likelihood` (``n``, ``seed``,
      ``window``, ``new_tokens``, ``top_k``, ``top_p``, ``stop_token_ids``, ``recode``,
      ``batch_size``) plus ``limit`` (the first ``limit`` samples only), in
      ``result.undial_el``; its prompts continue from the pass's keys and values.

    MA scores the targets t = ``ma_start``..T−1 (default: all of them; later, when the first
    tokens are a context placed before the text, as the robustness suite's in-context attack does).
    ``progress(done, total)`` counts every generated token, greedy and sampled.
    """
    sequences = _check_sequences(sequences)
    ns = _check_ns(ns) if compute_el else ()
    for name, value in (("EL stride", el_stride), ("batch_size", batch_size), ("el_batch_size", el_batch_size)):
        check_positive(name, value)
    if texts is not None:
        texts = _check_texts(texts, sequences, k_percent)
    sampled = None
    if undial_el:
        options = dict(undial_el)
        limit = options.pop("limit", None)
        # No text_start: the authors' cuts count every id the tokenizer gives, BOS included.
        sampled = UndialEL(sequences[:limit] if limit else sequences, **options)
    with evaluating(model):
        prepared = teacher_forced_pass(
            model, sequences, batch_size=batch_size, pad_token_id=pad_token_id,
            keep_states=bool(ns or extraction or sampled),
            statistics=_position_statistics if texts is not None else None,
        )
        result = MemorizationResult(ma=[_accuracy(s, p, ma_start) for s, p in zip(sequences, prepared.predictions)],
                                    predictions=prepared.predictions)
        if texts is not None:
            result.membership = membership_from(prepared, texts, k_percent)
        first = first_mismatches(sequences, prepared.predictions)
        requests: dict[tuple[int, int], int] = {}
        scored = el_requests(sequences, first, ns, el_stride, requests) if ns else []
        attack = ExtractionRequests(sequences, first, *extraction, requests, text_start) if extraction else None
        on_tokens = token_counter(
            progress, requested_tokens(requests) + (sampled.total_tokens if sampled else 0)
        )
        continuations = greedy_continuations(
            model, sequences, prepared, requests, batch_size=el_batch_size,
            pad_token_id=pad_token_id, on_tokens=on_tokens,
        )
        result.el = el_values(sequences, scored, continuations, ns) if ns else {}
        result.extraction = attack.result(continuations) if attack else None
        if sampled is not None:
            states = prepared.states[: len(sampled.sequences)] if prepared.states else None
            result.undial_el = sampled.run(
                model, states, prepared.parts, pad_token_id=pad_token_id, on_tokens=on_tokens
            )
    return result
