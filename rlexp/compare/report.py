"""The comparison report: one self-contained ``report.html`` plus the PNG figures beside it.

Sections, in order: the comparison table (and a note on failed runs); (a) evaluation reward
against iterations; (b) a γ×λ heatmap of the metric, one panel per ``clip_eps`` (only when γ and λ
both vary); (c) training diagnostics (clip fraction, KL, entropy, response length); (d) the ScaleRL
sigmoid fit per configuration, with a table of A, B, C_mid and their errors (a fit that fails is
listed as failed); (e) λ diagnostics (advantage variance, bias and MSE against Monte-Carlo
advantages, explained variance) when λ varies. Each PNG is embedded as base64 and also saved as a
file, so the page works alone and the images can be reused. Figures are drawn in ``plots.py``.
"""
from __future__ import annotations

import base64
import html
import math
from datetime import datetime, timezone
from pathlib import Path

from rlexp.compare import plots
from rlexp.compare.aggregate import DEFAULT_METRIC, Group, differing_keys, summarize, unify_values
from rlexp.compare.fit import FitError, fit_points, fit_sigmoid
from rlexp.compare.runs import RunRecord
from rlexp.compare.table import NO_VALUE, failure_summary, html_table

REPORT_NAME = "report.html"
CSS = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1400px; color: #222; }
h1 { font-size: 1.5em; } h2 { font-size: 1.2em; margin-top: 2em; border-bottom: 1px solid #ddd; }
table { border-collapse: collapse; margin: 1em 0; font-size: 0.9em; }
caption { text-align: left; font-weight: bold; padding-bottom: 0.4em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; } th { background: #f3f3f3; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
tr.best td { font-weight: bold; color: #11772d; background: #eefaf0; }
img { max-width: 100%; } figcaption { font-size: 0.85em; color: #555; }
.note { color: #8a4b00; } .muted { color: #777; font-size: 0.85em; }
"""


def _save_png(fig, out_dir: Path, name: str) -> str:
    """Save ``fig`` as ``out_dir/name`` and return an HTML figure embedding it as base64."""
    path = out_dir / name
    fig.savefig(path, dpi=100)
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return f'<figure><img src="data:image/png;base64,{data}" alt="{html.escape(name)}">' \
           f"<figcaption>file: {html.escape(name)}</figcaption></figure>"


def _pm(value: float, err: float, fmt: str) -> str:
    err_s = NO_VALUE if not math.isfinite(err) else format(err, fmt)
    return f"{format(value, fmt)} ± {err_s}"


def fit_groups(groups: list[Group], differing: list[str]) -> tuple[dict, dict]:
    """Fit the ScaleRL curve to each configuration's finished runs (seeds pooled).

    Returns ``(fits, points)`` keyed by configuration label: ``fits[label]`` is the fit dict or the
    reason it failed (a string); ``points[label] = (compute, reward, r0)``.
    """
    fits: dict[str, dict | str] = {}
    points: dict[str, tuple] = {}
    for g in groups:
        label = g.label(differing)
        if not g.finished:
            fits[label] = "no finished run"
            continue
        try:
            points[label] = fit_points(g.finished)
            fits[label] = fit_sigmoid(*points[label])
        except FitError as e:
            fits[label] = str(e)
    return fits, points


def fit_table(fits: dict[str, dict | str]) -> str:
    """The fitted parameters as an HTML table; a failed fit gets one row saying why."""
    rows = ["<table>", "<caption>ScaleRL sigmoid fit per configuration (errors: √diag(cov))</caption>",
            "<tr><th>configuration</th><th>R0 (fixed)</th><th>A</th><th>B</th><th>C_mid (tokens)</th>"
            "<th>points</th><th>RMSE</th></tr>"]
    for label, fit in fits.items():
        name = html.escape(label)
        if isinstance(fit, str):
            rows.append(f'<tr><td>{name}</td><td colspan="6" class="note">fit failed: {html.escape(fit)}</td></tr>')
            continue
        cells = [f"{fit['r0']:.4f}", _pm(fit["A"], fit["A_err"], ".4f"), _pm(fit["B"], fit["B_err"], ".3f"),
                 _pm(fit["C_mid"], fit["C_mid_err"], ".4g"), str(fit["n"]), f"{fit['rmse']:.4f}"]
        rows.append(f"<tr><td>{name}</td>" + "".join(f'<td class="num">{html.escape(c)}</td>' for c in cells)
                    + "</tr>")
    rows.append("</table>")
    return "\n".join(rows)


def write_report(runs: list[RunRecord], groups: list[Group], out_dir: str | Path, *,
                 metric: str = DEFAULT_METRIC, title: str | None = None) -> Path:
    """Write ``report.html`` and its PNGs into ``out_dir`` (created); returns the HTML's path.

    ``runs`` are all the runs compared, ``groups`` their configurations (``aggregate.group_runs``),
    ``metric`` the one the table ranks by and the heatmap shows.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    runs = unify_values(runs)  # the heatmap's cells: lam=1 and lam=1.0 are one
    differing = differing_keys(groups)
    stats = summarize(groups, metric)
    title = title or f"rlexp comparison — {metric}"
    body = [f"<h1>{html.escape(title)}</h1>",
            f'<p class="muted">{len(runs)} runs in {len(groups)} configurations; configurations differ in: '
            f"{html.escape(', '.join(differing) or '(nothing: one configuration)')}. "
            f"Generated {datetime.now(timezone.utc):%Y-%m-%d %H:%M UTC}.</p>",
            "<h2>Comparison</h2>", html_table(stats, differing, title=f"{metric}: mean over finished runs, "
                                                                     f"95% Student-t CI")]
    note = failure_summary(stats)
    if note:
        body.append(f'<p class="note">{html.escape(note)}</p>')

    body.append("<h2>(a) Evaluation reward</h2>")
    fig = plots.eval_curves(groups, differing)
    body.append(_save_png(fig, out, "eval_reward.png") if fig else "<p>No run logged eval/reward_mean.</p>")

    heat = plots.gamma_lambda_heatmap(runs, metric, differing)
    if heat:
        fig, caption = heat
        body += ["<h2>(b) γ × λ heatmap</h2>", _save_png(fig, out, "heatmap_gamma_lam.png"),
                 f"<p>{html.escape(caption)}</p>"]

    fig = plots.train_curves(groups, differing)
    if fig:
        body += ["<h2>(c) Training diagnostics</h2>", _save_png(fig, out, "train_curves.png")]

    body.append("<h2>(d) Compute scaling: ScaleRL sigmoid fit</h2>")
    fits, points = fit_groups(groups, differing)
    fig = plots.sigmoid_fits(groups, differing, fits, points)
    if fig:
        body.append(_save_png(fig, out, "sigmoid_fit.png"))
    body.append(fit_table(fits))

    fig = plots.lambda_diagnostics(runs, differing)
    if fig:
        body += ["<h2>(e) λ diagnostics</h2>", _save_png(fig, out, "lambda_diagnostics.png"),
                 "<p>GAE(λ) advantages against the Monte-Carlo (λ = 1) advantages of the same rollouts: "
                 "bias and MSE; advantage variance; the critic's explained variance. Each point averages "
                 "over iterations and seeds.</p>"]

    page = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
            f"<title>{html.escape(title)}</title><style>{CSS}</style></head><body>", *body, "</body></html>"]
    path = out / REPORT_NAME
    path.write_text("\n".join(page), encoding="utf-8")
    return path
