"""Every online algorithm on the embedded task, at the default run length: learning and speed.

    .venv/bin/python benchmarks/algorithms.py [--algorithms ppo grpo ...] [--seeds 0 1] [overrides...]

For each algorithm × seed, runs the default experiment (`run()`, as `rlexp train algorithm=NAME`, with
tracking off) and prints one JSON line: eval/reward_mean at step 0 (the warm start) and at the end,
the best evaluation, and the median seconds per iteration (first iteration excluded). The README's
algorithm table is made from its output.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
ALL = ["ppo", "grpo", "dr_grpo", "dapo", "gspo", "rloo", "scalerl"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--algorithms", nargs="+", default=ALL)
    ap.add_argument("--seeds", nargs="+", type=int, default=[0])
    ap.add_argument("overrides", nargs="*")
    args = ap.parse_args()
    from rlexp.train import compose, run

    for name in args.algorithms:
        for seed in args.seeds:
            cfg = compose([f"algorithm={name}", f"seed={seed}", "tracking=none", "trainer.progress_bar=false",
                           *args.overrides])
            module = run(cfg)
            evals = [h for h in module.history if "eval/reward_mean" in h]
            its = [h["perf/step_seconds"] for h in module.history if "perf/step_seconds" in h][1:]
            print(json.dumps({
                "benchmark": "algorithms", "algorithm": name, "seed": seed, "iterations": cfg.trainer.max_steps,
                "completions_per_iteration": cfg.algorithm.prompts_per_step * cfg.algorithm.num_generations,
                "eval_start": evals[0]["eval/reward_mean"], "eval_end": evals[-1]["eval/reward_mean"],
                "eval_best": max(e["eval/reward_mean"] for e in evals),
                "seconds_per_iteration": round(statistics.median(its), 4),
                "train_seconds": round(sum(its), 1),
            }), flush=True)


if __name__ == "__main__":
    main()
