"""The ScaleRL sigmoidal compute–performance curve (Khatri et al. 2025, "The Art of Scaling RL
Compute for LLMs"), fitted to a configuration's evaluations:

    R(C) = R0 + (A - R0) / (1 + (C_mid / C)^B)

R0 is the reward before any RL (the step-0 evaluation; it is held fixed, not fitted), A the
asymptotic reward, B the scaling exponent (how sharply reward rises with compute) and C_mid the
compute at which half of the gain A - R0 is reached. Compute here is ``perf/total_tokens`` (tokens
generated so far) at each evaluation; all seeds of a configuration pool into one fit.

How this departs from a plain ``curve_fit``: the curve is fitted in log-compute, with
``m = log C_mid`` as the parameter (``1/(1 + (C_mid/C)^B) = expit(B·(log C - m))``), so C_mid spanning
orders of magnitude does not upset the optimizer; the fit is started from a small grid of initial
guesses and the least-squares best is kept. Errors are ``sqrt(diag(cov))``, with
``C_mid_err = C_mid · err(m)`` (first order). Plots live in ``report.py``.

**Undetermined fits.** ``curve_fit`` returns numbers even when the data do not pin the curve down (a
6-iteration run gave A = 1.385 ± 944.6 with B at its bound). ``judge`` marks a fit *undetermined*, with the
reasons, when a parameter sits at a bound of the search box (``at_bound``), when a standard error exceeds
its parameter (or is infinite), or when fewer than ``MIN_PAST_BEND`` evaluations lie past C_mid: the
asymptote A is read from the points where the curve bends over, and three unknowns need at least three of
them there. So a run needs ``C_mid`` plus three evaluation intervals of compute; on the embedded task this
is measured in ``docs/sweeps.md``. ``fit_runs`` fits a configuration (its seeds pooled) and each seed alone
(``per_seed``: the spread of A and B across seeds, the noise floor a difference in A must beat).
"""
from __future__ import annotations

import itertools
import math

from rlexp.compare.runs import RunRecord

EVAL_METRIC = "eval/reward_mean"
COMPUTE_METRIC = "perf/total_tokens"
B_BOUNDS = (1e-2, 50.0)
MIN_PAST_BEND = 3  # evaluations past C_mid that a determined fit needs
AT_BOUND = 1e-3  # a parameter within this fraction of its search range of a bound is "at" it (B: in log B)


class FitError(ValueError):
    """The sigmoid cannot be fitted to these points; the message says why."""


def sigmoid_curve(compute, A: float, B: float, C_mid: float, r0: float):
    """``R(C) = R0 + (A - R0) / (1 + (C_mid / C)^B)`` elementwise; ``R(C ≤ 0) = R0``."""
    import numpy as np
    from scipy.special import expit

    c = np.asarray(compute, dtype=float)
    pos = c > 0
    logc = np.log(np.where(pos, c, 1.0))
    return np.where(pos, r0 + (A - r0) * expit(B * (logc - math.log(C_mid))), r0)


def fit_sigmoid(compute, reward, r0: float, *, start: dict | None = None) -> dict:
    """Fit A, B, C_mid of the ScaleRL curve with R0 = ``r0`` fixed; points with compute ≤ 0 are ignored.

    Returns ``dict(A, B, C_mid, A_err, B_err, C_mid_err, r0, n, rmse, at_bound)`` (an error is ``inf``
    when the data do not determine that parameter; ``at_bound`` names the parameters at a bound of the
    search box, e.g. ``["B"]``). ``start``: a fit (``A``, ``B``, ``C_mid``) to start from alone (one seed
    started at its configuration's pooled fit), the grid of starts only if that fails. Raises ``FitError``
    with fewer than 3 usable points, or when the reward never moves away from ``r0``.
    """
    import numpy as np
    from scipy.optimize import curve_fit
    from scipy.special import expit

    c = np.asarray(compute, dtype=float).ravel()
    y = np.asarray(reward, dtype=float).ravel()
    if c.shape != y.shape:
        raise FitError(f"compute and reward differ in length ({c.size} vs {y.size})")
    if not math.isfinite(r0):
        raise FitError(f"r0 must be a finite reward, got {r0}")
    keep = (c > 0) & np.isfinite(c) & np.isfinite(y)
    c, y = c[keep], y[keep]
    if c.size < 3:
        raise FitError(f"need at least 3 points with compute > 0 to fit A, B, C_mid; got {c.size}")
    lo_y, hi_y = min(y.min(), r0), max(y.max(), r0)
    span = hi_y - lo_y
    if span <= 1e-12 * max(1.0, abs(r0)):
        raise FitError(f"the reward stays at r0={r0:.4g} at every compute: A, B, C_mid are not identifiable")
    logc = np.log(c)
    lc_lo, lc_hi = float(logc.min()), float(logc.max())
    lc_pad = 3.0 * max(lc_hi - lc_lo, 1.0)
    pad = max(span, 1.0)  # A may lie beyond the rewards seen (the curve has not saturated yet)
    lower = [lo_y - pad, B_BOUNDS[0], lc_lo - lc_pad]
    upper = [hi_y + pad, B_BOUNDS[1], lc_hi + lc_pad]

    def model(lc, A, B, m):
        return r0 + (A - r0) * expit(B * (lc - m))

    # direction of the gain: the late points against r0
    late = y[np.argsort(c)][-max(1, c.size // 3):].mean()
    ext = y.max() if late >= r0 else y.min()
    a_starts = [ext, ext + 0.25 * (ext - r0)]
    m_starts = [float(np.quantile(logc, q)) for q in (0.25, 0.5, 0.75)]

    def best_of(starts):
        best = None
        for a0, b0, m0 in starts:
            p0 = [min(max(a0, lower[0] + 1e-9), upper[0] - 1e-9), min(max(b0, lower[1] * 1.001), upper[1] * 0.999),
                  min(max(m0, lower[2] + 1e-9), upper[2] - 1e-9)]
            try:
                popt, pcov = curve_fit(model, logc, y, p0=p0, bounds=(lower, upper), maxfev=20000)
            except (RuntimeError, ValueError):
                continue
            sse = float(np.sum((model(logc, *popt) - y) ** 2))
            if best is None or sse < best[0]:
                best = (sse, popt, pcov)
        return best

    grid = list(itertools.product(a_starts, (0.5, 1.0, 3.0), m_starts))
    best = None if start is None else best_of([(start["A"], start["B"], math.log(start["C_mid"]))])
    if best is None:
        best = best_of(grid)
    if best is None:
        raise FitError(f"curve_fit did not converge from any initial guess ({c.size} points)")
    sse, (A, B, m), pcov = best
    errs = [math.sqrt(v) if math.isfinite(v) and v >= 0 else math.inf for v in np.diag(pcov)]
    C_mid = math.exp(m)
    at_bound = []
    for name, v, lo, hi in (("A", A, lower[0], upper[0]), ("B", math.log(B), *map(math.log, B_BOUNDS)),
                            ("C_mid", m, lower[2], upper[2])):
        if min(v - lo, hi - v) <= AT_BOUND * (hi - lo):
            at_bound.append(name)
    return {"A": float(A), "B": float(B), "C_mid": C_mid, "A_err": errs[0], "B_err": errs[1],
            "C_mid_err": C_mid * errs[2], "r0": float(r0), "n": int(c.size),
            "rmse": math.sqrt(sse / c.size), "at_bound": at_bound}


def judge(fit: dict, past_bend: int | None = None) -> tuple[bool, str | None]:
    """``(determined, reason)``: False with the reasons (joined by "; ") when a parameter is at a bound, a
    standard error exceeds its parameter, or ``past_bend`` (evaluations past C_mid) < ``MIN_PAST_BEND``."""
    reasons = []
    bounds = {"A": "its bound", "B": f"its bound ({B_BOUNDS[0]:g}..{B_BOUNDS[1]:g})", "C_mid": "its bound"}
    for name in fit.get("at_bound", []):
        reasons.append(f"{name} = {fit[name]:.4g} at {bounds[name]}")
    for name in ("A", "B", "C_mid"):
        err = fit[f"{name}_err"]
        if not math.isfinite(err) or err > abs(fit[name]):
            reasons.append(f"{name} ± {err:.4g} exceeds |{name}| = {abs(fit[name]):.4g}")
    if past_bend is not None and past_bend < MIN_PAST_BEND:
        reasons.append(f"{past_bend} evaluation{'s' if past_bend != 1 else ''} past C_mid "
                       f"(needs {MIN_PAST_BEND}: run longer)")
    return not reasons, "; ".join(reasons) or None


def _value_at(history: list[tuple[int, float]], step: int) -> float | None:
    """The cumulative metric at ``step``: its value there, else at the latest step logged before."""
    before = [v for s, v in history if s <= step]
    return before[-1] if before else None


def fit_points(runs: list[RunRecord]) -> tuple[list[float], list[float], float]:
    """``(compute, reward, r0)`` pooled over ``runs``: ``perf/total_tokens`` at each ``eval/reward_mean``
    step, and R0 = the mean step-0 evaluation. Raises ``FitError`` when there is no step-0 evaluation."""
    compute, reward, starts = [], [], []
    for run in runs:
        tokens = run.history(COMPUTE_METRIC)
        for step, r in run.history(EVAL_METRIC):
            if step == 0:
                starts.append(r)
                continue
            c = _value_at(tokens, step)
            if c is not None and c > 0:
                compute.append(c)
                reward.append(r)
    if not starts:
        raise FitError(f"no step-0 {EVAL_METRIC} in {len(runs)} run(s): R0 (the warm-start reward) is unknown")
    return compute, reward, sum(starts) / len(starts)


def evaluations_past(runs: list[RunRecord], c_mid: float) -> int:
    """How many evaluation steps (after step 0) of ``runs`` come at more compute than ``c_mid``: at a step,
    the mean ``perf/total_tokens`` of the runs that evaluated there."""
    at_step: dict[int, list[float]] = {}
    for run in runs:
        tokens = run.history(COMPUTE_METRIC)
        for step, _ in run.history(EVAL_METRIC):
            c = _value_at(tokens, step)
            if step > 0 and c is not None:
                at_step.setdefault(step, []).append(c)
    return sum(sum(cs) / len(cs) > c_mid for cs in at_step.values())


def fit_runs(runs: list[RunRecord], *, per_seed: bool = False) -> dict:
    """The sigmoid fitted to the pooled evaluations of ``runs`` (one configuration's seeds), with
    ``past_bend``, ``determined`` and ``reason`` (``judge``). ``per_seed``: also each run fitted alone
    (started from the pooled fit), ``per_seed = {"A": [...], "B": [...], "determined": [...], "runs": n,
    "A_sd", "B_sd"}`` over the runs whose fit did not fail; the sds (ddof 1) over the determined ones only
    (None under 2): a seed whose own fit ran to a bound says nothing about the spread."""
    compute, reward, r0 = fit_points(runs)
    fit = fit_sigmoid(compute, reward, r0)
    fit["past_bend"] = evaluations_past(runs, fit["C_mid"])
    fit["determined"], fit["reason"] = judge(fit, fit["past_bend"])
    if per_seed and len(runs) > 1:
        fits = []
        for run in runs:
            try:
                one = fit_sigmoid(*fit_points([run]), start=fit)
            except FitError:
                continue
            one["determined"] = judge(one, evaluations_past([run], one["C_mid"]))[0]
            fits.append(one)
        good = [f for f in fits if f["determined"]]
        fit["per_seed"] = {"A": [f["A"] for f in fits], "B": [f["B"] for f in fits],
                           "determined": [f["determined"] for f in fits], "runs": len(runs),
                           "A_sd": _sd([f["A"] for f in good]), "B_sd": _sd([f["B"] for f in good])}
    return fit


def _sd(values: list[float]) -> float | None:
    if len(values) < 2:
        return None
    m = sum(values) / len(values)
    return math.sqrt(sum((v - m) ** 2 for v in values) / (len(values) - 1))
