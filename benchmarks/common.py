"""Shared pieces of the benchmarks: the same model weights for every side, one way of timing an
iteration, one way of counting generated tokens, and peak memory.

Timing: an iteration is the interval between the starts of two consecutive iterations, so it includes
everything a tool does per iteration (its loop, logging hooks, data loading), not only the part it
times itself. The first iteration (warm-up) and the last one (rlexp's final evaluation runs inside it)
are left out: ``steps`` iterations give ``steps - 2`` samples.
"""
from __future__ import annotations

import contextlib
import platform
import resource
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def iteration_seconds(starts: list[float]) -> list[float]:
    """Per-iteration seconds from iteration start times, the first and last iteration left out."""
    return [b - a for a, b in zip(starts[1:-1], starts[2:])]


def median(xs: list[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


class GenerateCounter:
    """Counts the tokens every ``generate`` call of a causal LM produces (up to and including EOS),
    with the call's start time, so that tokens can be attributed to the timed iterations."""

    def __init__(self, eos_id: int, pad_id: int):
        self.eos_id, self.pad_id = eos_id, pad_id
        self.calls: list[tuple[float, int]] = []

    @contextlib.contextmanager
    def installed(self):
        from transformers.generation.utils import GenerationMixin
        inner = GenerationMixin.generate
        counter = self

        def generate(model, *args, **kwargs):
            t = time.perf_counter()
            out = inner(model, *args, **kwargs)
            ids = out if hasattr(out, "shape") else out.sequences
            prompt = kwargs.get("input_ids", args[0] if args else None)
            counter.calls.append((t, counter._count(ids[:, prompt.shape[1]:])))
            return out
        GenerationMixin.generate = generate
        try:
            yield self
        finally:
            GenerationMixin.generate = inner

    def _count(self, gen) -> int:
        import torch
        is_eos = gen == self.eos_id
        T = gen.shape[1]
        first = torch.where(is_eos.any(1), is_eos.float().argmax(1) + 1, torch.full_like(is_eos[:, 0], T, dtype=torch.long))
        return int(first.sum().item())

    def tokens_between(self, t0: float, t1: float) -> int:
        return sum(n for t, n in self.calls if t0 <= t < t1)


def peak_rss_mb() -> float:
    """This process's peak resident set size (MiB): ``VmHWM`` of its own address space. (``ru_maxrss``
    would not do for a subprocess: Linux carries the parent's peak over fork and exec.)"""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # not Linux: best effort


def prepare_weights(workdir: Path, seed: int, overrides: list[str] = ()) -> dict[str, Path]:
    """The policy every side loads (rlexp's warm-started tiny model, saved with ``save_pretrained``) and a
    tiny reward model of the same shape (``LlamaForSequenceClassification``, one label, seeded).
    ``overrides``: Hydra overrides of the warm start (the default experiment's when empty)."""
    import torch
    from hydra.utils import instantiate
    from transformers import AutoConfig, AutoTokenizer, LlamaForSequenceClassification

    from rlexp.train import compose
    from rlexp.warmstart import prepare_model_dir

    cfg = compose(["tracking=none", *overrides])
    task = instantiate(cfg.task)
    policy_dir, _ = prepare_model_dir(cfg.model, task, cfg.hardware)
    rm_dir = workdir / f"reward_model_seed{seed}"
    if not (rm_dir / "config.json").is_file():
        config = AutoConfig.from_pretrained(policy_dir)
        config.num_labels = 1
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            rm = LlamaForSequenceClassification(config)
        rm.save_pretrained(rm_dir)
        AutoTokenizer.from_pretrained(policy_dir).save_pretrained(rm_dir)
    return {"policy": Path(policy_dir), "reward_model": rm_dir}


def versions() -> dict[str, str]:
    import torch
    import transformers
    out = {"torch": torch.__version__, "transformers": transformers.__version__,
           "machine": f"{platform.machine()}, {platform.processor() or 'cpu'}", "python": platform.python_version()}
    try:
        import trl
        out["trl"] = trl.__version__
    except ImportError:
        pass
    return out


def lightning_iteration_timer():
    """A Lightning callback recording the start time of every training iteration (``.starts``)."""
    import lightning as L

    class IterationTimer(L.Callback):
        def __init__(self):
            self.starts: list[float] = []

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            self.starts.append(time.perf_counter())
    return IterationTimer()
