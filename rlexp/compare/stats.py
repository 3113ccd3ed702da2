"""Aggregate estimators with uncertainty (Agarwal et al. 2021, "Deep RL at the edge of the statistical
precipice", and its library ``rliable``): pure numpy, no rlexp imports.

Scores are one number per run. ``scores`` is a 1-D array (the runs of one configuration), a 2-D array
``(runs, tasks)`` as rliable lays it out, or a list of 1-D arrays, one per *stratum* (task, prompt set, …;
their lengths may differ). The estimators, as rliable defines them:

    mean    the mean of the strata's means (one stratum: the mean of the runs)
    IQM     the interquartile mean: the mean of the middle 50% of the pooled scores,
            ``scipy.stats.trim_mean(x, 0.25)`` (cut ``floor(0.25·N)`` scores at each end)
    median  the median of the pooled scores (rliable's ``aggregate_median`` is the median of the strata's
            means, which with one task is the mean again; here the median of the runs)
    P(X > Y)  the probability that a run of X scores above a run of Y, ties counting one half:
            ``mean over pairs of [x > y] + 0.5·[x = y]`` (the Mann-Whitney U statistic over m·n), averaged
            over strata; P(X > Y) + P(Y > X) = 1
    paired difference  ``mean(x_s − y_s)`` over runs that share a seed (same prompts in the same order)
    performance profile  the fraction of the pooled runs scoring above each threshold τ

Intervals are percentile bootstrap intervals (``[2.5, 97.5]`` percentiles of the estimator over ``reps``
resamples): runs are resampled with replacement *within* each stratum (rliable's stratified bootstrap),
a pair's two configurations independently, a paired difference's seeds jointly. Every call draws from its
own ``numpy.random.default_rng(seed)`` (default ``DEFAULT_SEED``), so a report is reproducible and one
configuration's interval does not change when another configuration is added. An interval needs two runs
(on each side of a pair): with one it is ``None``. Percentile intervals over few runs are too narrow (with
2 runs the interval of the mean is [min, max]); ``docs/sweeps.md`` gives the coverage measured at small n.

Why not ``rliable`` itself: its bootstrap (``rliable.library``, through ``arch``) does not run next to
rlexp's dependencies. rliable 1.2.0 pins ``arch<8``; arch 7.2.0 fails on import with pandas 3 (which
mlflow brings), arch 8 renamed the ``random_state`` argument that rliable passes; and it would add
arch, statsmodels, seaborn and absl-py (about 80 MB) for what is a few lines of numpy. The estimators
here are tested against ``rliable.metrics`` (numpy and scipy only: ``pip install --no-deps rliable``)
where it is installed, against scipy (``trim_mean``, ``mannwhitneyu``, ``stats.bootstrap``) always, and
for coverage on synthetic data (tests/test_compare_stats.py).
"""
from __future__ import annotations

from typing import Callable, Sequence

import numpy as np

DEFAULT_SEED = 0
DEFAULT_REPS = 10_000
LEVEL = 0.95
TRIM = 0.25  # the IQM cuts a quarter at each end
_CHUNK = 4_000_000  # elements of one (reps, n, m) comparison block in the P(X > Y) bootstrap


def strata(scores) -> list[np.ndarray]:
    """``scores`` as a list of finite 1-D float arrays, one per stratum (see the module docstring)."""
    if isinstance(scores, np.ndarray) and scores.ndim == 2:
        parts = [scores[:, j] for j in range(scores.shape[1])]
    elif isinstance(scores, np.ndarray) or not len(scores) or np.isscalar(scores[0]):
        parts = [np.asarray(scores, dtype=float).ravel()]
    else:
        parts = [np.asarray(s, dtype=float).ravel() for s in scores]
    parts = [p.astype(float) for p in parts]
    for p in parts:
        if not np.all(np.isfinite(p)):
            raise ValueError(f"scores must be finite numbers, got {p.tolist()}")
    return parts


def count(scores) -> int:
    """The number of runs (over all strata)."""
    return sum(p.size for p in strata(scores))


# ------------------------------------------------------------------------------ point estimators
# Each ``_f(parts)`` takes strata whose arrays have shape (..., n_k) and reduces the last axis, so the same
# code gives the point estimate (shape (n_k,)) and every bootstrap replicate at once (shape (reps, n_k)).
def _mean(parts: list[np.ndarray]) -> np.ndarray:
    return np.mean([p.mean(axis=-1) for p in parts], axis=0)


def _pooled(parts: list[np.ndarray]) -> np.ndarray:
    return np.concatenate(parts, axis=-1)


def _trimmed(x: np.ndarray, proportion: float = TRIM) -> np.ndarray:
    """``scipy.stats.trim_mean(x, proportion, axis=-1)``: sort, cut ``int(proportion·n)`` at each end, average."""
    n = x.shape[-1]
    cut = int(proportion * n)
    return np.sort(x, axis=-1)[..., cut:n - cut].mean(axis=-1)


def _iqm(parts: list[np.ndarray]) -> np.ndarray:
    return _trimmed(_pooled(parts))


def _median(parts: list[np.ndarray]) -> np.ndarray:
    return np.median(_pooled(parts), axis=-1)


ESTIMATORS: dict[str, Callable[[list[np.ndarray]], np.ndarray]] = {"mean": _mean, "iqm": _iqm, "median": _median}


def mean(scores) -> float:
    """The mean of the strata's means (rliable ``aggregate_mean``)."""
    return float(_mean(strata(scores)))


def iqm(scores) -> float:
    """The interquartile mean of the pooled scores (rliable ``aggregate_iqm``)."""
    return float(_iqm(strata(scores)))


def median(scores) -> float:
    """The median of the pooled scores."""
    return float(_median(strata(scores)))


# ------------------------------------------------------------------------------------- bootstrap
def _resample(parts: list[np.ndarray], reps: int, rng: np.random.Generator,
              index: list[np.ndarray] | None = None) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Each stratum resampled with replacement ``reps`` times: arrays of shape (reps, n_k), and the indices
    (pass ``index`` to reuse them: a paired resample)."""
    if index is None:
        index = [rng.integers(0, p.size, size=(reps, p.size)) for p in parts]
    return [p[i] for p, i in zip(parts, index)], index


def percentile_interval(replicates: np.ndarray, level: float = LEVEL) -> tuple[float, float]:
    """The percentile interval: the ``(1 − level)/2`` and ``(1 + level)/2`` quantiles of the replicates."""
    lo, hi = np.percentile(replicates, [50 * (1 - level), 50 * (1 + level)], axis=0)
    return float(lo), float(hi)


def bootstrap_ci(scores, estimator: str | Callable = "mean", *, reps: int = DEFAULT_REPS,
                 seed: int = DEFAULT_SEED, level: float = LEVEL) -> tuple[float, float] | None:
    """The stratified percentile bootstrap interval of ``estimator`` ("mean", "iqm", "median", or a function
    of a list of strata reducing their last axis); ``None`` with fewer than 2 runs in some stratum."""
    parts = strata(scores)
    if min(p.size for p in parts) < 2:
        return None
    f = ESTIMATORS[estimator] if isinstance(estimator, str) else estimator
    resampled, _ = _resample(parts, reps, np.random.default_rng(seed))
    return percentile_interval(f(resampled), level)


def aggregate(scores, *, reps: int = DEFAULT_REPS, seed: int = DEFAULT_SEED, level: float = LEVEL) -> dict:
    """``{"n", "mean", "mean_ci", "iqm", "iqm_ci", "median", "median_ci"}`` of one configuration's scores;
    the intervals are ``[lo, hi]`` lists or ``None`` (fewer than 2 runs). The three intervals come from the
    same resamples."""
    parts = strata(scores)
    out: dict = {"n": sum(p.size for p in parts)}
    if min(p.size for p in parts) >= 2:
        resampled, _ = _resample(parts, reps, np.random.default_rng(seed))
    for name, f in ESTIMATORS.items():
        out[name] = float(f(parts))
        out[f"{name}_ci"] = list(percentile_interval(f(resampled), level)) \
            if min(p.size for p in parts) >= 2 else None
    return out


# ------------------------------------------------------------------------- comparing two configurations
def _pairs_above(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """``mean over (i, j) of [x_i > y_j] + 0.5·[x_i = y_j]`` over the last axes; x (..., n), y (..., m)."""
    xs, ys = x[..., :, None], y[..., None, :]
    return ((xs > ys).mean(axis=(-2, -1)) + 0.5 * (xs == ys).mean(axis=(-2, -1)))


def prob_improvement(x, y) -> float:
    """P(X > Y): a run of X beats a run of Y (ties count ½), averaged over strata (rliable's form)."""
    xp, yp = strata(x), strata(y)
    _same_strata(xp, yp)
    return float(np.mean([_pairs_above(a, b) for a, b in zip(xp, yp)]))


def _same_strata(xp: list[np.ndarray], yp: list[np.ndarray]) -> None:
    if len(xp) != len(yp):
        raise ValueError(f"X has {len(xp)} strata and Y {len(yp)}: compare the same tasks")


def prob_improvement_ci(x, y, *, reps: int = DEFAULT_REPS, seed: int = DEFAULT_SEED,
                        level: float = LEVEL) -> tuple[float, float] | None:
    """The percentile bootstrap interval of P(X > Y), X's and Y's runs resampled independently within each
    stratum; ``None`` when a side has fewer than 2 runs in some stratum."""
    xp, yp = strata(x), strata(y)
    _same_strata(xp, yp)
    if min(p.size for p in xp + yp) < 2:
        return None
    rng = np.random.default_rng(seed)
    xr, _ = _resample(xp, reps, rng)
    yr, _ = _resample(yp, reps, rng)
    per_stratum = []
    for a, b in zip(xr, yr):
        step = max(1, _CHUNK // (a.shape[1] * b.shape[1]))  # bounded memory for many runs
        per_stratum.append(np.concatenate([_pairs_above(a[i:i + step], b[i:i + step])
                                           for i in range(0, reps, step)]))
    return percentile_interval(np.mean(per_stratum, axis=0), level)


def paired_difference(x, y, *, reps: int = DEFAULT_REPS, seed: int = DEFAULT_SEED,
                      level: float = LEVEL) -> tuple[float, tuple[float, float] | None]:
    """``(mean of x_s − y_s, its bootstrap interval)`` for runs aligned by seed (``x[k]`` and ``y[k]`` share
    one; per stratum the same length): the seeds are resampled jointly, the mean is the strata's mean."""
    xp, yp = strata(x), strata(y)
    _same_strata(xp, yp)
    for a, b in zip(xp, yp):
        if a.size != b.size:
            raise ValueError(f"a paired difference needs the same runs on both sides, got {a.size} and {b.size}")
    diffs = [a - b for a, b in zip(xp, yp)]
    point = float(_mean(diffs))
    if min(d.size for d in diffs) < 2:
        return point, None
    resampled, _ = _resample(diffs, reps, np.random.default_rng(seed))
    return point, percentile_interval(_mean(resampled), level)


# ---------------------------------------------------------------------------------- performance profiles
def profile_thresholds(all_scores: Sequence, points: int = 41) -> list[float]:
    """``points`` evenly spaced thresholds from the lowest score to the highest (of every configuration)."""
    pooled = np.concatenate([_pooled(strata(s)) for s in all_scores]) if len(all_scores) else np.zeros(0)
    if not pooled.size:
        return []
    lo, hi = float(pooled.min()), float(pooled.max())
    if hi <= lo:
        lo, hi = lo - 0.5, hi + 0.5
    return np.linspace(lo, hi, points).tolist()


def performance_profile(scores, thresholds: Sequence[float], *, reps: int = DEFAULT_REPS,
                        seed: int = DEFAULT_SEED, level: float = LEVEL) -> dict:
    """The score distribution (rliable ``create_performance_profile``, run scores): for each threshold τ the
    fraction of the pooled runs scoring above τ, with its stratified bootstrap interval.
    ``{"fraction": [...], "ci_low": [...], "ci_high": [...]}`` (the intervals ``None`` with under 2 runs)."""
    parts = strata(scores)
    tau = np.asarray(thresholds, dtype=float)
    frac = (_pooled(parts)[:, None] > tau).mean(axis=0)
    out = {"fraction": frac.tolist(), "ci_low": None, "ci_high": None}
    if min(p.size for p in parts) >= 2 and tau.size:
        resampled, _ = _resample(parts, reps, np.random.default_rng(seed))
        boot = (_pooled(resampled)[:, :, None] > tau).mean(axis=1)  # (reps, thresholds)
        lo, hi = np.percentile(boot, [50 * (1 - level), 50 * (1 + level)], axis=0)
        out["ci_low"], out["ci_high"] = lo.tolist(), hi.tolist()
    return out
