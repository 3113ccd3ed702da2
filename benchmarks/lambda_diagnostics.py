"""GAE's λ diagnostics of finished PPO runs as one table: task, reward, γ, λ → the advantage variance, the
Monte-Carlo advantages' variance, the bias and MSE of the GAE(λ) advantages against them, the critic's
explained variance (each averaged over a run's iterations, as the report's λ figure does, then over
seeds) and eval/reward_mean at the start and the end.

    .venv/bin/python benchmarks/lambda_diagnostics.py --tracking-uri sqlite:///mlflow.db EXPERIMENT [...]

docs/sweeps.md's λ × γ table on running_sum and arithmetic is this script's output over the runs of
`rlexp sweep lambda_bias_variance ...` (the commands are in docs/sweeps.md).
"""
from __future__ import annotations

import argparse
from collections import defaultdict

DIAGNOSTICS = ("train/advantage_var", "train/mc_advantage_var", "train/adv_bias_vs_mc", "train/adv_mse_vs_mc",
               "train/explained_variance")


def run_rows(client, experiments: list[str]) -> list[dict]:
    """One dict per FINISHED job run that logged the diagnostics: its configuration and averaged metrics."""
    rows = []
    for name in experiments:
        exp = client.get_experiment_by_name(name)
        if exp is None:
            raise SystemExit(f"lambda_diagnostics: no experiment {name!r} in this store")
        for run in client.search_runs([exp.experiment_id], max_results=10_000):
            p = run.data.params
            if run.info.status != "FINISHED" or "algorithm.lam" not in p:
                continue  # a sweep's parent run, or a job that did not finish
            row = {"task": p["task.name"], "reward": p.get("task.reward._target_", "").rsplit(".", 1)[-1],
                   "gamma": float(p["algorithm.gamma"]), "lam": float(p["algorithm.lam"]), "seed": p.get("seed")}
            for m in DIAGNOSTICS:
                values = [h.value for h in client.get_metric_history(run.info.run_id, m)]
                row[m] = sum(values) / len(values) if values else float("nan")
            evals = sorted(client.get_metric_history(run.info.run_id, "eval/reward_mean"), key=lambda h: h.step)
            row["eval_start"], row["eval_end"] = evals[0].value, evals[-1].value
            rows.append(row)
    return rows


def table(rows: list[dict]) -> str:
    """The markdown table: one line per (task, reward, γ, λ), seeds averaged (n says how many)."""
    groups = defaultdict(list)
    for r in rows:
        groups[(r["task"], r["reward"], -r["gamma"], r["lam"])].append(r)
    out = ["| task (reward) | γ | λ | n | adv var | MC adv var | bias vs MC | MSE vs MC | MSE / MC var | "
           "explained var | eval reward start → end |", "|" + " --- |" * 11]
    for (task, reward, neg_gamma, lam), rs in sorted(groups.items()):
        mean = {k: sum(r[k] for r in rs) / len(rs) for k in (*DIAGNOSTICS, "eval_start", "eval_end")}
        var, mc, bias, mse, ev = (mean[m] for m in DIAGNOSTICS)
        out.append(f"| {task} ({reward}) | {-neg_gamma:g} | {lam:g} | {len(rs)} | {var:.4f} | {mc:.4f} | {bias:+.4f} "
                   f"| {mse:.4f} | {mse / mc if mc > 0 else float('nan'):.2f} | {ev:+.2f} | {mean['eval_start']:.3f} → {mean['eval_end']:.3f} |")
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tracking-uri", required=True)
    ap.add_argument("experiments", nargs="+")
    args = ap.parse_args()
    from mlflow.tracking import MlflowClient

    print(table(run_rows(MlflowClient(args.tracking_uri), args.experiments)))


if __name__ == "__main__":
    main()
