"""The showcase of docs/sweeps.md: Chromium screenshots of a `rlexp compare` report, and an algorithm sweep's
final reward compared at equal generated tokens.

    # the screenshots (headless Chromium through playwright, as the browser tests drive it)
    .venv/bin/python benchmarks/showcase.py screenshot rlexp-report/<sweep>/report.html OUT.png [--height 1900]
    # each job's eval/reward_mean at the token count every job reached, with rlexp compare's estimators
    .venv/bin/python benchmarks/showcase.py tokens --tracking-uri sqlite:///mlflow.db --sweep latest --by algorithm.name

`screenshot` photographs the top `--height` pixels of the report (the tables, the pairs, the performance
profiles) at 1400 px wide; `--full` takes the whole page, `--scroll-to TEXT` starts the picture at the first
heading holding TEXT (e.g. "λ diagnostics"). `tokens`: a recipe that generates longer completions, or
redraws prompts (DAPO's dynamic sampling), spends more tokens in the same iterations, so the final
reward of equal iterations is not the reward of equal compute. Here each run's `eval/reward_mean` is read
at T = the fewest tokens any run generated (`perf/total_tokens`, each iteration's share scaled by its
`train/gen_batches_drawn`), interpolated linearly in tokens between the two evaluations around T; then the mean, IQM, their bootstrap 95% intervals and, for every pair,
P(a > b) with its interval and the paired difference at equal seeds (rlexp/compare/stats.py, the
estimators `rlexp compare` uses).
"""
from __future__ import annotations

import argparse
import itertools
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))


def screenshot(report: Path, out: Path, *, height: int, full: bool, scroll_to: str | None) -> None:
    from playwright.sync_api import sync_playwright

    from mlflow_server import CHROMIUM, CHROMIUM_FLAGS

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS)
        page = browser.new_page(viewport={"width": 1400, "height": height})
        page.goto(report.resolve().as_uri())
        page.wait_for_load_state("load")
        page.wait_for_function("Array.from(document.images).every(i => i.complete && i.naturalWidth > 0)")
        if scroll_to:  # once every figure has its size, so that the heading no longer moves
            heading = page.locator(f"h2:has-text('{scroll_to}'), h3:has-text('{scroll_to}')").first
            page.evaluate("el => window.scrollTo(0, el.getBoundingClientRect().top + window.scrollY - 8)",
                          heading.element_handle())
        page.screenshot(path=str(out), full_page=full)
        browser.close()
    print(f"{out} ({out.stat().st_size // 1024} KiB)")


DRAWS = "train/gen_batches_drawn"


def generated_tokens(run) -> list[tuple[int, float]]:
    """``[(step, generated tokens so far)]``. ``perf/total_tokens`` counts the tokens of the batches trained on;
    a recipe that redraws (DAPO's dynamic sampling: ``train/gen_batches_drawn`` batches of the same size per
    iteration) generated about that many times as many, so each iteration's tokens are scaled by its draws."""
    from rlexp.compare.fit import COMPUTE_METRIC

    draws = dict(run.history(DRAWS))
    out, total, before = [], 0.0, 0.0
    for step, cumulative in run.history(COMPUTE_METRIC):
        total += (cumulative - before) * draws.get(step, 1.0)
        before = cumulative
        out.append((step, total))
    return out


def reward_at(run, budget: float) -> float | None:
    """``eval/reward_mean`` at ``budget`` generated tokens, interpolated between the evaluations around it."""
    from rlexp.compare.fit import EVAL_METRIC, _value_at

    tokens = generated_tokens(run)
    points = [(0.0 if s == 0 else _value_at(tokens, s), r) for s, r in run.history(EVAL_METRIC)]
    points = [(c, r) for c, r in points if c is not None]
    for (c0, r0), (c1, r1) in zip(points, points[1:]):
        if c0 <= budget <= c1:
            return r1 if c1 == c0 else r0 + (r1 - r0) * (budget - c0) / (c1 - c0)
    return None


def tokens(uri: str, sweep: str, by: str, reps: int) -> None:
    from rlexp.compare import stats as st
    from rlexp.compare.runs import HISTORY_METRICS, load_runs

    runs = [r for r in load_runs(uri, sweep=sweep, history_metrics=(*HISTORY_METRICS, DRAWS))[0]
            if r.status == "FINISHED"]
    budget = min(generated_tokens(r)[-1][1] for r in runs)
    groups: dict[str, dict[int, float]] = {}
    for r in runs:
        v = reward_at(r, budget)
        if v is not None:
            groups.setdefault(r.params.get(by, "?"), {})[int(r.params.get("seed", 0))] = v
    finals = {g: max(generated_tokens(r)[-1][1] for r in runs if r.params.get(by) == g) for g in groups}
    print(f"T = {budget:,.0f} generated tokens (the fewest any of the {len(runs)} runs generated)\n")
    print("| config | n | mean [95% CI] | IQM [95% CI] | most tokens a run of it generated |\n| --- | --- | --- | --- | --- |")
    order = sorted(groups, key=lambda g: -st.mean(list(groups[g].values())))
    for g in order:
        a = st.aggregate(list(groups[g].values()), reps=reps)
        print(f"| {g} | {a['n']} | {a['mean']:.3f} [{a['mean_ci'][0]:.3f}, {a['mean_ci'][1]:.3f}] | "
              f"{a['iqm']:.3f} [{a['iqm_ci'][0]:.3f}, {a['iqm_ci'][1]:.3f}] | {finals[g]:,.0f} |")
    print("\n| a | b | P(a > b) [95% CI] | a − b paired [95% CI] | seeds a > b |\n| --- | --- | --- | --- | --- |")
    for a, b in itertools.combinations(order, 2):
        x, y = groups[a], groups[b]
        p, ci = st.prob_improvement(list(x.values()), list(y.values())), \
            st.prob_improvement_ci(list(x.values()), list(y.values()), reps=reps)
        seeds = sorted(set(x) & set(y))
        d, dci = st.paired_difference([x[s] for s in seeds], [y[s] for s in seeds], reps=reps)
        wins = sum(x[s] > y[s] for s in seeds)
        print(f"| {a} | {b} | {p:.3f} [{ci[0]:.3f}, {ci[1]:.3f}] | {d:+.3f} [{dci[0]:+.3f}, {dci[1]:+.3f}] "
              f"| {wins} of {len(seeds)} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("screenshot", help="a Chromium screenshot of a report.html")
    s.add_argument("report", type=Path)
    s.add_argument("out", type=Path)
    s.add_argument("--height", type=int, default=1900, help="viewport height in px (default 1900)")
    s.add_argument("--full", action="store_true", help="the whole page")
    s.add_argument("--scroll-to", help="start at the first h2/h3 heading holding this text")
    t = sub.add_parser("tokens", help="a sweep's final reward at equal generated tokens")
    t.add_argument("--tracking-uri", default="sqlite:///mlflow.db")
    t.add_argument("--sweep", default="latest")
    t.add_argument("--by", default="algorithm.name", help="the param that names a configuration")
    t.add_argument("--reps", type=int, default=10_000)
    args = ap.parse_args()
    if args.cmd == "screenshot":
        screenshot(args.report, args.out, height=args.height, full=args.full, scroll_to=args.scroll_to)
    else:
        tokens(args.tracking_uri, args.sweep, args.by, args.reps)


if __name__ == "__main__":
    main()
