"""The comparison report: one self-contained ``report.html`` plus the PNG figures beside it.

Sections, in order: the comparison table (mean, IQM, median with bootstrap intervals; a note on
failed runs), the pairs (P(improvement), paired differences), pass@k when the runs logged it, the
performance profiles; (a) evaluation reward against iterations (bootstrap band over seeds) and, when
``perf/total_seconds`` is logged, against wall time (mean over seeds per evaluation step); (b) a γ×λ
heatmap of the metric, one panel per ``clip_eps`` (only when γ and λ both vary); (c) training
diagnostics (clip fraction, KL, entropy, response length); (d) the ScaleRL sigmoid fit per
configuration, with a table of A, B, C_mid and their errors, or why the fit is undetermined or failed;
(e) λ diagnostics (advantage variance, bias and MSE against Monte-Carlo
advantages, explained variance) when λ varies. Each PNG is embedded as base64 and also saved as a
file, so the page works alone and the images can be reused. Figures are drawn in ``plots.py``; the
numbers come from one ``summary.Comparison``, the one the terminal and ``--json`` show, which is also
saved beside the page as ``comparison.json``.
"""
from __future__ import annotations

import base64
import html
import json
from datetime import datetime, timezone
from pathlib import Path

from rlexp.compare import plots
from rlexp.compare.aggregate import DEFAULT_METRIC, Group, differing_keys, unify_values
from rlexp.compare.runs import RunRecord
from rlexp.compare.summary import Comparison, compare
from rlexp.compare.table import failure_summary, fit_rows, html_rows, html_table, pair_rows, pass_at_k_rows

REPORT_NAME = "report.html"
JSON_NAME = "comparison.json"
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


def write_report(runs: list[RunRecord], groups: list[Group], out_dir: str | Path, *,
                 metric: str = DEFAULT_METRIC, title: str | None = None, comparison: Comparison | None = None,
                 document: dict | None = None) -> Path:
    """Write ``report.html`` and its PNGs into ``out_dir`` (created); returns the HTML's path.

    ``runs`` are all the runs compared, ``groups`` their configurations (``aggregate.group_runs``),
    ``metric`` the one the table ranks by and the heatmap shows; ``comparison`` its numbers (computed
    here when not given) and ``document`` their JSON (``summary.to_json``), saved as ``comparison.json``.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    runs = unify_values(runs)  # the heatmap's cells: lam=1 and lam=1.0 are one
    differing = differing_keys(groups)
    c = comparison or compare(runs, groups, differing, metric)
    stats = c.stats
    title = title or f"rlexp comparison — {metric}"
    body = [f"<h1>{html.escape(title)}</h1>",
            f'<p class="muted">{len(runs)} runs in {len(groups)} configurations; configurations differ in: '
            f"{html.escape(', '.join(differing) or '(nothing: one configuration)')}. "
            f"Generated {datetime.now(timezone.utc):%Y-%m-%d %H:%M UTC}.</p>",
            "<h2>Comparison</h2>", html_table(stats, differing, title=f"{metric} over finished runs: mean, "
                                                                     f"IQM, median; percentile bootstrap 95% "
                                                                     f"intervals ({c.reps} resamples, seed {c.seed})")]
    note = failure_summary(stats)
    if note:
        body.append(f'<p class="note">{html.escape(note)}</p>')
    for line in notes(c):
        body.append(f'<p class="muted">{html.escape(line)}</p>')
    if c.pairs:
        body.append(html_rows(*pair_rows(c, names=True), key_columns=2,
                              title=f"Probability of improvement P(a > b) over runs, {c.pair_mode}; paired "
                                    f"difference a − b over the seeds both ran"))
    if c.pass_at_k:
        body.append(html_rows(*pass_at_k_rows(c), title="pass@k at the last evaluation: mean [bootstrap 95% CI] "
                                                        "over runs"))
    fig = plots.performance_profiles(c)
    if fig:
        body += [_save_png(fig, out, "performance_profiles.png"),
                 f"<p>Performance profiles: the fraction of each configuration's runs whose {html.escape(metric)} "
                 f"exceeds τ, with a bootstrap 95% band.</p>"]

    body.append("<h2>(a) Evaluation reward</h2>")
    fig = plots.eval_curves(groups, differing)
    body.append(_save_png(fig, out, "eval_reward.png") if fig else "<p>No run logged eval/reward_mean.</p>")
    fig = plots.wall_time_curves(groups, differing)
    if fig:
        body += [_save_png(fig, out, "eval_reward_wall_time.png"),
                 f"<p>Reward against wall time: each evaluation at {plots.WALL_METRIC} of its step (the "
                 "cumulative seconds of the training iterations before it: rollout and update, evaluations "
                 "excluded; step 0 at 0 s). Dots: single runs; line: per evaluation step, the mean reward over "
                 "seeds at their mean seconds. Wall time depends on the machine and its load.</p>"]

    heat = plots.gamma_lambda_heatmap(runs, metric, differing)
    if heat:
        fig, caption = heat
        body += ["<h2>(b) γ × λ heatmap</h2>", _save_png(fig, out, "heatmap_gamma_lam.png"),
                 f"<p>{html.escape(caption)}</p>"]

    fig = plots.train_curves(groups, differing)
    if fig:
        body += ["<h2>(c) Training diagnostics</h2>", _save_png(fig, out, "train_curves.png")]

    body.append("<h2>(d) Compute scaling: ScaleRL sigmoid fit</h2>")
    fig = plots.sigmoid_fits(groups, differing, c.fits, c.points)
    if fig:
        body.append(_save_png(fig, out, "sigmoid_fit.png"))
    body.append(html_rows(*fit_rows(c, names=True), text_last=True,
                          title="ScaleRL sigmoid fit per configuration (errors: √diag(cov); an undetermined fit's "
                                "numbers are not shown)"))

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
    if document is not None:
        (out / JSON_NAME).write_text(json.dumps(document, indent=1), encoding="utf-8")
    return path


def notes(c: Comparison) -> list[str]:
    """The lines under the comparison table: how to read its intervals when runs are few."""
    few = sorted({s.n for s in c.stats if 2 <= s.n < 10})
    if not few:
        return []
    return [f"n = {', '.join(map(str, few))}: percentile bootstrap intervals over fewer than 10 runs cover less "
            f"than 95% (on normal data: 50% at n = 2, 74% at n = 3, 85% at n = 5, 90% at n = 10; see "
            f"docs/sweeps.md); the mean's Student-t interval is in --json as mean_t_ci."]
