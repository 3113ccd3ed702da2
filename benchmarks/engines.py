"""Generation seconds of one rollout batch: the HF engine (the policy's ``generate``) against the vLLM engine.

    .venv-vllm/bin/python benchmarks/engines.py [--model tiny|smollm2] [--repeats 5] [--threads 1] [overrides...]

Needs the vllm extra (docs/engines.md). One process builds the run's online module (``rollout.engine=vllm``,
tracking off; the tiny model's warm start from the cache) and then times ``generate_rollout`` on the same
prompts with each engine, *alternating* HF, vLLM, HF, vLLM... so that the machine's load falls on both alike
(the first round of each is a warm-up, left out). The batch: 8 prompts × 8 completions, at most 64 new tokens
(smollm2: task=arithmetic_chat, its chat template). Reward scoring is left out (``reward_seconds``
subtracted). Prints one JSON line: the import and build seconds of the vLLM engine, the weight-sync seconds,
and per engine the median generation seconds and generated tokens per second.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

BATCH = ["algorithm=grpo", "algorithm.prompts_per_step=8", "algorithm.num_generations=8",
         "algorithm.minibatch_size=64", "rollout.max_new_tokens=64", "rollout.engine=vllm", "tracking=none",
         "task.num_eval=32"]
MODELS = {"tiny": ["model=tiny", "model.warmstart.max_steps=60", "model.warmstart.eval_every=60"],
          "smollm2": ["model=smollm2", "task=arithmetic_chat"]}


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", choices=sorted(MODELS), default="tiny")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("overrides", nargs="*")
    args = p.parse_args(argv)

    import lightning as L
    import torch
    from hydra.utils import instantiate

    from rlexp.rollout import generate_rollout
    from rlexp.train import build_module, compose
    from rlexp.warmstart import prepare_model_dir

    torch.set_num_threads(args.threads)
    cfg = compose(BATCH + MODELS[args.model] + args.overrides)
    task = instantiate(cfg.task)
    model_dir, _ = prepare_model_dir(cfg.model, task, cfg.hardware)
    L.seed_everything(0, verbose=False)
    module = build_module(cfg, task, model_dir)[0]
    from rlexp.config.engines import vllm_environment

    vllm_environment()
    t0 = time.perf_counter()
    import vllm  # noqa: F401  (the import's own cost, measured apart from the build)
    t_import = time.perf_counter() - t0
    t0 = time.perf_counter()
    engine = module.rollout_engine()
    t_build = time.perf_counter() - t0
    t0 = time.perf_counter()
    module.sync_engine()
    t_sync = time.perf_counter() - t0
    examples, idx = module.sample_prompts(0)
    kw = dict(num_generations=cfg.algorithm.num_generations, max_new_tokens=module.max_new_tokens,
              temperature=float(cfg.rollout.temperature), top_p=float(cfg.rollout.top_p), prompt_index=idx)
    seconds, tokens = {"hf": [], "vllm": []}, {"hf": [], "vllm": []}
    for r in range(args.repeats + 1):
        for name, eng in (("hf", None), ("vllm", engine)):
            if eng is not None:
                eng.reseed(r)
            t0 = time.perf_counter()
            batch = generate_rollout(module.actor, module.tokenizer, task, examples, engine=eng, **kw)
            if r:  # round 0: warm-up
                seconds[name].append(time.perf_counter() - t0 - batch.reward_seconds)
                tokens[name].append(float(batch.mask.sum()))
    out = {"model": args.model, "threads": args.threads, "rows": len(examples) * kw["num_generations"],
           "max_new_tokens": module.max_new_tokens, "vllm_import_s": round(t_import, 2),
           "vllm_build_s": round(t_build, 2), "vllm_sync_s": round(t_sync, 4)}
    for name in seconds:
        s = statistics.median(seconds[name])
        out[f"{name}_generate_s"] = round(s, 3)
        out[f"{name}_tokens_per_s"] = round(statistics.median(tokens[name]) / s, 1)
    out["speedup"] = round(out["hf_generate_s"] / out["vllm_generate_s"], 2)
    module.close_engine()
    print(json.dumps(out))
    return out


if __name__ == "__main__":
    main()
