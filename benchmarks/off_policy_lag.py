"""The off-policy-lag sweep's per-k costs (docs/off_policy.md, "The off-policy-lag sweep"): what `rlexp compare`
does not tabulate: seconds per iteration and the behaviour mismatch the lag brings.

    cd /tmp/lagsweep && rlexp sweep off_policy_lag     # the sweep (sweeps/off_policy_lag.yaml), store ./mlflow.db
    .venv/bin/python benchmarks/off_policy_lag.py --tracking-uri sqlite:////tmp/lagsweep/mlflow.db --sweep latest

Per lag k (the `rollout.off_policy_lag` param), over the sweep's finished jobs: seconds per iteration
(`perf/total_seconds` at the last step / iterations: rollout + update, evaluations excluded), the fit's wall
time (`summary/wall_seconds`, evaluations included), and the per-iteration means of `train/policy_lag`,
`train/rollout_mismatch_kl`, `train/rollout_is_weight_mean` and `train/rollout_is_clipfrac`, each averaged over
a run's iterations and then over its seeds (min–max over seeds in brackets). A markdown table on stdout. The
rewards and the ScaleRL fit per k are `rlexp compare --sweep latest --by rollout.off_policy_lag` (--json).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

LAG = "rollout.off_policy_lag"
PER_ITERATION = ("train/policy_lag", "train/rollout_mismatch_kl", "train/rollout_is_weight_mean",
                 "train/rollout_is_clipfrac")


def _mean(xs: list[float]) -> float:
    return sum(xs) / len(xs)


def _cell(xs: list[float], fmt: str) -> str:
    if not xs:
        return "—"
    return f"{_mean(xs):{fmt}} [{min(xs):{fmt}}–{max(xs):{fmt}}]" if len(xs) > 1 else f"{xs[0]:{fmt}}"


def run_costs(client, run) -> dict[str, float]:
    """One run's seconds per iteration, wall seconds and per-iteration means of ``PER_ITERATION``."""
    out: dict[str, float] = {}
    secs = client.get_metric_history(run.info.run_id, "perf/total_seconds")
    if secs:
        last = max(secs, key=lambda m: m.step)
        out["s/iteration"] = last.value / last.step
    if "summary/wall_seconds" in run.data.metrics:
        out["wall s"] = run.data.metrics["summary/wall_seconds"]
    for key in PER_ITERATION:
        hist = client.get_metric_history(run.info.run_id, key)
        if hist:
            out[key] = _mean([m.value for m in hist])
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tracking-uri", default="sqlite:///mlflow.db")
    ap.add_argument("--sweep", default="latest", help="a sweep id, its parent run id, or latest")
    args = ap.parse_args()
    from mlflow import MlflowClient

    from rlexp.compare import load_runs

    runs, parent = load_runs(args.tracking_uri, sweep=args.sweep)
    client = MlflowClient(args.tracking_uri)
    by_k: dict[int, list[dict[str, float]]] = {}
    for r in runs:
        if r.status == "FINISHED" and r.params.get(LAG) is not None:
            by_k.setdefault(int(r.params[LAG]), []).append(run_costs(client, client.get_run(r.run_id)))
    cols = [("s/iteration", ".3f"), ("wall s", ".0f")] + [(k, ".4f") for k in PER_ITERATION]
    print(f"sweep {parent.sweep_id if parent else args.sweep}: {sum(map(len, by_k.values()))} finished jobs\n")
    print("| k | runs | " + " | ".join(c for c, _ in cols) + " |")
    print("|---|---|" + "---|" * len(cols))
    for k in sorted(by_k):
        cells = [_cell([c[name] for c in by_k[k] if name in c], fmt) for name, fmt in cols]
        print(f"| {k} | {len(by_k[k])} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
