"""Everything ``rlexp compare`` reports, computed once: the terminal tables, the HTML report, ``--json`` and
the JSON artifact on a sweep's parent run all read one ``Comparison``, so they show the same numbers.

    configurations  per configuration (best mean first): mean, IQM, median with bootstrap 95% intervals, n,
                    the Student-t interval of the mean, each run's score and seed (``aggregate.summarize``),
                    ``eval/pass_at_K`` aggregated the same way, the performance profile, the ScaleRL fit
    pairs           P(a > b) with its interval for the pairs asked about (``choose_pairs``), and the paired
                    difference a − b with its interval when a and b ran the same seeds

Which pairs: ``--baseline CONFIG`` compares every other configuration with it (a = the other, b = the
baseline); otherwise every pair when there are at most ``ALL_PAIRS_MAX`` configurations (a ranked above
b), else the best configuration against each other one. Runs with the same seed train on the same prompts
in the same order (``rlexp.rollout.sampler.PromptPool``), so a difference at equal seeds is a paired one;
it is reported only when each side has every seed once and both have the same seeds.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

from rlexp.compare import stats as st
from rlexp.compare.aggregate import ConfigStats, Group, canonical, metric_value, short_key, sort_value, summarize
from rlexp.compare.fit import FitError, fit_points, fit_runs
from rlexp.compare.runs import CompareError, RunRecord

ALL_PAIRS_MAX = 6
PASS_AT_K = re.compile(r"eval/pass_at_(\d+)")


@dataclass
class Comparison:
    metric: str
    differing: list[str]
    stats: list[ConfigStats]  # best mean first
    pairs: list[dict]
    pair_mode: str  # "all pairs", "against the baseline ...", "the best against each other"
    pass_at_k: dict[str, dict[str, dict]]  # label -> metric -> aggregate
    thresholds: list[float]
    profiles: dict[str, dict]  # label -> stats.performance_profile
    fits: dict[str, dict | str] = field(default_factory=dict)  # label -> fit, or why it failed
    points: dict[str, tuple] = field(default_factory=dict)  # label -> (compute, reward, r0)
    reps: int = st.DEFAULT_REPS
    seed: int = st.DEFAULT_SEED

    def label(self, s: ConfigStats) -> str:
        return s.group.label(self.differing)

    def rank(self, label: str) -> int:
        """1 for the best configuration."""
        return [self.label(s) for s in self.stats].index(label) + 1


def find_config(stats: list[ConfigStats], differing: list[str], text: str) -> ConfigStats:
    """The configuration ``--baseline`` names: its label (``clip_eps=0.1 lam=0.95``), or ``key=value`` pairs
    (short or full keys, separated by spaces or commas) that only it matches; CompareError otherwise."""
    labels = [s.group.label(differing) for s in stats]
    if text.strip() in labels:
        return stats[labels.index(text.strip())]
    wanted = {}
    for part in re.split(r"[\s,]+", text.strip()):
        if not part:
            continue
        key, eq, value = part.partition("=")
        full = [k for k in differing if key in (k, short_key(k))]
        if not eq or not full:
            raise CompareError(f"--baseline {text!r}: {part!r} is not key=value of a key that differs between the "
                               f"configurations ({', '.join(short_key(k) for k in differing) or 'none differ'})")
        wanted[full[0]] = canonical(value)
    matches = [s for s in stats if all(canonical(s.group.values.get(k)) == v for k, v in wanted.items())]
    if len(matches) != 1:
        what = "no configuration" if not matches else f"{len(matches)} configurations"
        raise CompareError(f"--baseline {text!r} matches {what}; configurations: {'; '.join(labels)}")
    return matches[0]


def choose_pairs(stats: list[ConfigStats], differing: list[str],
                 baseline: str | None) -> tuple[list[tuple[ConfigStats, ConfigStats]], str]:
    """``([(a, b), ...], mode)``: the pairs to compare (configurations without a score left out)."""
    scored = [s for s in stats if s.n]
    if baseline is not None:
        base = find_config(stats, differing, baseline)
        return [(s, base) for s in scored if s is not base and base.n], \
            f"against the baseline {base.group.label(differing)}"
    if len(scored) <= ALL_PAIRS_MAX:
        return [(a, b) for i, a in enumerate(scored) for b in scored[i + 1:]], "all pairs"
    return [(scored[0], s) for s in scored[1:]], \
        f"the best against each other ({len(scored)} configurations; --baseline CONFIG picks another)"


def _paired(a: ConfigStats, b: ConfigStats) -> tuple[list[float], list[float], list[str]] | None:
    """a's and b's scores aligned by seed, when both ran the same seeds, each once."""
    if None in a.seeds or None in b.seeds or len(set(a.seeds)) != a.n or len(set(b.seeds)) != b.n:
        return None
    if set(a.seeds) != set(b.seeds):
        return None
    order = sorted(a.seeds, key=sort_value)  # seeds as numbers: 2 before 10
    xa, xb = dict(zip(a.seeds, a.values)), dict(zip(b.seeds, b.values))
    return [xa[s] for s in order], [xb[s] for s in order], order


def pair_entry(a: ConfigStats, b: ConfigStats, differing: list[str], *, reps: int, seed: int) -> dict:
    """One pair of the JSON document (see ``to_json``)."""
    ci = st.prob_improvement_ci(a.values, b.values, reps=reps, seed=seed)
    entry = {"a": a.group.label(differing), "b": b.group.label(differing),
             "prob_improvement": st.prob_improvement(a.values, b.values), "ci": None if ci is None else list(ci),
             "n_a": a.n, "n_b": b.n, "paired_difference": None, "paired_ci": None, "paired_seeds": None,
             "paired_wins": None}
    paired = _paired(a, b)
    if paired is not None:
        xa, xb, seeds = paired
        diff, dci = st.paired_difference(xa, xb, reps=reps, seed=seed)
        entry.update(paired_difference=diff, paired_ci=None if dci is None else list(dci), paired_seeds=seeds,
                     paired_wins=sum(x > y for x, y in zip(xa, xb)))
    return entry


def pass_at_k_metrics(runs: list[RunRecord]) -> list[str]:
    """The ``eval/pass_at_K`` metrics any run logged, by K."""
    names = {m for r in runs for m in r.metrics if PASS_AT_K.fullmatch(m)}
    return sorted(names, key=lambda m: int(PASS_AT_K.fullmatch(m).group(1)))


def compare(runs: list[RunRecord], groups: list[Group], differing: list[str], metric: str, *,
            baseline: str | None = None, reps: int = st.DEFAULT_REPS, seed: int = st.DEFAULT_SEED,
            fits: bool = True) -> Comparison:
    """Compute every number of the comparison (``fits``: also the ScaleRL fits, which need histories)."""
    stats = summarize(groups, metric, reps=reps, seed=seed)
    chosen, mode = choose_pairs(stats, differing, baseline)
    pairs = [pair_entry(a, b, differing, reps=reps, seed=seed) for a, b in chosen]
    pak = {}
    for name in pass_at_k_metrics(runs):
        for s in stats:
            vals = [v for v in (metric_value(r, name) for r in s.group.finished) if v is not None]
            if vals:
                pak.setdefault(s.group.label(differing), {})[name] = st.aggregate(vals, reps=reps, seed=seed)
    scored = [s for s in stats if s.n]
    thresholds = st.profile_thresholds([s.values for s in scored])
    profiles = {s.group.label(differing): st.performance_profile(s.values, thresholds, reps=reps, seed=seed)
                for s in scored}
    out = Comparison(metric=metric, differing=differing, stats=stats, pairs=pairs, pair_mode=mode,
                     pass_at_k=pak, thresholds=thresholds, profiles=profiles, reps=reps, seed=seed)
    if fits:
        out.fits, out.points = fit_groups(groups, differing)
    return out


def fit_groups(groups: list[Group], differing: list[str]) -> tuple[dict, dict]:
    """The ScaleRL fit of each configuration's finished runs (seeds pooled, and each seed alone when the
    pooled fit is determined). Returns ``(fits, points)`` keyed by label: ``fits[label]`` the fit dict
    (``fit.fit_runs``) or why it failed (a string); ``points[label] = (compute, reward, r0)``."""
    fits: dict[str, dict | str] = {}
    points: dict[str, tuple] = {}
    for g in groups:
        label = g.label(differing)
        if not g.finished:
            fits[label] = "no finished run"
            continue
        try:
            points[label] = fit_points(g.finished)
            fit = fit_runs(g.finished)
            if fit["determined"] and len(g.finished) > 1:
                fit = fit_runs(g.finished, per_seed=True)
            fits[label] = fit
        except FitError as e:
            fits[label] = str(e)
    return fits, points


def _clean(x):
    """JSON-safe: non-finite floats become None, tuples lists."""
    if isinstance(x, float):
        return x if math.isfinite(x) else None
    if isinstance(x, dict):
        return {k: _clean(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_clean(v) for v in x]
    return x


def fit_json(fit: dict | str | None) -> dict | None:
    """A fit as the JSON document gives it: the fitted numbers with ``determined`` and ``reason`` (a fit
    that failed: ``{"determined": false, "failed": true, "reason": why}``)."""
    if fit is None:
        return None
    if isinstance(fit, str):
        return {"determined": False, "failed": True, "reason": fit}
    return _clean(dict(fit, failed=False))


def to_json(c: Comparison, *, sweep: str | None, scope: str) -> dict:
    """The ``rlexp compare --json`` document (docs/sweeps.md lists its fields)."""
    configs = []
    for s in c.stats:
        label = c.label(s)
        configs.append({
            "name": label, "rank": c.rank(label), "params": {k: s.group.values.get(k) for k in c.differing},
            "n": s.n, "n_failed": s.n_failed, "mean": s.mean, "mean_ci": s.mean_ci, "mean_t_ci": s.t_ci,
            "iqm": s.iqm, "iqm_ci": s.iqm_ci, "median": s.median, "median_ci": s.median_ci,
            "values": s.values, "seeds": s.seeds, "run_ids": [r.run_id for r in s.runs],
            "pass_at_k": c.pass_at_k.get(label, {}), "profile": c.profiles.get(label),
            "fit": fit_json(c.fits.get(label)),
        })
    seeds = [frozenset(s.seeds) for s in c.stats if s.n]
    return _clean({
        "sweep": sweep, "scope": scope, "metric": c.metric, "differing_keys": c.differing,
        "estimators": {"interval": "percentile bootstrap, 95%, runs resampled with replacement",
                       "reps": c.reps, "seed": c.seed, "iqm": "mean of the middle 50% (trim_mean 0.25)",
                       "prob_improvement": "mean over run pairs of [a > b] + 0.5 [a = b]"},
        "paired": bool(seeds) and all(x == seeds[0] for x in seeds) and all(s.n == len(set(s.seeds))
                                                                           for s in c.stats if s.n),
        "pair_mode": c.pair_mode, "profile_thresholds": c.thresholds,
        "configurations": configs, "pairs": c.pairs,
    })
