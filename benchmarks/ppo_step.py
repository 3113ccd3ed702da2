"""Seconds per PPO iteration and generated tokens per second, for the default batch shape.

    .venv/bin/python benchmarks/ppo_step.py --steps 30 --seed 0 [--threads 1] [overrides...]

Runs the default experiment (the same `run()` as `rlexp train`, tracking off, evaluation only at the
ends) and prints one JSON line: median seconds per iteration (first iteration excluded as warm-up),
its split into generation and update, and tokens per second. Extra Hydra overrides change the shape
(e.g. `algorithm.prompts_per_step=128`).
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("overrides", nargs="*")
    args = ap.parse_args()

    import torch
    import transformers

    from rlexp.train import compose, run

    cfg = compose(["tracking=none", "trainer.progress_bar=false", f"trainer.max_steps={args.steps}",
                   f"trainer.eval_every={args.steps}", f"seed={args.seed}", f"hardware.num_threads={args.threads}",
                   *args.overrides])
    module = run(cfg)
    its = [h for h in module.history if "perf/step_seconds" in h][1:]
    med = lambda k: statistics.median(h[k] for h in its)  # noqa: E731
    a = cfg.algorithm
    print(json.dumps({
        "benchmark": "ppo_step", "algorithm": a.name, "steps": args.steps, "seed": args.seed,
        "completions_per_iteration": a.prompts_per_step * a.num_generations,
        "minibatch_size": a.minibatch_size, "ppo_epochs": a.ppo_epochs, "threads": args.threads,
        "seconds_per_iteration": round(med("perf/step_seconds"), 4),
        "generate_seconds": round(med("perf/generate_seconds"), 4),
        "update_seconds": round(med("perf/update_seconds"), 4),
        "tokens_per_second": round(med("perf/tokens_per_second"), 1),
        "generate_tokens_per_second": round(med("perf/generate_tokens_per_second"), 1),
        "mean_response_length": round(statistics.mean(h["train/response_length"] for h in its), 2),
        "eval_reward_start": module.history[0]["eval/reward_mean"],
        "eval_reward_end": module.last_eval["eval/reward_mean"],
        "torch": torch.__version__, "transformers": transformers.__version__,
        "machine": f"{platform.machine()} {torch.get_num_threads()} thread(s)",
    }))


if __name__ == "__main__":
    main()
