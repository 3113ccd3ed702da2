"""Grouping runs into configurations and summarizing one metric per configuration.

A *configuration* is a set of runs that share every param that matters for comparison: by default
all params except ``seed`` and the bookkeeping keys in ``IGNORED_PREFIXES`` (so the seeds of one
configuration pool together); ``by=[...]`` groups by exactly the keys given. The *differing keys*
are the grouping keys whose values differ between configurations — they name each configuration
(``clip_eps=0.1 lam=0.95``) and become the comparison table's columns. Values are compared by what
they mean (``canonical``): MLflow keeps params as the strings they were logged as, so ``lam=1`` and
``lam=1.0`` are one configuration, shown as the first run spelled it (``unify_values``).

Per configuration ``summarize`` gives the metric over FINISHED runs: the mean, IQM and median, each with
its percentile bootstrap 95% interval over the runs (``stats.py``; undefined for n = 1), the half-width
of the mean's 95% Student-t interval ``t_{0.975, n-1} · s / √n``, n, each run's seed (for paired
comparisons), and the number of FAILED runs. Pairs, fits and the JSON document are ``summary.py``'s;
tables and plots live in ``table.py`` and ``report.py``.
"""
from __future__ import annotations

import dataclasses
import difflib
import math
import re
from dataclasses import dataclass, field
from decimal import Decimal

from rlexp.compare import stats as st
from rlexp.compare.runs import CompareError, RunRecord

DEFAULT_METRIC = "summary/final_eval_reward"
IGNORED_KEYS = ("seed",)
# params that never distinguish configurations (where and how a run was recorded or displayed)
IGNORED_PREFIXES = ("tracking.", "hardware.num_threads", "trainer.progress_bar", "trainer.num_samples_logged")


def short_key(key: str) -> str:
    """``algorithm.clip_eps`` → ``clip_eps`` (other groups keep their prefix: ``model.name``)."""
    return key.removeprefix("algorithm.")


# a decimal number as Python, YAML or Hydra writes one: 1, -2, 1.0, .5, 1.00, 1e0, 2.5E-3, inf, nan
_NUMBER = re.compile(r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?|[+-]?(?:inf|infinity|nan)", re.IGNORECASE)


def canonical(v: str | None):
    """What a logged param value means, for telling configurations apart (``None`` stays ``None``).

    A number is its exact decimal value — ``1``, ``1.0``, ``1.00``, ``1e0``, ``+1`` are one, ``-0`` is
    ``0``, and integers keep every digit (no rounding through float) — written as ``(digits, exponent)``
    without trailing zeros: ``("number", "1e0")``. ``true``/``True``/``TRUE`` are one boolean (``false``
    likewise). Any other string is itself, case and all (``v1`` and ``v1.0`` stay two values).
    """
    if v is None:
        return None
    if _NUMBER.fullmatch(v):
        d = Decimal(v)
        if not d.is_finite():
            return "number", "nan" if d.is_nan() else ("-inf" if d < 0 else "inf")
        sign, digits, exp = d.as_tuple()
        text = "".join(map(str, digits)).lstrip("0")
        if not text:
            return "number", "0"
        stripped = text.rstrip("0")
        return "number", f"{'-' if sign else ''}{stripped}e{exp + len(text) - len(stripped)}"
    if v.lower() in ("true", "false"):
        return "bool", v.lower()
    return "text", v


def unify_values(runs: list[RunRecord]) -> list[RunRecord]:
    """The runs with every param value spelled as the first run (in the given order) that logged the
    same value for that key spelled it (``canonical``): after ``lam=1.0``, a run's ``lam=1`` reads
    ``1.0``. Runs whose params change are copies; the records given are not modified."""
    first: dict[tuple[str, object], str] = {}
    out = []
    for r in runs:
        params = {k: first.setdefault((k, canonical(v)), v) for k, v in r.params.items()}
        out.append(r if params == r.params else dataclasses.replace(r, params=params))
    return out


def sort_value(v: str | None):
    """Order param values numerically when they are numbers (``"0.95" < "1.0"``), else as text."""
    if v is None:
        return (2, 0.0, "")
    try:
        return (0, float(v), "")
    except ValueError:
        return (1, 0.0, v)


@dataclass
class Group:
    """One configuration: the values of the grouping keys (``None`` = the run lacks that param)."""

    key: tuple[tuple[str, str | None], ...]
    runs: list[RunRecord] = field(default_factory=list)

    @property
    def values(self) -> dict[str, str | None]:
        return dict(self.key)

    @property
    def finished(self) -> list[RunRecord]:
        return [r for r in self.runs if r.status == "FINISHED"]

    @property
    def failed(self) -> list[RunRecord]:
        return [r for r in self.runs if r.status == "FAILED"]

    def label(self, differing: list[str]) -> str:
        """The configuration's name from the differing keys, e.g. ``clip_eps=0.1 lam=0.95``."""
        vals = self.values
        parts = [f"{short_key(k)}={'—' if vals.get(k) is None else vals.get(k)}" for k in differing]
        return " ".join(parts) or "all runs"


@dataclass
class ConfigStats:
    """The metric summarized over one configuration's runs."""

    group: Group
    metric: str
    values: list[float]  # the metric of each FINISHED run that logged it
    mean: float | None  # None when no finished run logged the metric
    ci: float | None  # the Student-t 95% CI half-width; None when n < 2
    n: int
    n_failed: int
    n_missing: int  # finished runs that never logged the metric
    n_other: int  # runs neither FINISHED nor FAILED (RUNNING, KILLED...)
    seeds: list[str | None] = field(default_factory=list)  # each value's run seed (its ``seed`` param)
    mean_ci: list[float] | None = None  # percentile bootstrap 95% interval [lo, hi]; None when n < 2
    iqm: float | None = None  # interquartile mean
    iqm_ci: list[float] | None = None
    median: float | None = None
    median_ci: list[float] | None = None
    runs: list[RunRecord] = field(default_factory=list)  # the runs behind ``values``, in order

    @property
    def t_ci(self) -> list[float] | None:
        """The mean's Student-t 95% interval as ``[lo, hi]``."""
        return None if self.ci is None else [self.mean - self.ci, self.mean + self.ci]


def comparable_keys(runs: list[RunRecord]) -> list[str]:
    """Every param key of the runs except the seed and the bookkeeping keys, sorted."""
    keys = set().union(*(r.params for r in runs)) if runs else set()
    return sorted(k for k in keys if k not in IGNORED_KEYS and not k.startswith(IGNORED_PREFIXES))


def group_runs(runs: list[RunRecord], *, by: list[str] | None = None) -> list[Group]:
    """Group runs into configurations (values compared by ``canonical``, shown as ``unify_values``
    spells them), ordered by their key values (numbers numerically)."""
    runs = unify_values(runs)
    if by is not None:
        by = [k.strip() for k in by if k.strip()]
        if not by:
            raise CompareError("--by needs at least one param key, e.g. --by algorithm.lam,algorithm.gamma")
        known = set().union(*(r.params for r in runs)) if runs else set()
        for k in by:
            if k not in known:
                close = difflib.get_close_matches(k, sorted(known), n=3, cutoff=0.5)
                hint = f"; did you mean {', '.join(close)}?" if close else ""
                raise CompareError(f"--by key {k!r} is not a param of any of the {len(runs)} runs{hint}")
        keys = list(dict.fromkeys(by))
    else:
        keys = comparable_keys(runs)
    groups: dict[tuple, Group] = {}
    for run in runs:
        gkey = tuple((k, run.params.get(k)) for k in keys)
        groups.setdefault(gkey, Group(key=gkey)).runs.append(run)
    return sorted(_merge_partial(list(groups.values())), key=lambda g: [sort_value(v) for _, v in g.key])


def _merge_partial(groups: list[Group]) -> list[Group]:
    """Fold a group of runs that never started (FAILED, only some params logged — a job refused at
    validation) into the one configuration that agrees with every param it has, if exactly one does."""
    keep = []
    for g in groups:
        partial = not g.finished and any(v is None for _, v in g.key)
        if partial:
            have = {k: v for k, v in g.key if v is not None}
            matches = [h for h in groups if h is not g and h.finished
                       and all(h.values.get(k) == v for k, v in have.items())]
            if len(matches) == 1:
                matches[0].runs.extend(g.runs)
                continue
        keep.append(g)
    return keep


def differing_keys(groups: list[Group]) -> list[str]:
    """The grouping keys whose values are not the same across all configurations (in key order).
    A param missing from a configuration without finished runs (a job refused before it logged its
    config) does not count as a difference."""
    if not groups:
        return []
    keys = [k for k, _ in groups[0].key]
    counted = [g for g in groups if g.finished] or groups
    out = []
    for k in keys:
        vals = {g.values.get(k) for g in counted}
        vals |= {g.values.get(k) for g in groups if not g.finished and g.values.get(k) is not None}
        if len(vals) > 1:
            out.append(k)
    return out


def metric_value(run: RunRecord, metric: str) -> float | None:
    """A summary metric's value, or the last value (largest step) of any other metric's history."""
    v = run.metrics.get(metric)
    if v is None and run.history(metric):
        v = run.history(metric)[-1][1]
    return None if v is None or math.isnan(v) else float(v)


def mean_ci(values: list[float]) -> tuple[float | None, float | None]:
    """Mean and 95% CI half-width ``t.ppf(0.975, n-1) · s / √n`` (``s`` with ddof=1); None if undefined."""
    n = len(values)
    if n == 0:
        return None, None
    mean = sum(values) / n
    if n < 2:
        return mean, None
    from scipy.stats import t

    s = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    return mean, float(t.ppf(0.975, n - 1) * s / math.sqrt(n))


def check_metric(runs: list[RunRecord], metric: str) -> None:
    """Raise ``CompareError`` naming the metrics that exist when no run logged ``metric``."""
    if any(metric_value(r, metric) is not None for r in runs):
        return
    names = sorted(set().union(*(r.metrics for r in runs))) if runs else []
    close = difflib.get_close_matches(metric, names, n=3, cutoff=0.5)
    hint = f"did you mean {', '.join(close)}? " if close else ""
    raise CompareError(f"no run logged the metric {metric!r}; {hint}"
                       f"metrics logged: {', '.join(names) or '(none)'}")


def summarize(groups: list[Group], metric: str = DEFAULT_METRIC, *, reps: int = st.DEFAULT_REPS,
              seed: int = st.DEFAULT_SEED) -> list[ConfigStats]:
    """One ``ConfigStats`` per configuration, best mean first (configurations without a mean last);
    ``reps`` bootstrap resamples drawn from ``seed`` (``stats.aggregate``)."""
    stats = []
    for g in groups:
        vals = [(r, metric_value(r, metric)) for r in g.finished]
        present = [(r, v) for r, v in vals if v is not None]
        values = [v for _, v in present]
        mean, ci = mean_ci(values)
        n_other = len(g.runs) - len(g.finished) - len(g.failed)
        agg = st.aggregate(values, reps=reps, seed=seed) if values else {}
        stats.append(ConfigStats(group=g, metric=metric, values=values, mean=mean, ci=ci, n=len(present),
                                 n_failed=len(g.failed), n_missing=len(vals) - len(present), n_other=n_other,
                                 seeds=[r.params.get("seed") for r, _ in present], runs=[r for r, _ in present],
                                 mean_ci=agg.get("mean_ci"), iqm=agg.get("iqm"), iqm_ci=agg.get("iqm_ci"),
                                 median=agg.get("median"), median_ci=agg.get("median_ci")))
    return sorted(stats, key=lambda s: (s.mean is None, -(s.mean or 0.0)))
