"""How sure a number is: intervals for one model's metric, and for the difference between two
models measured on the same items.

A metric that can carry an interval is stored with the per-item values it was computed from, as
a :class:`Measurement`: ``units`` grouped in strata (one stratum for a plain mean; one per task
for an NLU average; members and non-members for an AUC) and the name of the ``statistic`` that
turns them into the metric. The percentile bootstrap (Efron & Tibshirani 1993, ch. 13) resamples
units with replacement *within* each stratum, so every resample keeps the design of the real
measurement; the paired bootstrap draws the same indices for both models, so item difficulty
cancels out of the difference (Koehn 2004, "Statistical significance tests for machine
translation evaluation"; Dror et al. 2018). Resampling is seeded: the same inputs give the
same interval on every run.

Written here rather than taken from scipy.stats.bootstrap: scipy is not a dependency, and the
stratified, paired resampling over named strata with statistics like exp(sum NLL / sum tokens)
is a few lines of numpy.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

CONFIDENCE = 0.95
RESAMPLES = 2000
SEED = 20240615
Z_95 = 1.959963984540054  # the standard normal's 97.5 % quantile


def _mean(strata: Mapping[str, np.ndarray]) -> float:
    values = np.concatenate([np.asarray(v, dtype=np.float64).reshape(-1) for v in strata.values()])
    return float(values.mean()) if values.size else math.nan


def _mean_of_means(strata: Mapping[str, np.ndarray]) -> float:
    means = [float(np.mean(v)) for v in strata.values() if len(v)]
    return float(np.mean(means)) if means else math.nan


def _exp_ratio(strata: Mapping[str, np.ndarray]) -> float:
    # Units are (negative log-likelihood sum, token count) pairs: exp(sum NLL / sum tokens).
    pairs = np.concatenate([np.asarray(v, dtype=np.float64).reshape(-1, 2) for v in strata.values()])
    return float(np.exp(pairs[:, 0].sum() / pairs[:, 1].sum())) if pairs[:, 1].sum() > 0 else math.nan


def _ratio(strata: Mapping[str, np.ndarray]) -> float:
    # Units are (sum, count) pairs, e.g. a document's summed scores over its cuts: a mean over
    # all the pooled parts, with whole documents resampled.
    pairs = np.concatenate([np.asarray(v, dtype=np.float64).reshape(-1, 2) for v in strata.values()])
    return float(pairs[:, 0].sum() / pairs[:, 1].sum()) if pairs[:, 1].sum() > 0 else math.nan


def _distinct_ratios(strata: Mapping[str, np.ndarray]) -> np.ndarray:
    # Units: per text, [distinct, total] n-gram counts for each n-gram size (pairs in a row),
    # summed over the texts: SimCTG's pooled counts (metrics.nlg.repetition).
    parts = [np.asarray(v, dtype=np.float64) for v in strata.values() if len(v)]
    if not parts:
        return np.array([math.nan])
    counts = np.concatenate([p.reshape(len(p), -1, 2) for p in parts]).sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(counts[:, 1] > 0, counts[:, 0] / counts[:, 1], math.nan)


def _pooled_repetition(strata: Mapping[str, np.ndarray]) -> float:
    return float(1.0 - _distinct_ratios(strata)[0])


def _pooled_diversity(strata: Mapping[str, np.ndarray]) -> float:
    return float(np.prod(_distinct_ratios(strata)))


def _auc(strata: Mapping[str, np.ndarray]) -> float:
    # Mann-Whitney: P(member score > non-member score) + 1/2 P(tie).
    members = np.asarray(strata["member"], dtype=np.float64)
    others = np.asarray(strata["nonmember"], dtype=np.float64)
    if not members.size or not others.size:
        return math.nan
    greater = (members[:, None] > others[None, :]).sum()
    ties = (members[:, None] == others[None, :]).sum()
    return float((greater + 0.5 * ties) / (members.size * others.size))


STATISTICS: dict[str, Callable[[Mapping[str, np.ndarray]], float]] = {
    "mean": _mean,
    "mean_of_means": _mean_of_means,
    "exp_ratio": _exp_ratio,
    "ratio": _ratio,
    # A share of 0/1 outcomes: a mean whose interval is Wilson's, not the bootstrap's (which
    # is [0, 0] for 0 of N).
    "proportion": _mean,
    "auc": _auc,
    "pooled_repetition": _pooled_repetition,
    "pooled_diversity": _pooled_diversity,
}


@dataclass(frozen=True)
class Measurement:
    """Per-item values of one metric: ``units[stratum]`` is a list of items (a number, or a
    pair for ``exp_ratio``), ``statistic`` a key of STATISTICS."""

    statistic: str
    units: dict[str, list]

    def value(self) -> float:
        return STATISTICS[self.statistic](self._arrays())

    def _arrays(self) -> dict[str, np.ndarray]:
        return {name: np.asarray(items, dtype=np.float64) for name, items in self.units.items()}

    def to_json(self) -> dict:
        return {"statistic": self.statistic, "units": self.units}

    @classmethod
    def from_json(cls, data: Mapping) -> "Measurement":
        return cls(str(data["statistic"]), {str(k): list(v) for k, v in data["units"].items()})

    @classmethod
    def of_mean(cls, values: Sequence[float]) -> "Measurement":
        return cls("mean", {"items": [float(v) for v in values]})

    @classmethod
    def of_proportion(cls, outcomes: Sequence[bool]) -> "Measurement":
        return cls("proportion", {"items": [float(bool(v)) for v in outcomes]})


def _resampled(strata: Mapping[str, np.ndarray], generator: np.random.Generator, resamples: int):
    """Indices per stratum for each resample: {stratum: int array [resamples, n]}."""
    return {
        name: generator.integers(0, len(items), size=(resamples, len(items)))
        for name, items in strata.items()
        if len(items)
    }


def percentile_interval(values: np.ndarray, confidence: float = CONFIDENCE) -> tuple[float, float]:
    """The central ``confidence`` share of resampled values (non-finite ones dropped)."""
    finite = values[np.isfinite(values)]
    if not finite.size:
        return math.nan, math.nan
    tail = (1 - confidence) / 2 * 100
    low, high = np.percentile(finite, [tail, 100 - tail])
    return float(low), float(high)


def bootstrap_interval(
    measurement: Measurement, *, resamples: int = RESAMPLES, confidence: float = CONFIDENCE,
    seed: int = SEED,
) -> tuple[float, float]:
    """Percentile bootstrap interval of ``measurement.value()``, resampling within strata.
    (nan, nan) when there is nothing to resample."""
    strata = measurement._arrays()
    if not any(len(v) for v in strata.values()):
        return math.nan, math.nan
    if measurement.statistic == "proportion":
        outcomes = np.concatenate(list(strata.values()))
        return proportion_interval(int(outcomes.sum()), int(outcomes.size))
    statistic = STATISTICS[measurement.statistic]
    indices = _resampled(strata, np.random.default_rng(seed), resamples)
    values = np.array([
        statistic({name: strata[name][rows[r]] for name, rows in indices.items()})
        for r in range(resamples)
    ])
    return percentile_interval(values, confidence)


@dataclass(frozen=True)
class PairedDifference:
    """``difference`` = value(b) - value(a) on the same items, its interval, and whether the
    interval excludes 0 (``resolved``)."""

    difference: float
    low: float
    high: float

    @property
    def resolved(self) -> bool:
        return bool(self.low > 0 or self.high < 0)

    def to_json(self) -> dict:
        return {"difference": self.difference, "ci95": [self.low, self.high], "resolved": self.resolved}


def paired_bootstrap(
    a: Measurement | Sequence[Measurement], b: Measurement | Sequence[Measurement], *,
    resamples: int = RESAMPLES, confidence: float = CONFIDENCE, seed: int = SEED,
) -> PairedDifference:
    """Interval of value(b) - value(a) when both were measured on the same items: each resample
    draws one set of indices per stratum and applies it to both models. A side may be several
    measurements of the same items (one per training seed): its value is then the mean over
    them of the statistic, in each resample as in the point estimate, which is right for a
    non-linear statistic (an AUC, a perplexity) where averaging the items first is not."""
    sides = [list(x) if isinstance(x, (list, tuple)) else [x] for x in (a, b)]
    every = sides[0] + sides[1]
    if len({m.statistic for m in every}) != 1:
        raise ValueError(f"cannot pair a {every[0].statistic} with a {every[-1].statistic}")
    arrays = [[m._arrays() for m in side] for side in sides]
    shape = {name: len(v) for name, v in arrays[0][0].items()}
    if any({name: len(v) for name, v in strata.items()} != shape for side in arrays for strata in side):
        raise ValueError("paired measurements need the same items: the strata or their sizes differ")
    statistic = STATISTICS[every[0].statistic]
    indices = _resampled(arrays[0][0], np.random.default_rng(seed), resamples)

    def side_value(side: list[dict], r: int | None = None) -> float:
        if r is None:
            return float(np.mean([statistic(strata) for strata in side]))
        return float(np.mean([statistic({n: strata[n][rows[r]] for n, rows in indices.items()})
                              for strata in side]))

    differences = np.array([side_value(arrays[1], r) - side_value(arrays[0], r) for r in range(resamples)])
    low, high = percentile_interval(differences, confidence)
    return PairedDifference(side_value(arrays[1]) - side_value(arrays[0]), low, high)


def mean_interval(values: Sequence[float], confidence_z: float = Z_95) -> tuple[float, float]:
    """Normal interval of a mean: mean ± z · s/√n with the sample (n-1) standard deviation
    (lm-eval's ``acc_stderr``). (nan, nan) below two values."""
    n = len(values)
    if n < 2:
        return math.nan, math.nan
    mean = sum(values) / n
    stderr = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1) / n)
    return mean - confidence_z * stderr, mean + confidence_z * stderr


def proportion_interval(successes: int, trials: int, confidence_z: float = Z_95) -> tuple[float, float]:
    """Wilson score interval of a proportion (Wilson 1927): unlike mean ± z·se it is not [0, 0]
    for 0 of N (for 0 of 8 it is [0, 0.32])."""
    if trials <= 0:
        return math.nan, math.nan
    p, z2 = successes / trials, confidence_z**2
    centre = (p + z2 / (2 * trials)) / (1 + z2 / trials)
    half = confidence_z * math.sqrt(p * (1 - p) / trials + z2 / (4 * trials**2)) / (1 + z2 / trials)
    return max(0.0, centre - half), min(1.0, centre + half)


def attach_intervals(results: dict, measurements: Mapping[str, Measurement]) -> dict:
    """Adds a suite's per-item ``measurements`` (for paired comparisons later) and the 95 %
    bootstrap ``intervals`` of each, keyed by the metric's path inside the suite's results
    (e.g. ``"forget.ma"``, ``"avg6_lm_eval"``, ``"wikitext.perplexity"``)."""
    results["measurements"] = {path: m.to_json() for path, m in measurements.items()}
    results["intervals"] = {path: list(bootstrap_interval(m)) for path, m in measurements.items()}
    return results
