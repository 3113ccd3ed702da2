"""The off-policy pipeline (``rollout.off_policy_lag=k``) against the synchronous loop: wall time of the same iterations.

    .venv/bin/python benchmarks/pipeline.py --steps 16 --rounds 2 [--lags 1,2,4] [--groups grpo,ppo,peer] [--smollm2]

Every side is one fresh subprocess (its own threads and memory) that runs ``--steps`` iterations; the order of the
sides is reversed every other round, so that the machine's load drifts over all of them alike. Groups of sides:

- ``grpo`` / ``ppo``: the embedded default (``rlexp train algorithm=grpo`` / ``algorithm=ppo``, tracking off,
  evaluation only at the ends), synchronous (``off_policy_lag=0``) at ``hardware.num_threads`` 1 and 2, and with a
  lag of 1, 2 and 4 at ``hardware.num_threads=1``: the trainer's thread plus the generator process's one, both cores
  of a 2-core machine (``num_threads=2`` with a lag is the same 1 + 1: ``rlexp.rollout.pipeline.trainer_threads``).
- ``peer``: TRL's GRPOTrainer at 1 and 2 torch threads against rlexp's GRPO on the same batch
  (`benchmarks/peer_trl.py`'s matched setting: the same exported weights, 8 prompts × 8 completions, ≤ 16 new
  tokens, one optimizer step), rlexp synchronous at 1 and 2 threads and with a lag of 1.
- ``smollm2`` (``--smollm2``; ~8 s per iteration): GRPO on ``model=smollm2 task=arithmetic_chat`` with LoRA and
  `benchmarks/lora_smollm2.py`'s batch (2 prompts × 4 completions, ≤ 16 new tokens), sync at 1 and 2 threads, lag 1.

Per side: seconds per iteration (the median over all rounds of the time from an iteration's start to the next one's,
first and last iteration left out: `common.iteration_seconds`), iterations per second, and for rlexp the split from
``module.history`` (the same iterations): **generate** (``perf/generate_seconds + perf/reward_seconds``: sampling and
scoring, in the generator process with a lag), the trainer's **wait** for its batch (``perf/wait_seconds`` with a
lag; synchronously the rollout itself) and its **update** (``perf/update_seconds``). ``× base`` is the side's
iterations per second over the group's fastest synchronous side (``peer``: TRL's faster setting); ``ideal`` is what a
perfect pipeline would give over the 1-thread sync side, (generate + update) / max(generate, update); ``bound`` names
the larger of a lagged side's generate and update, the phase that sets its pace. Prints one JSON line (``--out``:
also written there, with the markdown table and every run's per-iteration figures).
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
from typing import NamedTuple

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from common import iteration_seconds, lightning_iteration_timer, median, prepare_weights, versions  # noqa: E402
from smollm2_grpo import side_order  # noqa: E402

TARGETS = {"grpo_lag_vs_sync": 1.5, "peer_rlexp_lag_vs_trl": 1.3}  # issue 17 item 5


class Side(NamedTuple):
    group: str  # grpo | ppo | peer | smollm2
    tool: str   # rlexp | trl
    algo: str
    lag: int
    threads: int  # hardware.num_threads (TRL: torch threads)


def make_sides(groups: list[str], lags: list[int]) -> dict[str, Side]:
    """The sides of ``groups``, by name."""
    out: dict[str, Side] = {}
    for g in groups:
        algo = "ppo" if g == "ppo" else "grpo"
        if g == "peer":
            out.update({f"peer_trl_t{t}": Side(g, "trl", algo, 0, t) for t in (1, 2)})
        out.update({f"{g}_sync_t{t}": Side(g, "rlexp", algo, 0, t) for t in (1, 2)})
        for k in ([1] if g in ("peer", "smollm2") else lags):
            out[f"{g}_lag{k}"] = Side(g, "rlexp", algo, k, 1)
    return out


def threads_label(side: Side) -> str:
    """Threads as the side uses them: ``"1"``, ``"2"``, or ``"1 + 1"`` (trainer + generator)."""
    if side.lag == 0:
        return str(side.threads)
    from rlexp.rollout.pipeline import GENERATOR_THREADS, trainer_threads
    return f"{trainer_threads(side.threads)} + {GENERATOR_THREADS}"


# ------------------------------------------------------------------------------ pure helpers (tested)
def summarize(runs: list[dict]) -> dict:
    """Medians of one side's runs (each ``{"seconds", "generate", "wait", "update": [...]}``, pooled)."""
    pooled = {k: [x for r in runs for x in (r.get(k) or [])] for k in ("seconds", "generate", "wait", "update")}
    if not pooled["seconds"]:
        return {"timed_iterations": 0}
    s = median(pooled["seconds"])
    out = {"timed_iterations": len(pooled["seconds"]), "seconds_per_iteration": round(s, 4),
           "iterations_per_second": round(1.0 / s, 3)}
    for k in ("generate", "wait", "update"):
        out[f"{k}_s"] = round(median(pooled[k]), 4) if pooled[k] else None
    return out


def speedup(row: dict | None, base: dict | None) -> float | None:
    """``row``'s iterations per second over ``base``'s (None when either is missing)."""
    a, b = (r.get("seconds_per_iteration") if r else None for r in (row, base))
    return round(b / a, 2) if a and b else None


def fastest(summary: dict[str, dict], names: list[str]) -> str | None:
    """The name among ``names`` with the fewest seconds per iteration (None if none was measured)."""
    got = [n for n in names if summary.get(n, {}).get("seconds_per_iteration")]
    return min(got, key=lambda n: summary[n]["seconds_per_iteration"]) if got else None


def ideal(row: dict | None) -> float | None:
    """What a perfect pipeline gives over a synchronous side: (generate + update) / max(generate, update)."""
    if not row or row.get("generate_s") is None or row.get("update_s") is None:
        return None
    g, u = max(row["generate_s"], 0.0), max(row["update_s"], 0.0)
    return round((g + u) / max(g, u), 2) if max(g, u) > 0 else None


def bound(row: dict | None) -> str | None:
    """The phase that bounds a lagged side: the generator's (sampling + scoring) or the trainer's update."""
    if not row or row.get("generate_s") is None or row.get("update_s") is None:
        return None
    return "generation" if row["generate_s"] > row["update_s"] else "update"


def base_of(group: str, sides: dict[str, Side], summary: dict[str, dict]) -> str | None:
    """The group's baseline: its fastest synchronous side (``peer``: TRL's faster setting)."""
    tool = "trl" if group == "peer" else "rlexp"
    return fastest(summary, [n for n, s in sides.items() if s.group == group and s.tool == tool and s.lag == 0])


def ratios(summary: dict[str, dict], sides: dict[str, Side]) -> dict:
    """Per side ``× base``; per group its base, the ideal; the lag sides' bound; the issue's two targets."""
    out: dict = {}
    groups = sorted({s.group for s in sides.values()})
    for g in groups:
        base = base_of(g, sides, summary)
        out[f"{g}_base"] = base
        sync1 = summary.get(f"{g}_sync_t1")
        out[f"{g}_ideal_vs_sync_t1"] = ideal(sync1)
        for n, s in sides.items():
            if s.group == g and n != base:
                out[f"{n}_vs_base"] = speedup(summary.get(n), summary.get(base) if base else None)
            if s.group == g and s.lag:
                out[f"{n}_vs_sync_t1"] = speedup(summary.get(n), sync1)
                out[f"{n}_bound"] = bound(summary.get(n))
    lagged = lambda g: [n for n, s in sides.items() if s.group == g and s.lag]  # noqa: E731
    targets = {}
    for key, group in (("grpo_lag_vs_sync", "grpo"), ("peer_rlexp_lag_vs_trl", "peer")):
        if group not in groups:
            continue
        best = fastest(summary, lagged(group))
        base = base_of(group, sides, summary)
        value = speedup(summary.get(best), summary.get(base)) if best and base else None
        targets[key] = {"side": best, "base": base, "value": value, "target": TARGETS[key],
                        "met": None if value is None else value >= TARGETS[key]}
    out["targets"] = targets
    return out


def markdown_table(summary: dict[str, dict], sides: dict[str, Side], rat: dict) -> str:
    """One row per side: lag, threads, s / it, it / s, the trainer's wait and update, × base (the group's)."""
    f = lambda x, d=3: "–" if x is None else f"{x:.{d}f}"  # noqa: E731
    rows = ["| side | lag | threads | s / it | it / s | generate s | trainer wait s | update s | × base |",
            "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for n, s in sides.items():
        r = summary.get(n) or {}
        x = "base" if rat.get(f"{s.group}_base") == n else f(rat.get(f"{n}_vs_base"), 2)
        rows.append(f"| {n} | {s.lag} | {threads_label(s)} | {f(r.get('seconds_per_iteration'))} | "
                    f"{f(r.get('iterations_per_second'), 2)} | {f(r.get('generate_s'))} | {f(r.get('wait_s'))} | "
                    f"{f(r.get('update_s'))} | {x} |")
    return "\n".join(rows)


# ------------------------------------------------------------------------------ one side (the child process)
def rlexp_overrides(side: Side, steps: int, seed: int, weights: dict | None) -> list[str]:
    if side.group == "peer":
        from peer_trl import rlexp_overrides as peer
        base = peer(side.algo, weights, steps, seed, side.threads)
    elif side.group == "smollm2":
        from lora_smollm2 import BATCH, VARIANTS
        base = ["tracking=none", "trainer.progress_bar=false", f"trainer.max_steps={steps}",
                f"trainer.eval_every={steps}", f"hardware.num_threads={side.threads}", f"seed={seed}",
                "trainer.num_samples_logged=0", *BATCH, *VARIANTS["lora"]]
    else:
        base = ["tracking=none", f"algorithm={side.algo}", f"seed={seed}", f"hardware.num_threads={side.threads}",
                f"trainer.max_steps={steps}", f"trainer.eval_every={steps}", "trainer.progress_bar=false",
                "trainer.num_samples_logged=0"]
    return [*base, "trainer.save_policy=false", f"rollout.off_policy_lag={side.lag}"]


def child(name: str, side: Side, steps: int, seed: int, workdir: Path) -> dict:
    weights = prepare_weights(workdir, seed) if side.group == "peer" else None
    with contextlib.redirect_stdout(sys.stderr):  # stdout is for the one JSON line
        if side.tool == "trl":
            from peer_trl import trl_side
            return {"side": name, "seconds": iteration_seconds(trl_side(side.algo, weights, steps, seed, side.threads))}
        from rlexp.train import compose, run
        timer = lightning_iteration_timer()
        module = run(compose(rlexp_overrides(side, steps, seed, weights)), callbacks=[timer])
    its = [h for h in module.history if "perf/step_seconds" in h][1:-1]  # the timer's iterations
    return {"side": name, "seconds": iteration_seconds(timer.starts),
            "generate": [h["perf/generate_seconds"] + h["perf/reward_seconds"] for h in its],
            "wait": [h.get("perf/wait_seconds", h["perf/generate_seconds"] + h["perf/reward_seconds"]) for h in its],
            "update": [h["perf/update_seconds"] for h in its],
            "policy_lag": max((h["train/policy_lag"] for h in its), default=None)}


def run_child(name: str, args) -> tuple[dict | None, str]:
    cmd = [sys.executable, __file__, "--child", name, "--steps", str(args.steps), "--seed", str(args.seed),
           "--lags", args.lags, "--groups", ",".join(args.all_groups), "--workdir", str(args.workdir)]
    with tempfile.TemporaryDirectory() as cwd:  # a run's checkpoints/ land here, not in the caller's directory
        out = subprocess.run(cmd, capture_output=True, text=True, cwd=cwd)
    lines = [ln for ln in out.stdout.splitlines() if ln.startswith("{")]
    if out.returncode or not lines:
        return None, out.stderr[-3000:]
    return json.loads(lines[-1]), ""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=16, help="iterations per side (≥ 4; the first and last not timed)")
    ap.add_argument("--rounds", type=int, default=2, help="alternating rounds of every side")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--lags", default="1,2,4", help="the lags of the grpo and ppo groups")
    ap.add_argument("--groups", default="grpo,ppo,peer", help="of grpo, ppo, peer, smollm2")
    ap.add_argument("--smollm2", action="store_true", help="add the smollm2 group (slow: ~8 s per iteration)")
    ap.add_argument("--sides", default="", help="only these sides of the groups (comma-separated names; '' = all)")
    ap.add_argument("--out", default=str(HERE / "results" / "pipeline.json"), help="'' = do not write a file")
    ap.add_argument("--workdir", default=os.path.join(tempfile.gettempdir(), "rlexp-bench"))
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.steps < 4:
        ap.error("--steps must be ≥ 4")
    groups = [g for g in args.groups.split(",") if g] + (["smollm2"] if args.smollm2 and "smollm2" not in args.groups else [])
    unknown = sorted(set(groups) - {"grpo", "ppo", "peer", "smollm2"})
    if unknown:
        ap.error(f"--groups: unknown group(s) {unknown}; known: grpo, ppo, peer, smollm2")
    args.all_groups, args.workdir = groups, Path(args.workdir)
    sides = make_sides(groups, [int(k) for k in args.lags.split(",") if k])
    only = [n for n in args.sides.split(",") if n]
    if only and not args.child:
        if set(only) - set(sides):
            ap.error(f"--sides: unknown side(s) {sorted(set(only) - set(sides))}; known: {', '.join(sides)}")
        sides = {n: s for n, s in sides.items() if n in only}
    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if args.child:
        print(json.dumps(child(args.child, sides[args.child], args.steps, args.seed, args.workdir)), flush=True)
        return

    args.workdir.mkdir(parents=True, exist_ok=True)
    if "peer" in groups:
        prepare_weights(args.workdir, args.seed)  # once, before the children load it
    t0 = time.perf_counter()
    runs: dict[str, list[dict]] = {n: [] for n in sides}
    failed: dict[str, str] = {}
    for rnd in range(args.rounds):
        for name in side_order(list(sides), rnd):
            got, err = run_child(name, args)
            if got is None:
                failed[name] = err.strip().splitlines()[-1] if err.strip() else "no output"
                print(f"[pipeline] {name} failed:\n{err}", file=sys.stderr, flush=True)
                continue
            runs[name].append(got)
            print(f"[pipeline] round {rnd + 1}/{args.rounds} {name}: {median(got['seconds']):.4f} s/it "
                  f"({time.perf_counter() - t0:.0f} s)", file=sys.stderr, flush=True)
    summary = {n: summarize(r) for n, r in runs.items()}
    rat = ratios(summary, sides)
    line = {"benchmark": "pipeline", "steps": args.steps, "rounds": args.rounds, "seed": args.seed,
            "groups": groups, "date": time.strftime("%Y-%m-%d", time.gmtime()), "cpus": os.cpu_count(),
            **versions(), "wall_seconds": round(time.perf_counter() - t0), "sides": summary, "ratios": rat,
            "failed": failed}
    print(json.dumps(line), flush=True)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps({**line, "table": markdown_table(summary, sides, rat), "runs": runs},
                                             indent=1) + "\n")
    print(markdown_table(summary, sides, rat), file=sys.stderr)


if __name__ == "__main__":
    main()
