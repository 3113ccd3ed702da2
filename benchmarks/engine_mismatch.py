"""The engines' side of `rlexp compare`, one JSON line per configuration (``rollout.engine`` /
``hardware.precision`` / ``rollout.vllm.dtype``) of the finished runs of an MLflow experiment (or one sweep):
the trainer-vs-sampler mismatch ``train/rollout_mismatch_kl`` (its median and maximum over all steps of all
runs, each run's maximum, its mean over the runs at each step) and ``eval/reward_mean`` (each seed's final
one, the curve's mean over the seeds at every evaluation).

    .venv-vllm/bin/python benchmarks/engine_mismatch.py --tracking-uri sqlite:///mlflow.db [--sweep SWEEP_ID]

docs/engines.md's figures are this script's output over `rlexp sweep engines` (the learning curves themselves
are `rlexp compare`'s) and over the SmolLM2 runs whose commands are next to them.
"""
from __future__ import annotations

import argparse
import json
import statistics
from collections import defaultdict

KL = "train/rollout_mismatch_kl"


def engine_rows(client, experiment: str, sweep: str | None) -> dict:
    """``{"ENGINE/PRECISION/VLLM_DTYPE": {"runs", "steps", "kl_median", "kl_max", "kl_max_per_run", "kl_per_step",
    "final_reward", "curve"}}``; ``kl_per_step``: the mismatch at each step, the mean over the runs."""
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        raise SystemExit(f"engine_mismatch: no experiment {experiment!r} in this store")
    where = f"tags.`rlexp.sweep_id` = '{sweep}'" if sweep else ""
    groups = defaultdict(list)
    for run in client.search_runs([exp.experiment_id], filter_string=where, max_results=10_000):
        p = run.data.params
        if run.info.status != "FINISHED" or "rollout.engine" not in p:
            continue  # a sweep's parent run, or a job that did not finish
        kl = {h.step: h.value for h in client.get_metric_history(run.info.run_id, KL)}
        evals = sorted(client.get_metric_history(run.info.run_id, "eval/reward_mean"), key=lambda h: h.step)
        key = "/".join(p.get(k, "?") for k in ("rollout.engine", "hardware.precision", "rollout.vllm.dtype"))
        groups[key].append((p.get("seed"), kl, evals))
    out = {}
    for engine, runs in sorted(groups.items()):
        every = [v for _, kl, _ in runs for v in kl.values()]
        out[engine] = {"runs": len(runs), "steps": len(every),
                       "kl_median": statistics.median(every) if every else None,
                       "kl_max": max(every) if every else None,
                       "kl_max_per_run": {s: max(kl.values()) if kl else None for s, kl, _ in runs},
                       "final_reward": {s: e[-1].value if e else None for s, _, e in runs}}
        per_step = defaultdict(list)
        for _, kl, _ in runs:
            for step, v in kl.items():
                per_step[step].append(v)
        out[engine]["kl_per_step"] = [float(f"{statistics.mean(v):.3g}") for _, v in sorted(per_step.items())]
        curves = defaultdict(list)
        for _, _, evals in runs:
            for h in evals:
                curves[h.step].append(h.value)
        out[engine]["curve"] = {step: round(statistics.mean(v), 4) for step, v in sorted(curves.items())}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tracking-uri", required=True)
    ap.add_argument("--experiment", default="rlexp")
    ap.add_argument("--sweep", default=None, help="a sweep id (the `rlexp.sweep_id` tag): only its jobs")
    args = ap.parse_args()
    from mlflow.tracking import MlflowClient

    rows = engine_rows(MlflowClient(args.tracking_uri), args.experiment, args.sweep)
    print("\n".join(json.dumps({"config": key, **row}) for key, row in rows.items()))


if __name__ == "__main__":
    main()
