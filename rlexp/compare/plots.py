"""The report's figures, each a function from runs / configurations to a matplotlib ``Figure``.

Figures are built with ``matplotlib.figure.Figure`` and rendered by the Agg canvas, never through
``pyplot``, so making a report changes no global matplotlib state (no backend switch, no open
windows). A function returns ``None`` when its figure does not apply (e.g. λ does not vary).
Curves use FINISHED runs only: a failed run's partial history would bias the mean. The HTML page
that holds the figures is assembled in ``report.py``.
"""
from __future__ import annotations

import math

from rlexp.compare.aggregate import Group, metric_value, short_key, sort_value
from rlexp.compare.fit import EVAL_METRIC, _value_at, sigmoid_curve
from rlexp.compare.runs import RunRecord

TRAIN_METRICS = ("train/clipfrac", "train/approx_kl", "train/entropy", "train/response_length")
LAMBDA_METRICS = ("train/advantage_var", "train/adv_bias_vs_mc", "train/adv_mse_vs_mc",
                  "train/explained_variance")
GAMMA, LAM, CLIP = "algorithm.gamma", "algorithm.lam", "algorithm.clip_eps"
WALL_METRIC = "perf/total_seconds"  # cumulative seconds in training_step (rollout + update; evaluations excluded)


def new_figure(ncols: int = 1, *, width: float = 6.0, height: float = 4.0):
    """A figure with ``ncols`` side-by-side axes, rendered by the Agg canvas."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width * ncols, height), layout="constrained")
    FigureCanvasAgg(fig)
    axes = [fig.add_subplot(1, ncols, i + 1) for i in range(ncols)]
    return fig, axes


def _colors(n: int):
    from matplotlib import colormaps

    cmap = colormaps["tab10" if n <= 10 else "tab20"]
    return [cmap(i % cmap.N) for i in range(n)]


def _as_float(v: str | None) -> float | None:
    try:
        return float(v) if v is not None else None
    except ValueError:
        return None


def _values_per_step(runs: list[RunRecord], metric: str) -> dict[int, list[float]]:
    """step -> the finite values of ``metric`` the runs logged at that step."""
    per_step: dict[int, list[float]] = {}
    for run in runs:
        for step, v in run.history(metric):
            if math.isfinite(v):
                per_step.setdefault(step, []).append(v)
    return per_step


def bootstrap_band(runs: list[RunRecord], metric: str, *, reps: int = 2000):
    """``(steps, mean, low, high)`` of ``metric`` over runs at every step any of them logged; the band is
    the percentile bootstrap 95% interval of the mean over the runs at that step (``stats.bootstrap_ci``,
    seeded; the mean itself where a step has one value). Empty lists when no run logged it."""
    from rlexp.compare import stats

    per_step = _values_per_step(runs, metric)
    steps = sorted(per_step)
    means = [sum(per_step[s]) / len(per_step[s]) for s in steps]
    cis = [stats.bootstrap_ci(per_step[s], reps=reps) or (m, m) for s, m in zip(steps, means)]
    return steps, means, [lo for lo, _ in cis], [hi for _, hi in cis]


def mean_band(runs: list[RunRecord], metric: str):
    """``(steps, mean, low, high)`` of ``metric`` over runs at every step any of them logged;
    the band is the min–max over the runs at that step. Empty lists when no run logged it."""
    per_step = _values_per_step(runs, metric)
    steps = sorted(per_step)
    vals = [per_step[s] for s in steps]
    return steps, [sum(v) / len(v) for v in vals], [min(v) for v in vals], [max(v) for v in vals]


def _legend(ax, n: int) -> None:
    """A legend inside the axes for a few lines; outside on the right (the figure growing to fit it)
    for many, so that a 36-configuration sweep does not squash the plot."""
    if not n:
        return
    if n <= 8:
        ax.legend(fontsize=8, loc="best")
        return
    _figure_legend(ax.figure, ax)


def _figure_legend(fig, ax) -> None:
    """One legend for side-by-side panels, outside them on the right (the lines are the same)."""
    handles, labels = ax.get_legend_handles_labels()
    if not handles:
        return
    n = len(handles)
    ncol = 1 if n <= 20 else 2
    if n > 8:  # make room: the legend's rows set the height, its columns add width
        w, h = fig.get_size_inches()
        fig.set_size_inches(w + 2.6 * ncol, max(h, 0.16 * math.ceil(n / ncol) + 1.0))
    fig.legend(handles, labels, loc="outside right upper", fontsize=6.5 if n > 8 else 8, ncol=ncol)


def eval_curves(groups: list[Group], differing: list[str]):
    """(a) ``eval/reward_mean`` against iterations: per configuration the mean over seeds and its
    bootstrap 95% band (``bootstrap_band``)."""
    fig, (ax,) = new_figure(width=8.0, height=4.5)
    drawn = 0
    for g, color in zip(groups, _colors(len(groups))):
        steps, mean, low, high = bootstrap_band(g.finished, EVAL_METRIC)
        if not steps:
            continue
        ax.plot(steps, mean, marker="o", ms=3, color=color, label=f"{g.label(differing)} (n={len(g.finished)})")
        ax.fill_between(steps, low, high, color=color, alpha=0.15, linewidth=0)
        drawn += 1
    if not drawn:
        return None
    ax.set(xlabel="RL iteration", ylabel=EVAL_METRIC, title="evaluation reward (mean over seeds, bootstrap 95% band)")
    ax.grid(alpha=0.3)
    _legend(ax, drawn)
    return fig


def wall_time_points(run: RunRecord) -> list[tuple[int, float, float]]:
    """``[(step, seconds, reward), ...]`` of one run: each ``eval/reward_mean`` with ``perf/total_seconds`` at
    its step (the evaluation at step s follows iteration s; step 0, before any iteration, is at 0 s). Empty
    when the run logged no ``perf/total_seconds``; an evaluation with no seconds at or before its step is left out."""
    seconds = run.history(WALL_METRIC)
    if not seconds:
        return []
    out = []
    for step, reward in run.history(EVAL_METRIC):
        t = 0.0 if step == 0 else _value_at(seconds, step)
        if t is not None and math.isfinite(reward):
            out.append((step, t, reward))
    return out


def wall_time_curves(groups: list[Group], differing: list[str]):
    """(a) ``eval/reward_mean`` against wall time (``perf/total_seconds`` at the evaluation's step): per
    configuration, each run's evaluations (faint dots) and, per evaluation step, the mean reward over seeds at
    the mean seconds over seeds (the line). ``None`` when no finished run logged ``perf/total_seconds``."""
    fig, (ax,) = new_figure(width=8.0, height=4.5)
    drawn = 0
    for g, color in zip(groups, _colors(len(groups))):
        per_step: dict[int, list[tuple[float, float]]] = {}
        for run in g.finished:
            for step, t, reward in wall_time_points(run):
                per_step.setdefault(step, []).append((t, reward))
        if not per_step:
            continue
        pts = [p for s in sorted(per_step) for p in per_step[s]]
        ax.scatter([t for t, _ in pts], [r for _, r in pts], s=8, color=color, alpha=0.3, linewidths=0)
        xs = [sum(t for t, _ in per_step[s]) / len(per_step[s]) for s in sorted(per_step)]
        ys = [sum(r for _, r in per_step[s]) / len(per_step[s]) for s in sorted(per_step)]
        ax.plot(xs, ys, marker="o", ms=3, color=color, label=f"{g.label(differing)} (n={len(g.finished)})")
        drawn += 1
    if not drawn:
        return None
    ax.set(xlabel=f"wall time: training seconds ({WALL_METRIC})", ylabel=EVAL_METRIC,
           title="evaluation reward against wall time (mean over seeds per evaluation step)")
    ax.grid(alpha=0.3)
    _legend(ax, drawn)
    return fig


def train_curves(groups: list[Group], differing: list[str]):
    """(c) clip fraction, approximate KL, entropy and response length against iterations, one line
    per configuration (mean over seeds)."""
    present = [m for m in TRAIN_METRICS if any(r.history(m) for g in groups for r in g.finished)]
    if not present:
        return None
    fig, axes = new_figure(len(present), width=4.2, height=3.6)
    colors = _colors(len(groups))
    for ax, metric in zip(axes, present):
        for g, color in zip(groups, colors):
            steps, mean, _, _ = mean_band(g.finished, metric)
            if steps:
                ax.plot(steps, mean, color=color, lw=1.2, label=g.label(differing))
        ax.set(xlabel="RL iteration", title=metric)
        ax.grid(alpha=0.3)
    _figure_legend(fig, axes[0])
    return fig


def heatmap_applies(runs: list[RunRecord]) -> bool:
    """True when both γ and λ take more than one value among the finished runs."""
    done = [r for r in runs if r.status == "FINISHED"]
    return all(len({r.params.get(k) for r in done} - {None}) > 1 for k in (GAMMA, LAM))


def gamma_lambda_heatmap(runs: list[RunRecord], metric: str, differing: list[str]):
    """(b) The metric's mean over finished runs on a γ×λ grid, one panel per ``clip_eps`` value;
    cells no run covers are grey. Returns ``(figure, note)`` or ``None`` when γ or λ is fixed."""
    if not heatmap_applies(runs):
        return None
    import numpy as np

    done = [r for r in runs if r.status == "FINISHED" and metric_value(r, metric) is not None]
    gammas = sorted({r.params.get(GAMMA) for r in done} - {None}, key=sort_value)
    lams = sorted({r.params.get(LAM) for r in done} - {None}, key=sort_value)
    clips = sorted({r.params.get(CLIP) for r in done}, key=sort_value)
    if len(gammas) < 2 or len(lams) < 2:
        return None
    cells: dict[tuple, list[float]] = {}
    for r in done:
        cells.setdefault((r.params.get(CLIP), r.params.get(GAMMA), r.params.get(LAM)), []).append(
            metric_value(r, metric))
    grids = []
    for clip in clips:
        grid = np.full((len(gammas), len(lams)), np.nan)
        for i, gm in enumerate(gammas):
            for j, lm in enumerate(lams):
                vals = cells.get((clip, gm, lm))
                if vals:
                    grid[i, j] = sum(vals) / len(vals)
        grids.append(grid)
    finite = np.concatenate([g[np.isfinite(g)] for g in grids])
    vmin, vmax = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
    if vmax <= vmin:
        vmin, vmax = vmin - 0.5, vmax + 0.5
    from matplotlib import colormaps

    cmap = colormaps["viridis"].copy()
    cmap.set_bad("#d9d9d9")
    fig, axes = new_figure(len(clips), width=max(3.2, 1.0 + 0.9 * len(lams)), height=max(3.0, 1.2 + 0.6 * len(gammas)))
    for ax, clip, grid in zip(axes, clips, grids):
        im = ax.imshow(np.ma.masked_invalid(grid), cmap=cmap, vmin=vmin, vmax=vmax, origin="lower", aspect="auto")
        ax.set_xticks(range(len(lams)), lams)
        ax.set_yticks(range(len(gammas)), gammas)
        ax.set(xlabel="λ (lam)", ylabel="γ (gamma)", title=f"clip_eps={clip}" if clip is not None else "")
        for i in range(len(gammas)):
            for j in range(len(lams)):
                v = grid[i, j]
                text = "—" if not np.isfinite(v) else f"{v:.3f}"
                dark = np.isfinite(v) and (v - vmin) / (vmax - vmin) < 0.6
                ax.text(j, i, text, ha="center", va="center", fontsize=8, color="white" if dark else "black")
    fig.colorbar(im, ax=axes, shrink=0.85, label=metric)
    pooled = [short_key(k) for k in differing if k not in (GAMMA, LAM, CLIP)]
    note = (f"Each cell: mean {metric} over the finished runs with that γ, λ and clip_eps"
            + (f" (pooled over {', '.join(pooled)})" if pooled else "") + "; grey = no run.")
    return fig, note


def sigmoid_fits(groups: list[Group], differing: list[str], fits: dict[str, dict | str], points: dict):
    """(d) Evaluation reward against compute (generated tokens, log scale) with each configuration's
    fitted ScaleRL curve; ``points[label] = (compute, reward, r0)``, ``fits[label]`` a fit or an error."""
    import numpy as np

    fig, (ax,) = new_figure(width=8.0, height=4.5)
    drawn = 0
    for g, color in zip(groups, _colors(len(groups))):
        label = g.label(differing)
        if label not in points:
            continue
        compute, reward, _ = points[label]
        if not compute:
            continue
        ax.scatter(compute, reward, s=10, color=color, alpha=0.6)
        fit = fits.get(label)
        if isinstance(fit, dict):  # an undetermined fit: dashed, and no number in its label
            grid = np.logspace(math.log10(min(compute)), math.log10(max(compute)), 200)
            determined = fit.get("determined", True)
            ax.plot(grid, sigmoid_curve(grid, fit["A"], fit["B"], fit["C_mid"], fit["r0"]), color=color,
                    ls="-" if determined else "--", alpha=1.0 if determined else 0.6,
                    label=f"{label}: A={fit['A']:.3f}" if determined else f"{label}: undetermined")
        else:
            ax.plot([], [], color=color, ls=":", label=f"{label}: fit failed")
        drawn += 1
    if not drawn:
        return None
    ax.set_xscale("log")
    ax.set(xlabel="compute: generated tokens (perf/total_tokens)", ylabel=EVAL_METRIC,
           title="ScaleRL fit R(C) = R0 + (A − R0) / (1 + (C_mid / C)^B)")
    ax.grid(alpha=0.3, which="both")
    _legend(ax, drawn)
    return fig


def lambda_diagnostics(runs: list[RunRecord], differing: list[str]):
    """(e) Advantage variance, GAE bias and MSE against the Monte-Carlo advantages, and the critic's
    explained variance, each averaged over iterations and seeds, as functions of λ; one line per
    combination of the other differing keys. ``None`` when λ is fixed or no run logged them."""
    done = [r for r in runs if r.status == "FINISHED" and _as_float(r.params.get(LAM)) is not None]
    if len({r.params[LAM] for r in done}) < 2:
        return None
    present = [m for m in LAMBDA_METRICS if any(r.history(m) for r in done)]
    if not present:
        return None
    others = [k for k in differing if k != LAM]
    lines: dict[str, dict[float, dict[str, list[float]]]] = {}
    for r in done:
        name = " ".join(f"{short_key(k)}={r.params.get(k, '—')}" for k in others) or "all runs"
        at_lam = lines.setdefault(name, {}).setdefault(float(r.params[LAM]), {})
        for m in present:
            vals = [v for _, v in r.history(m) if math.isfinite(v)]
            if vals:
                at_lam.setdefault(m, []).append(sum(vals) / len(vals))
    fig, axes = new_figure(len(present), width=4.2, height=3.6)
    colors = _colors(len(lines))
    for ax, m in zip(axes, present):
        for (name, by_lam), color in zip(sorted(lines.items()), colors):
            pts = sorted((lam, sum(v[m]) / len(v[m])) for lam, v in by_lam.items() if v.get(m))
            if pts:
                ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", ms=4, color=color, label=name)
        if m in ("train/adv_bias_vs_mc", "train/explained_variance"):
            ax.axhline(0.0, color="grey", lw=0.8, ls="--")
        ax.set(xlabel="λ (lam)", title=m)
        ax.grid(alpha=0.3)
    _figure_legend(fig, axes[0])
    return fig


def performance_profiles(c):
    """The performance profile of each configuration of ``c`` (a ``summary.Comparison``): the fraction of
    its runs scoring above τ against τ, with the bootstrap 95% band; ``None`` without thresholds."""
    if not c.thresholds or not c.profiles:
        return None
    fig, (ax,) = new_figure(width=8.0, height=4.0)
    for s, color in zip(c.stats, _colors(len(c.stats))):
        prof = c.profiles.get(c.label(s))
        if prof is None:
            continue
        ax.step(c.thresholds, prof["fraction"], where="post", color=color, label=f"#{c.rank(c.label(s))} "
                f"{c.label(s)} (n={s.n})")
        if prof["ci_low"] is not None:
            ax.fill_between(c.thresholds, prof["ci_low"], prof["ci_high"], step="post", color=color, alpha=0.12,
                            linewidth=0)
    ax.set(xlabel=f"τ ({c.metric})", ylabel="fraction of runs > τ", ylim=(-0.02, 1.02),
           title="performance profiles (bootstrap 95% band)")
    ax.grid(alpha=0.3)
    _legend(ax, len(c.profiles))
    return fig
