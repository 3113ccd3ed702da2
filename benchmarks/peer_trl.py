"""rlexp against Hugging Face TRL on the same work: seconds per iteration, tokens/s and peak memory.

    .venv/bin/pip install -e '.[bench]'      # trl==1.12.0, the last release that ships PPOTrainer
    .venv/bin/python benchmarks/peer_trl.py --steps 12 --seed 0 [--rounds 2] [--threads 1] [--no-memory]

Same tiny policy weights (rlexp's warm-started embedded model, loaded from its ``save_pretrained``
directory by both tools), same tokenizer, same arithmetic prompts, same batch shape:

- GRPO: 8 prompts × 8 completions, ≤ 16 new tokens, T=1, one epoch of one optimizer step
  (TRL ``per_device_train_batch_size=64, num_generations=8``; rlexp ``minibatch_size=64``), β=0.04 with
  a reference model and the k3 KL in the loss, clip ε=0.2, per-sequence token means
  (TRL ``loss_type="grpo"``), lr 5e-5 constant, exact-match reward.
- PPO: 64 prompts × 1 completion, ≤ 16 new tokens, T=1, one epoch of one minibatch, actor + critic,
  β=0.05 k1 KL in the reward, γ=1, λ=0.95, and a tiny reward *model* (``LlamaForSequenceClassification``,
  seeded) on both sides, because TRL's PPO accepts nothing else (rlexp: ``rlexp.tasks.reward_model``).
  TRL's defaults ``gradient_checkpointing=True, bf16=True, num_ppo_epochs=4`` are set to match.

Each round runs every tool once for ``--steps`` iterations in this one process, alternating which goes
first, so that the machine's load drifts over both alike; ``*_speedup`` is rlexp's iterations per second
divided by TRL's, from the medians over all rounds. An iteration is timed from its start to the next
iteration's start (the tools' loops included), first and last iteration left out. Tracking is off on
both sides (TRL ``report_to="none"``, rlexp ``tracking=none``). Peak resident memory is measured in a
fresh subprocess per tool and algorithm (``--only``), so that one tool's allocations never count for
the other. Prints one JSON line.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (GenerateCounter, iteration_seconds, lightning_iteration_timer, median,  # noqa: E402
                    peak_rss_mb, prepare_weights, versions)

SIDES = ("rlexp_grpo", "trl_grpo", "rlexp_ppo", "trl_ppo")
GRPO = dict(prompts=8, generations=8, max_new_tokens=16, beta=0.04, lr=5e-5, clip=0.2)
PPO = dict(prompts=64, max_new_tokens=16, beta=0.05, lr=3e-5, critic_lr=1e-4, clip=0.2, gamma=1.0, lam=0.95)


# ---------------------------------------------------------------------------------------------- rlexp
def rlexp_overrides(algo: str, weights: dict, steps: int, seed: int, threads: int) -> list[str]:
    """rlexp's overrides for the matched batch of ``algo`` (the shapes above)."""
    common = ["tracking=none", "model=hf", f"model.name_or_path={weights['policy']}", f"seed={seed}",
              f"hardware.num_threads={threads}", f"trainer.max_steps={steps}", f"trainer.eval_every={steps}",
              "trainer.progress_bar=false", "trainer.num_samples_logged=0", "rollout.temperature=1.0",
              "rollout.top_p=1.0"]
    if algo == "grpo":
        g = GRPO
        over = ["algorithm=grpo", f"algorithm.prompts_per_step={g['prompts']}",
                f"algorithm.num_generations={g['generations']}", f"algorithm.minibatch_size={g['prompts'] * g['generations']}",
                "algorithm.ppo_epochs=1", f"algorithm.kl_coef={g['beta']}", "algorithm.kl_estimator=k3",
                "algorithm.kl_placement=in_loss", f"algorithm.actor_lr={g['lr']}", f"algorithm.clip_eps={g['clip']}",
                f"rollout.max_new_tokens={g['max_new_tokens']}"]
    else:
        p = PPO
        over = ["algorithm=ppo", f"algorithm.prompts_per_step={p['prompts']}", "algorithm.num_generations=1",
                f"algorithm.minibatch_size={p['prompts']}", "algorithm.ppo_epochs=1", f"algorithm.kl_coef={p['beta']}",
                "algorithm.kl_estimator=k1", "algorithm.kl_placement=in_reward", f"algorithm.actor_lr={p['lr']}",
                f"algorithm.critic_lr={p['critic_lr']}", f"algorithm.clip_eps={p['clip']}",
                f"algorithm.gamma={p['gamma']}", f"algorithm.lam={p['lam']}", f"rollout.max_new_tokens={p['max_new_tokens']}",
                "task.reward._target_=rlexp.tasks.reward_model.RewardModel", "task.reward._partial_=false",
                f"+task.reward.path={weights['reward_model']}"]
    return common + over


def rlexp_side(algo: str, weights: dict, steps: int, seed: int, threads: int) -> list[float]:
    from rlexp.train import compose, run

    timer = lightning_iteration_timer()
    run(compose(rlexp_overrides(algo, weights, steps, seed, threads)), callbacks=[timer])
    return timer.starts


# ---------------------------------------------------------------------------------------------- TRL
def _trl_callback():
    from transformers import TrainerCallback

    class Timer(TrainerCallback):
        def __init__(self):
            self.begins, self.ends = [], []

        def on_step_begin(self, args, state, control, **kwargs):
            self.begins.append(time.perf_counter())

        def on_step_end(self, args, state, control, **kwargs):
            self.ends.append(time.perf_counter())
    return Timer()


def _config(cls, **fields):
    """A TRL config with exactly these fields; a field this TRL version lacks is an error, not ignored."""
    import dataclasses
    known = {f.name for f in dataclasses.fields(cls)}
    missing = sorted(set(fields) - known)
    if missing:
        raise SystemExit(f"{cls.__name__} of this TRL version has no field(s) {missing}")
    return cls(**fields)


def _trainer_args(out: str, seed: int, steps: int, lr: float) -> dict:
    return dict(output_dir=out, seed=seed, learning_rate=lr, lr_scheduler_type="constant", weight_decay=0.0,
                max_grad_norm=1.0, logging_steps=1, report_to="none", save_strategy="no", use_cpu=True,
                bf16=False, fp16=False, gradient_checkpointing=False, disable_tqdm=True, dataloader_num_workers=0,
                per_device_train_batch_size=64, gradient_accumulation_steps=1)


def trl_side(algo: str, weights: dict, steps: int, seed: int, threads: int) -> list[float]:
    import datasets
    import torch
    from hydra.utils import instantiate
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

    from rlexp.tasks.arithmetic import exact_match
    from rlexp.train import compose

    torch.set_num_threads(threads)
    task = instantiate(compose(["tracking=none"]).task)
    tok = AutoTokenizer.from_pretrained(weights["policy"])
    timer = _trl_callback()
    with tempfile.TemporaryDirectory() as out:
        if algo == "grpo":
            from trl import GRPOConfig, GRPOTrainer
            g = GRPO
            eos = tok.eos_token_id

            def exact_match_reward(prompts, completions, completion_ids, target, **kwargs):
                finished = [bool(ids) and ids[-1] == eos for ids in completion_ids]
                return exact_match(prompts, completions, targets=target, finished=finished)

            args = _config(GRPOConfig, **_trainer_args(out, seed, steps, g["lr"]), max_steps=steps,
                           num_generations=g["generations"], max_completion_length=g["max_new_tokens"],
                           beta=g["beta"], loss_type="grpo", epsilon=g["clip"], num_iterations=1,
                           temperature=1.0, top_p=1.0, top_k=0, log_completions=False,
                           model_init_kwargs={"dtype": torch.float32})
            data = datasets.Dataset.from_list([{"prompt": e.prompt, "target": e.target} for e in task.train_examples])
            trainer = GRPOTrainer(model=str(weights["policy"]), reward_funcs=exact_match_reward, args=args,
                                  train_dataset=data, processing_class=tok, callbacks=[timer])
            trainer.train()
            return timer.begins
        from trl.experimental.ppo import PPOConfig, PPOTrainer
        p = PPO
        args = _config(PPOConfig, **_trainer_args(out, seed, steps, p["lr"]), total_episodes=steps * p["prompts"],
                       num_mini_batches=1, num_ppo_epochs=1, local_rollout_forward_batch_size=p["prompts"],
                       response_length=p["max_new_tokens"], temperature=1.0, stop_token="eos", kl_coef=p["beta"],
                       kl_estimator="k1", cliprange=p["clip"], cliprange_value=0.2, gamma=p["gamma"], lam=p["lam"],
                       num_sample_generations=0)
        data = datasets.Dataset.from_list(
            [{"input_ids": tok(e.prompt, add_special_tokens=False)["input_ids"]} for e in task.train_examples])
        load = dict(dtype=torch.float32)
        trainer = PPOTrainer(
            args=args, processing_class=tok,
            model=AutoModelForCausalLM.from_pretrained(weights["policy"], **load),
            ref_model=AutoModelForCausalLM.from_pretrained(weights["policy"], **load),
            reward_model=AutoModelForSequenceClassification.from_pretrained(weights["reward_model"], num_labels=1, **load),
            value_model=AutoModelForSequenceClassification.from_pretrained(weights["reward_model"], num_labels=1, **load),
            train_dataset=data, callbacks=[timer])
        trainer.train()
        # PPOTrainer calls on_step_end only: iteration i > 0 starts where iteration i-1 ended (TRL's own
        # loop between them included); iteration 0's start is unknown, and it is not timed anyway
        return [float("nan")] + timer.ends[:-1]


def run_side(side: str, weights: dict, steps: int, seed: int, threads: int, counter: GenerateCounter) -> dict:
    tool, algo = side.split("_")
    # TRL prints its per-step logs on stdout: keep stdout for the one JSON line
    with counter.installed(), contextlib.redirect_stdout(sys.stderr):
        starts = (rlexp_side if tool == "rlexp" else trl_side)(algo, weights, steps, seed, threads)
    secs = iteration_seconds(starts)  # iterations 2 .. steps-1 (1-based), from start to next start
    window = (starts[1], starts[-1]) if len(starts) > 2 else (0.0, 0.0)
    return {"seconds": secs, "tokens": counter.tokens_between(*window), "window": window[1] - window[0]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=12, help="iterations per run (≥ 4; the first and last are not timed)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--rounds", type=int, default=2, help="alternating rounds of every tool")
    ap.add_argument("--threads", type=int, default=1, help="torch threads for both tools")
    ap.add_argument("--algorithms", default="grpo,ppo")
    ap.add_argument("--no-memory", action="store_true", help="skip the per-tool peak-memory subprocesses")
    ap.add_argument("--only", choices=SIDES, help=argparse.SUPPRESS)  # one side, for its peak memory
    ap.add_argument("--workdir", default=os.path.join(tempfile.gettempdir(), "rlexp-bench"))
    args = ap.parse_args()
    if args.steps < 4:
        ap.error("--steps must be ≥ 4")
    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    weights = prepare_weights(workdir, args.seed)
    from transformers import AutoTokenizer
    tok = AutoTokenizer.from_pretrained(weights["policy"])
    counter = GenerateCounter(tok.eos_token_id, tok.pad_token_id)

    if args.only:
        r = run_side(args.only, weights, args.steps, args.seed, args.threads, counter)
        print(json.dumps({"side": args.only, "peak_rss_mb": round(peak_rss_mb(), 1),
                          "seconds_per_iteration": round(median(r["seconds"]), 4)}))
        return

    algos = [a for a in args.algorithms.split(",") if a]
    results: dict[str, list[dict]] = {}
    for rnd in range(args.rounds):
        for algo in algos:
            pair = [f"rlexp_{algo}", f"trl_{algo}"]
            for side in (pair if rnd % 2 == 0 else pair[::-1]):
                results.setdefault(side, []).append(run_side(side, weights, args.steps, args.seed, args.threads, counter))
                print(f"[peer_trl] round {rnd + 1}/{args.rounds} {side}: "
                      f"{median(results[side][-1]['seconds']):.4f} s/it", file=sys.stderr, flush=True)

    line: dict = {"benchmark": "peer_trl", "steps": args.steps, "seed": args.seed, "rounds": args.rounds,
                  "threads": args.threads, **versions()}
    for side, runs in results.items():
        secs = [s for r in runs for s in r["seconds"]]
        window = sum(r["window"] for r in runs)
        line[f"{side}_seconds_per_iteration"] = round(median(secs), 4)
        line[f"{side}_tokens_per_second"] = round(sum(r["tokens"] for r in runs) / window, 1) if window > 0 else None
        line[f"{side}_timed_iterations"] = len(secs)
    for algo in algos:
        r, t = line.get(f"rlexp_{algo}_seconds_per_iteration"), line.get(f"trl_{algo}_seconds_per_iteration")
        line[f"{algo}_speedup"] = round(t / r, 2) if r and t else None
    if not args.no_memory:
        for side in results:
            cmd = [sys.executable, __file__, "--only", side, "--steps", str(args.steps), "--seed", str(args.seed),
                   "--threads", str(args.threads), "--workdir", str(workdir)]
            out = subprocess.run(cmd, capture_output=True, text=True)
            if out.returncode != 0:
                raise SystemExit(f"peak-memory run of {side} failed:\n{out.stderr[-3000:]}")
            line[f"{side}_peak_rss_mb"] = json.loads(out.stdout.strip().splitlines()[-1])["peak_rss_mb"]
    print(json.dumps(line))


if __name__ == "__main__":
    main()
