"""The floor: the bare model work of one iteration, and rlexp's seconds per iteration divided by it.

    .venv/bin/python benchmarks/floor.py --steps 12 --seed 0 [--algorithm grpo|ppo] [--rounds 3] [--threads 1]

For the batch shape of ``peer_trl.py`` (GRPO: 8 prompts × 8 completions; PPO: 64 × 1 with a reward
model; ≤ 16 new tokens, one epoch of one minibatch), the floor iteration is written with plain
torch/transformers calls and nothing else:

- one ``generate`` call (KV cache, sampling at T=1);
- the no-grad forwards the algorithm needs before its update: the reference log-probs (β > 0); for PPO
  also the old log-probs (its KL sits in the reward, so they are needed before the advantages), the
  critic's values and the reward model's scores. (GRPO's one on-policy step needs no separate old
  log-probs: ``logπ_old = sg(logπ_θ)``, which TRL and rlexp both use.)
- the update: actor forward + backward + AdamW step (and the critic's, for PPO).

Rewards, advantages and losses are not in the floor: ``overhead_ratio`` = rlexp ÷ floor counts them as
overhead, with rlexp's loop, rollout bookkeeping and metrics. Rounds alternate floor and rlexp in one
process. With ``--profile``, rlexp's iteration is also broken down with torch.profiler: the share of
time spent in the advantage estimator and the losses (``rlexp.core``) is reported as ``core_share``.
Prints one JSON line.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import GenerateCounter, iteration_seconds, median, prepare_weights, versions  # noqa: E402
from peer_trl import GRPO, PPO, run_side  # noqa: E402


class Floor:
    """Plain-transformers models and optimizers for the floor iteration."""

    def __init__(self, algo: str, weights: dict, seed: int):
        import torch
        from hydra.utils import instantiate
        from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

        from rlexp.train import compose

        torch.manual_seed(seed)
        self.algo, self.torch = algo, torch
        self.tok = AutoTokenizer.from_pretrained(weights["policy"])
        f32 = dict(dtype=torch.float32)
        self.policy = AutoModelForCausalLM.from_pretrained(weights["policy"], **f32).train()
        self.ref = AutoModelForCausalLM.from_pretrained(weights["policy"], **f32).eval().requires_grad_(False)
        shape = GRPO if algo == "grpo" else PPO
        self.shape = shape
        self.opt = torch.optim.AdamW(self.policy.parameters(), lr=shape["lr"], weight_decay=0.0)
        if algo == "ppo":
            self.critic = AutoModelForSequenceClassification.from_pretrained(weights["reward_model"], **f32).train()
            self.rm = AutoModelForSequenceClassification.from_pretrained(weights["reward_model"], **f32).eval()
            self.rm.requires_grad_(False)
            self.copt = torch.optim.AdamW(self.critic.parameters(), lr=shape["critic_lr"], weight_decay=0.0)
        task = instantiate(compose(["tracking=none"]).task)
        self.prompts = [e.prompt for e in task.train_examples]
        self.gen = torch.Generator().manual_seed(seed)

    def _token_values(self, model, ids, am):
        hidden = model.model(input_ids=ids, attention_mask=am).last_hidden_state
        return model.score(hidden).squeeze(-1)

    def iteration(self) -> None:
        torch, s = self.torch, self.shape
        n_prompts = s["prompts"]
        G = s.get("generations", 1)
        pick = torch.randint(len(self.prompts), (n_prompts,), generator=self.gen).tolist()
        enc = self.tok([self.prompts[i] for i in pick for _ in range(G)], return_tensors="pt", add_special_tokens=False)
        P = enc["input_ids"].shape[1]
        with torch.no_grad():
            seq = self.policy.generate(**enc, do_sample=True, temperature=1.0, top_k=0, top_p=1.0,
                                       max_new_tokens=s["max_new_tokens"], pad_token_id=self.tok.pad_token_id,
                                       eos_token_id=self.tok.eos_token_id)
        resp = seq[:, P:]
        eos = resp == self.tok.eos_token_id
        T = resp.shape[1]
        end = torch.where(eos.any(1), eos.float().argmax(1), torch.full((resp.shape[0],), T - 1))
        mask = (torch.arange(T)[None] <= end[:, None]).float()
        am = torch.cat([enc["attention_mask"], mask.long()], 1)
        with torch.no_grad():
            ref_lp = torch.log_softmax(self.ref(input_ids=seq, attention_mask=am).logits[:, P - 1:-1], -1)
            ref_lp = ref_lp.gather(-1, resp[..., None]).squeeze(-1)
            if self.algo == "ppo":
                old = torch.log_softmax(self.policy(input_ids=seq, attention_mask=am).logits[:, P - 1:-1], -1)
                old = old.gather(-1, resp[..., None]).squeeze(-1)
                values = self._token_values(self.critic, seq, am)[:, P - 1:-1]
                self.rm(input_ids=seq, attention_mask=am)
        logits = self.policy(input_ids=seq, attention_mask=am).logits[:, P - 1:-1]
        lp = torch.log_softmax(logits, -1).gather(-1, resp[..., None]).squeeze(-1)
        loss = -(lp * mask).sum() / mask.sum() + ((lp - ref_lp) * mask).sum() * 0.0
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.policy.parameters(), 1.0)
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        if self.algo == "ppo":
            v = self._token_values(self.critic, seq, am)[:, P - 1:-1]
            vloss = (((v - values) ** 2) * mask).sum() / mask.sum()
            vloss.backward()
            torch.nn.utils.clip_grad_norm_(self.critic.parameters(), 1.0)
            self.copt.step()
            self.copt.zero_grad(set_to_none=True)
            del old


def floor_round(algo: str, weights: dict, steps: int, seed: int) -> list[float]:
    f = Floor(algo, weights, seed)
    starts = []
    for _ in range(steps):
        starts.append(time.perf_counter())
        f.iteration()
    return iteration_seconds(starts)


def profile_core_share(algo: str, weights: dict, steps: int, seed: int, threads: int) -> dict:
    """Seconds in ``rlexp.core`` (advantages, KL, losses, aggregation) per iteration, and their share."""
    import dataclasses
    import functools

    from rlexp import core
    from rlexp.modules import online

    spent = [0.0]

    def timed(fn):
        @functools.wraps(fn)
        def w(*a, **k):
            t = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                spent[0] += time.perf_counter() - t
        return w
    # the pure functions an iteration calls from rlexp.core, wrapped where the module looks them up
    est = online.OnlineRLModule.__init__

    def init(self, *a, **k):
        est(self, *a, **k)
        self.estimator = dataclasses.replace(self.estimator, fn=timed(self.estimator.fn))
        self.policy_loss_fn = timed(self.policy_loss_fn)
    names = ["gae", "masked_whiten", "kl_estimate", "aggregate", "value_loss", "zero_std_groups", "masked_mean",
             "masked_var", "explained_variance", "logprobs_from_logits", "entropy_from_logits"]
    saved = {n: getattr(core, n) for n in names}
    online.OnlineRLModule.__init__ = init
    for n in names:
        setattr(core, n, timed(saved[n]))
    try:
        counter = GenerateCounter(-1, -1)
        t0 = time.perf_counter()
        r = run_side(f"rlexp_{algo}", weights, steps, seed, threads, counter)
        total = time.perf_counter() - t0
    finally:
        online.OnlineRLModule.__init__ = est
        for n, f in saved.items():
            setattr(core, n, f)
    per_it = median(r["seconds"])
    return {"core_seconds_total": round(spent[0], 4), "run_seconds_total": round(total, 2),
            "core_seconds_per_iteration": round(spent[0] / steps, 5), "core_share": round(spent[0] / steps / per_it, 4)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--algorithm", choices=["grpo", "ppo"], default="grpo")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--profile", action="store_true", help="also measure the share of rlexp.core in an iteration")
    ap.add_argument("--workdir", default=os.path.join(tempfile.gettempdir(), "rlexp-bench"))
    args = ap.parse_args()
    if args.steps < 4:
        ap.error("--steps must be ≥ 4")
    import torch
    torch.set_num_threads(args.threads)
    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    weights = prepare_weights(workdir, args.seed)
    counter = GenerateCounter(-1, -1)
    floor, rl = [], []
    for rnd in range(args.rounds):
        order = ["floor", "rlexp"] if rnd % 2 == 0 else ["rlexp", "floor"]
        for side in order:
            if side == "floor":
                floor += floor_round(args.algorithm, weights, args.steps, args.seed + rnd)
            else:
                rl += run_side(f"rlexp_{args.algorithm}", weights, args.steps, args.seed + rnd, args.threads,
                               counter)["seconds"]
            torch.set_num_threads(args.threads)
    line = {"benchmark": "floor", "algorithm": args.algorithm, "steps": args.steps, "seed": args.seed,
            "rounds": args.rounds, "threads": args.threads, **versions(),
            "floor_seconds_per_iteration": round(median(floor), 4),
            "rlexp_seconds_per_iteration": round(median(rl), 4),
            "overhead_ratio": round(median(rl) / median(floor), 3)}
    if args.profile:
        line.update(profile_core_share(args.algorithm, weights, args.steps, args.seed, args.threads))
    print(json.dumps(line))


if __name__ == "__main__":
    main()
