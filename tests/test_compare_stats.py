"""The estimators of ``rlexp compare`` (rlexp/compare/stats.py): hand-computed cases, scipy's and rliable's
definitions, and the coverage of the bootstrap intervals on synthetic data (seeded: deterministic)."""
from __future__ import annotations

import numpy as np
import pytest
import scipy.stats

from rlexp.compare import stats


# ------------------------------------------------------------------------------------ point estimators
def test_iqm_is_the_mean_of_the_middle_half():
    assert stats.iqm([1, 2, 3, 4, 5, 6, 7, 100]) == pytest.approx(4.5)  # 8 runs: 3, 4, 5, 6 kept
    assert stats.iqm([10, 0, 1, 2, 3]) == pytest.approx(2.0)  # 5 runs: int(1.25) = 1 cut at each end
    assert stats.iqm([0.2, 0.4]) == pytest.approx(0.3)  # 2 or 3 runs: nothing is cut
    assert stats.iqm([0.1, 0.2, 0.9]) == pytest.approx(0.4)
    rng = np.random.default_rng(0)
    for n in range(1, 40):
        x = rng.normal(size=n)
        assert stats.iqm(x) == pytest.approx(scipy.stats.trim_mean(x, 0.25))


def test_mean_of_strata_means_and_pooled_median():
    assert stats.mean([[1.0, 2.0], [3.0, 5.0, 7.0]]) == pytest.approx((1.5 + 5.0) / 2)  # ragged strata
    m = np.array([[1.0, 10.0], [3.0, 30.0]])  # (runs, tasks) as rliable lays it out
    assert stats.mean(m) == pytest.approx(11.0) and stats.median(m) == pytest.approx(6.5)
    assert stats.iqm(m) == pytest.approx(6.5)  # pooled 1, 3, 10, 30: the middle two
    assert stats.median([0.1, 0.9, 0.3]) == 0.3
    with pytest.raises(ValueError, match="finite"):
        stats.mean([0.1, float("nan")])


def test_probability_of_improvement_by_hand_and_as_mann_whitney():
    # x=1 beats y=0; x=2 ties both 2s and beats 0; x=3 beats all three: (1 + 2 + 3) / 9
    assert stats.prob_improvement([1, 2, 3], [2, 2, 0]) == pytest.approx(6 / 9)
    assert stats.prob_improvement([2, 2, 0], [1, 2, 3]) == pytest.approx(3 / 9)
    assert stats.prob_improvement([0.5, 0.5], [0.5, 0.5]) == 0.5
    assert stats.prob_improvement([0.9], [0.1]) == 1.0
    rng = np.random.default_rng(1)
    for n, m in ((3, 3), (5, 8), (20, 7)):
        x, y = rng.normal(0.2, 1, n), rng.normal(0, 1, m)  # continuous: no ties
        p, q = stats.prob_improvement(x, y), stats.prob_improvement(y, x)
        assert p + q == pytest.approx(1.0)
        u = scipy.stats.mannwhitneyu(x, y, alternative="greater").statistic
        assert p == pytest.approx(u / (n * m))
    # strata: the mean of per-task probabilities (task 1: 1.0, task 2: 0.0)
    assert stats.prob_improvement(np.array([[1.0, 0.0], [2.0, 0.0]]), np.array([[0.0, 5.0], [0.0, 6.0]])) == 0.5


def test_paired_difference_by_hand():
    d, ci = stats.paired_difference([0.5, 0.7, 0.9], [0.4, 0.7, 0.6])  # differences 0.1, 0, 0.3
    assert d == pytest.approx(0.4 / 3)
    assert 0.0 <= ci[0] < d < ci[1] <= 0.3 + 1e-12
    assert stats.paired_difference([0.5], [0.4]) == (pytest.approx(0.1), None)
    with pytest.raises(ValueError, match="same runs on both sides"):
        stats.paired_difference([0.5, 0.6], [0.4])


def test_performance_profile_counts_runs_strictly_above_each_threshold():
    prof = stats.performance_profile([0.1, 0.5, 0.9], [0.0, 0.5, 1.0], reps=500)
    assert prof["fraction"] == pytest.approx([1.0, 1 / 3, 0.0])
    assert prof["ci_low"][0] == prof["ci_high"][0] == 1.0 and prof["ci_high"][2] == 0.0
    assert 0.0 <= prof["ci_low"][1] <= 1 / 3 <= prof["ci_high"][1] <= 1.0
    assert stats.performance_profile([0.4], [0.0, 1.0])["ci_low"] is None  # one run: no interval
    assert stats.profile_thresholds([[0.2, 0.4], [0.3, 0.8]], points=4) == pytest.approx([0.2, 0.4, 0.6, 0.8])


# ------------------------------------------------------------------------------------------- bootstrap
def test_intervals_are_seeded_and_undefined_for_one_run():
    x = np.random.default_rng(5).normal(0.5, 0.1, 8).tolist()
    a, b = stats.aggregate(x), stats.aggregate(x)
    assert a == b and a["n"] == 8
    assert stats.aggregate(x, seed=1)["mean_ci"] != a["mean_ci"]
    assert stats.bootstrap_ci(x, "iqm") == tuple(a["iqm_ci"])  # one seed, the same resamples
    one = stats.aggregate([0.4])
    assert one["mean"] == 0.4 and one["mean_ci"] is None and one["iqm_ci"] is None
    assert stats.prob_improvement_ci([0.4], [0.2, 0.3]) is None
    two = stats.aggregate([0.6, 0.8])  # two runs: resampled means are 0.6, 0.7 or 0.8
    assert two["mean_ci"] == pytest.approx([0.6, 0.8])


def test_bootstrap_resamples_within_strata():
    # each task's runs agree: resampling runs within a task cannot move the mean, pooling tasks would
    scores = np.array([[1.0, 5.0], [1.0, 5.0], [1.0, 5.0]])
    assert stats.bootstrap_ci(scores) == pytest.approx((3.0, 3.0))
    assert stats.bootstrap_ci(scores.T.ravel())[1] - stats.bootstrap_ci(scores.T.ravel())[0] > 1.0


def test_bootstrap_interval_matches_scipy_percentile_bootstrap():
    rng = np.random.default_rng(2)
    for stat, name in ((np.mean, "mean"), (np.median, "median")):
        x = rng.normal(0.5, 0.1, 12)
        ref = scipy.stats.bootstrap((x,), stat, method="percentile", n_resamples=20_000, random_state=3,
                                    vectorized=False if stat is np.median else True).confidence_interval
        ours = stats.bootstrap_ci(x, name, reps=20_000)
        assert ours == pytest.approx((ref.low, ref.high), abs=0.004), name  # Monte-Carlo error only


def _coverage(trials: int, draw, interval, truth: float) -> float:
    rng = np.random.default_rng(12345)
    hits = 0
    for k in range(trials):
        lo, hi = interval(*draw(rng), seed=k)
        hits += lo <= truth <= hi
    return hits / trials


@pytest.mark.parametrize("estimator", ["mean", "iqm"])
def test_intervals_cover_the_true_mean_at_about_95_percent(estimator):
    # normal data (symmetric: the IQM's target is the mean too), 30 runs, 300 trials
    rate = _coverage(300, lambda rng: (rng.normal(0.5, 0.1, 30),),
                     lambda x, seed: stats.bootstrap_ci(x, estimator, reps=1000, seed=seed), 0.5)
    assert 0.90 <= rate <= 0.98, rate


def test_intervals_of_pairs_cover_their_truth_at_about_95_percent():
    shift, sd = 0.05, 0.1
    truth = float(scipy.stats.norm.cdf(shift / (sd * np.sqrt(2))))  # P(X > Y) of two normals
    rate = _coverage(300, lambda rng: (rng.normal(0.5 + shift, sd, 20), rng.normal(0.5, sd, 20)),
                     lambda x, y, seed: stats.prob_improvement_ci(x, y, reps=1000, seed=seed), truth)
    assert 0.90 <= rate <= 0.98, rate

    def paired(rng):  # the seed's own difficulty (shared) plus the configuration's noise
        base = rng.normal(0.5, 0.1, 20)
        return base + 0.02 + rng.normal(0, 0.05, 20), base
    rate = _coverage(300, paired, lambda x, y, seed: stats.paired_difference(x, y, reps=1000, seed=seed)[1], 0.02)
    assert 0.90 <= rate <= 0.98, rate


def test_few_runs_undercover_as_the_docs_say():
    # docs/sweeps.md: percentile intervals over 2 runs cover ~50%, over 3 ~74%, over 5 ~85%
    for n, lo, hi in ((2, 0.40, 0.60), (3, 0.65, 0.83), (5, 0.78, 0.91)):
        rate = _coverage(300, lambda rng: (rng.normal(0.5, 0.1, n),),
                         lambda x, seed: stats.bootstrap_ci(x, reps=1000, seed=seed), 0.5)
        assert lo <= rate <= hi, (n, rate)


# ------------------------------------------------------------------------------------- rliable itself
def test_agrees_with_rliable_on_the_same_samples():
    metrics = pytest.importorskip("rliable.metrics", reason="rliable is not installed: pip install --no-deps "
                                                            "rliable (its metrics need numpy and scipy only)")
    rng = np.random.default_rng(4)
    for runs, tasks in ((5, 1), (3, 1), (10, 4), (7, 3)):
        x, y = rng.normal(0.5, 0.2, (runs, tasks)), rng.normal(0.45, 0.2, (runs + 2, tasks))
        assert stats.iqm(x) == pytest.approx(metrics.aggregate_iqm(x))
        assert stats.mean(x) == pytest.approx(metrics.aggregate_mean(x))
        assert stats.prob_improvement(x, y) == pytest.approx(metrics.probability_of_improvement(x, y))
        assert stats.prob_improvement(y, x) == pytest.approx(metrics.probability_of_improvement(y, x))
    ties = np.array([[0.5], [0.5], [1.0]])
    assert stats.prob_improvement(ties, ties[::-1]) == pytest.approx(metrics.probability_of_improvement(ties, ties))
