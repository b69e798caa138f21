"""Intervals and paired differences against values computed another way: a naive resampling
loop, normal theory on large samples, Wilson's formula by hand, the privacy module's AUC."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest

from unmemorize.metrics.privacy import auc
from unmemorize.metrics.uncertainty import (
    RESAMPLES,
    SEED,
    Measurement,
    attach_intervals,
    bootstrap_interval,
    mean_interval,
    paired_bootstrap,
    proportion_interval,
)


def naive_percentile_interval(values: list[float]) -> tuple[float, float]:
    """The percentile bootstrap of a mean written as a loop over the same index draws."""
    rng = np.random.default_rng(SEED)
    draws = rng.integers(0, len(values), size=(RESAMPLES, len(values)))
    means = []
    for row in draws:
        total = 0.0
        for index in row:
            total += values[index]
        means.append(total / len(values))
    return float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))


def test_bootstrap_of_a_mean_equals_a_naive_loop():
    rng = random.Random(3)
    values = [rng.random() for _ in range(37)]
    assert bootstrap_interval(Measurement.of_mean(values)) == pytest.approx(naive_percentile_interval(values))


def test_bootstrap_matches_normal_theory_on_a_large_sample():
    rng = random.Random(5)
    outcomes = [float(rng.random() < 0.3) for _ in range(4000)]
    low, high = bootstrap_interval(Measurement.of_mean(outcomes))
    normal_low, normal_high = mean_interval(outcomes)
    # Both estimate the same 95 % interval; on 4,000 items they agree to a few thousandths.
    assert low == pytest.approx(normal_low, abs=3e-3) and high == pytest.approx(normal_high, abs=3e-3)


def test_mean_interval_by_hand():
    # mean 2, sample sd 1 (values 1, 2, 3): 2 ± 1.96 / sqrt(3).
    low, high = mean_interval([1.0, 2.0, 3.0])
    assert (low, high) == pytest.approx((2 - 1.959964 / math.sqrt(3), 2 + 1.959964 / math.sqrt(3)), abs=1e-6)
    assert all(math.isnan(v) for v in mean_interval([1.0]))


def test_wilson_interval_by_hand():
    # 0 of 8: centre = half = (z²/16) / (1 + z²/8) with z² = 3.8415 -> [0, 0.32441].
    assert proportion_interval(0, 8) == pytest.approx((0.0, 0.32441), abs=1e-5)
    # 5 of 10: centre 0.5, half = 1.96·sqrt(0.025 + z²/400) / (1 + z²/10) = 0.26341.
    assert proportion_interval(5, 10) == pytest.approx((0.23659, 0.76341), abs=1e-5)
    # The bootstrap of 0 of N would be [0, 0]; a proportion's interval is Wilson's.
    assert bootstrap_interval(Measurement.of_proportion([False] * 8)) == pytest.approx((0.0, 0.32441), abs=1e-5)


def test_statistics_by_hand():
    assert Measurement("exp_ratio", {"docs": [[2.0, 4], [4.0, 4]]}).value() == pytest.approx(math.exp(6 / 8))
    assert Measurement("ratio", {"docs": [[1.5, 2], [0.0, 1]]}).value() == pytest.approx(0.5)
    # Mean of per-stratum means, not of the pooled items: (1 + 0.25) / 2.
    assert Measurement("mean_of_means", {"a": [1, 1], "b": [0, 0, 0, 1]}).value() == pytest.approx(0.625)
    members, others = [0.9, 0.1, 0.5, 0.5], [0.5, 0.2, 0.3]
    assert Measurement("auc", {"member": members, "nonmember": others}).value() == pytest.approx(auc(members, others))


def test_stratified_resampling_keeps_each_stratum_whole():
    # One stratum is all ones, the other all zeros: every resample keeps both sizes, so the mean of
    # means is always exactly 0.5 (pooled resampling would move it).
    measurement = Measurement("mean_of_means", {"a": [1.0] * 5, "b": [0.0] * 50})
    assert bootstrap_interval(measurement) == (0.5, 0.5)


def test_paired_bootstrap():
    rng = random.Random(11)
    a = [rng.random() for _ in range(200)]
    shifted = paired_bootstrap(Measurement.of_mean(a), Measurement.of_mean([v + 0.1 for v in a]))
    # A constant shift: every resample's difference is exactly 0.1.
    assert (shifted.difference, shifted.low, shifted.high) == pytest.approx((0.1, 0.1, 0.1))
    assert shifted.resolved
    same = paired_bootstrap(Measurement.of_mean(a), Measurement.of_mean(a))
    assert (same.low, same.high) == (0.0, 0.0) and not same.resolved
    # Noisy items shared by both models: pairing removes their variance. The paired interval of a
    # small real difference is far narrower than the two separate intervals suggest.
    b = [v + 0.02 + rng.gauss(0, 0.01) for v in a]
    paired = paired_bootstrap(Measurement.of_mean(a), Measurement.of_mean(b))
    separate = [bootstrap_interval(Measurement.of_mean(x)) for x in (a, b)]
    assert paired.resolved and separate[0][1] > separate[1][0]  # overlapping separately
    assert paired.difference == pytest.approx(sum(b) / 200 - sum(a) / 200)
    with pytest.raises(ValueError, match="same items"):
        paired_bootstrap(Measurement.of_mean(a), Measurement.of_mean(a[:-1]))


def test_attach_intervals_keeps_items_and_intervals():
    results = attach_intervals({}, {"forget.ma": Measurement.of_mean([0.2, 0.4])})
    assert results["measurements"]["forget.ma"] == {"statistic": "mean", "units": {"items": [0.2, 0.4]}}
    assert results["intervals"]["forget.ma"] == pytest.approx(list(bootstrap_interval(Measurement.of_mean([0.2, 0.4]))))
    assert Measurement.from_json(results["measurements"]["forget.ma"]).value() == pytest.approx(0.3)


def test_evaluation_cells_show_intervals_and_the_paired_change():
    from unmemorize.reporting.tables import evaluation_cells

    before, after = [0.6, 0.5, 0.7, 0.4], [0.5, 0.45, 0.6, 0.38]
    report = {"models": {"original": "a", "unlearned": "b"}, "results": {}}
    for label, values in (("original", before), ("unlearned", after)):
        memorization = {"forget": {"ma": sum(values) / 4}}
        report["results"][label] = {"memorization": attach_intervals(memorization, {"forget.ma": Measurement.of_mean(values)})}
    cells, change = evaluation_cells(report, "memorization.forget.ma", [sum(before) / 4, sum(after) / 4])
    low, high = bootstrap_interval(Measurement.of_mean(before))
    assert cells[0] == f"{sum(before) / 4:.3f} [{low:.3f}, {high:.3f}]"
    paired = paired_bootstrap(Measurement.of_mean(before), Measurement.of_mean(after))
    # Every item dropped: the paired interval lies below 0, resolved (no ≈).
    assert change == f"{paired.difference:.3f} [{paired.low:.3f}, {paired.high:.3f}]" and paired.high < 0


def test_paired_bootstrap_pools_seeds_by_their_statistics():
    # Two seeds' AUCs average differently from the AUC of averaged scores: the pooled value is
    # the mean of the seeds' statistics, as the comparison's pooled row reports it.
    original = Measurement("auc", {"member": [0.9, 0.8, 0.2], "nonmember": [0.5, 0.4, 0.1]})
    seeds = [Measurement("auc", {"member": [0.1, 0.9, 0.3], "nonmember": [0.5, 0.4, 0.2]}),
             Measurement("auc", {"member": [0.6, 0.2, 0.95], "nonmember": [0.5, 0.1, 0.9]})]
    expected = (seeds[0].value() + seeds[1].value()) / 2 - original.value()
    assert paired_bootstrap(original, seeds).difference == pytest.approx(expected)
    averaged = Measurement("auc", {k: [(x + y) / 2 for x, y in zip(seeds[0].units[k], seeds[1].units[k])]
                                   for k in ("member", "nonmember")})
    assert averaged.value() - original.value() != pytest.approx(expected)
    # One seed on each side is the ordinary paired bootstrap.
    assert paired_bootstrap([original], [seeds[0]]) == paired_bootstrap(original, seeds[0])
