"""The ``vllm`` rollout engine: a vLLM ``LLM`` in the training process, given the trainer's weights.

Built once per process from the policy: its config is written to a scratch directory and vLLM builds the
model there with placeholder weights (``load_format="dummy"``), which `load_weights` replaces at once with the
policy's own (so a GGUF-loaded, LoRA-wrapped or resumed policy is what the engine samples, never the files it
started from). Weight sync: ``model_runner.reload_weights(weights_iterator=...)`` with Hugging Face names (vLLM
repacks its linear layers after loading, so ``model.load_weights`` on part of them fails; ``reload_weights``
reloads in place: ~12 ms for the tiny model).

What the sampler returns is that of `rlexp.rollout.generate.sample` (`rlexp.rollout.engines.Generation`): the
prompts are encoded by rlexp's tokenizer (``encode_prompts``) and handed over as token ids (vLLM's tokenizer
is never loaded: ``skip_tokenizer_init``), generation stops at the tokenizer's EOS (kept, as in ``generate``),
and ``logprobs_mode="processed_logprobs"`` gives the log-prob of each sampled token under the distribution it
was drawn from (after temperature and top-p), which is what the trainer scores (vLLM's default is the raw,
pre-temperature one).

Seeding: every request is seeded, request ``j`` since the last `reseed` with ``(seed · 2^20 + j) mod 2^63``
(the online module reseeds with ``derive_seed(seed, iteration, ROLLOUT_ENGINE, draw)``), so a rollout does not
depend on what the engine sampled before it, and a resumed run samples what the uninterrupted one did.

In-process use needs ``VLLM_ENABLE_V1_MULTIPROCESSING=0`` (set before vLLM is imported: otherwise its engine
core is a subprocess spawned from an unguarded ``__main__``). Building the engine seeds Python's, numpy's and
torch's global generators and its CPU worker replaces ``torch.set_num_threads`` by a no-op; both are undone
here (the training process keeps its random streams and ``hardware.num_threads``, which the CPU engine's
forward passes use too). On the CPU the KV cache is ``kv_cache_gib`` (vLLM's ``kv_cache_memory_bytes``, the
byte form of ``VLLM_CPU_KVCACHE_SPACE``); on a GPU the engine takes ``gpu_memory_utilization`` of the memory
and, with ``sleep_between_rollouts``, sleeps between rollouts (level 1: KV cache freed, weights offloaded).
"""
from __future__ import annotations

import random
import shutil
import tempfile
from contextlib import contextmanager

import torch

from rlexp.rollout.batch import encode_prompts

GIB = 1 << 30
#: request seeds: (rollout seed · SEED_ROWS + request) mod 2^63, so rollouts of up to 2^20 requests never share one
SEED_ROWS = 1 << 20


def _config_error(text: str) -> Exception:
    from rlexp.config import ConfigError

    return ConfigError(text)


@contextmanager
def _kept_process_state():
    """Python's, numpy's and torch's random states, ``torch.set_num_threads`` and the thread count, as they
    were before the block (vLLM's engine build changes them all)."""
    import numpy as np

    py, npy = random.getstate(), np.random.get_state()
    set_threads, threads = torch.set_num_threads, torch.get_num_threads()
    devices = [torch.cuda.current_device()] if torch.cuda.is_available() else []
    try:
        with torch.random.fork_rng(devices=devices):
            yield
    finally:
        torch.set_num_threads = set_threads
        torch.set_num_threads(threads)
        random.setstate(py)
        np.random.set_state(npy)


class VLLMEngine:
    name = "vllm"

    def __init__(self, model, tokenizer, *, dtype: str = "auto", kv_cache_gib: float = 1.0,
                 gpu_memory_utilization: float = 0.3, enforce_eager: bool = True, max_num_seqs: int = 256,
                 sleep_between_rollouts: bool = False, state_dict=None, device=None):
        """An engine with ``model``'s architecture (its ``config``; a PEFT model's base config) and weights
        (``state_dict``, Hugging Face names; default ``model.state_dict()``). Tensors come back on ``device``
        (default: the model's)."""
        from rlexp.config.engines import vllm_environment

        vllm_environment()
        from vllm import LLM
        from vllm.platforms import current_platform

        self.tokenizer = tokenizer
        config = model.get_base_model().config if hasattr(model, "get_base_model") else model.config
        self.device = device if device is not None else next(model.parameters()).device
        self.on_cpu = current_platform.is_cpu()
        self.sleeps = sleep_between_rollouts and not self.on_cpu
        self.asleep = False
        self._seed, self._requests = 0, 0
        self._dir = tempfile.mkdtemp(prefix="rlexp-vllm-")
        config.save_pretrained(self._dir)
        dtype = str(model.dtype).removeprefix("torch.") if dtype == "auto" else dtype
        memory = (dict(kv_cache_memory_bytes=int(kv_cache_gib * GIB)) if self.on_cpu
                  else dict(gpu_memory_utilization=gpu_memory_utilization, enable_sleep_mode=self.sleeps))
        self._owns_process_group = not torch.distributed.is_initialized()  # vLLM makes a 1-process one then
        try:
            with _kept_process_state():
                self.llm = LLM(model=self._dir, load_format="dummy", skip_tokenizer_init=True, dtype=dtype,
                               enforce_eager=enforce_eager, max_num_seqs=max_num_seqs, seed=0,
                               logprobs_mode="processed_logprobs", **memory)
        except (ValueError, RuntimeError) as e:  # e.g. "... less than requested memory for kv (500.0 GiB)"
            shutil.rmtree(self._dir, ignore_errors=True)
            text = " ".join(str(e).split())
            if "memory" in text.lower() or "kv cache" in text.lower():
                key = (f"rollout.vllm.kv_cache_gib={kv_cache_gib}" if self.on_cpu
                       else f"rollout.vllm.gpu_memory_utilization={gpu_memory_utilization}")
                raise _config_error(f"{key}: the vLLM engine's KV cache does not fit: {text[:300]}") from None
            raise
        self.load_weights(model.state_dict() if state_dict is None else state_dict)

    # ------------------------------------------------------------------ weights
    @property
    def model_runner(self):
        return self.llm.llm_engine.model_executor.driver_worker.worker.model_runner

    def load_weights(self, state_dict) -> None:
        """Replace the engine's weights by ``state_dict`` (Hugging Face names, e.g. a LoRA policy's merged
        weights), in place."""
        self._wake()
        weights = [(name, t.detach()) for name, t in state_dict.items()]
        self.model_runner.reload_weights(weights_iterator=iter(weights))
        self._rest()

    # ------------------------------------------------------------------ sampling
    def reseed(self, seed: int) -> None:
        """The seed of the next rollout: its request ``j`` is seeded with ``(seed · 2^20 + j) mod 2^63``."""
        self._seed, self._requests = int(seed), 0

    @torch.no_grad()
    def sample(self, prompts: list[str], *, max_new_tokens: int, do_sample: bool, temperature: float = 1.0,
               top_p: float = 1.0, return_logprobs: bool = False, **prompt_options):
        """`rlexp.rollout.generate.sample`'s result for ``prompts`` (see `rlexp.rollout.engines`), one request
        per prompt; greedy (``do_sample=False``) at temperature 0."""
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        if return_logprobs and not do_sample:
            raise ValueError("return_logprobs=True needs do_sample=True")
        tok = self.tokenizer
        prompt_ids, prompt_mask = encode_prompts(tok, prompts, self.device, **prompt_options)
        requests = [TokensPrompt(prompt_token_ids=ids[m.bool()].tolist()) for ids, m in zip(prompt_ids, prompt_mask)]
        common = dict(max_tokens=int(max_new_tokens), stop_token_ids=[tok.eos_token_id], detokenize=False,
                      logprobs=0 if return_logprobs else None)
        if do_sample:
            first, self._requests = self._requests, self._requests + len(requests)
            params = [SamplingParams(temperature=float(temperature), top_p=float(top_p), top_k=0,
                                     seed=(self._seed * SEED_ROWS + first + j) % 2 ** 63, **common)
                      for j in range(len(requests))]
        else:
            params = SamplingParams(temperature=0.0, **common)
        self._wake()
        try:
            with _kept_process_state():
                outputs = self.llm.generate(requests, params, use_tqdm=False)
        finally:
            self._rest()
        return (prompt_ids, prompt_mask, *self._layout([o.outputs[0] for o in outputs], return_logprobs))

    def _layout(self, completions, return_logprobs: bool):
        """``(response_ids, mask, finished[, logprobs])`` ``[B, T]`` right-padded, as ``generate``'s."""
        tok, B = self.tokenizer, len(completions)
        T = max(1, max(len(c.token_ids) for c in completions))
        response_ids = torch.full((B, T), tok.pad_token_id, dtype=torch.long)
        mask = torch.zeros((B, T))
        logprobs = torch.zeros((B, T))
        for i, c in enumerate(completions):
            ids = list(c.token_ids)
            response_ids[i, :len(ids)] = torch.tensor(ids, dtype=torch.long)
            mask[i, :len(ids)] = 1.0
            if return_logprobs:
                logprobs[i, :len(ids)] = torch.tensor([step[t].logprob for step, t in zip(c.logprobs, ids)])
        finished = torch.tensor([len(c.token_ids) > 0 and c.token_ids[-1] == tok.eos_token_id for c in completions])
        out = (response_ids.to(self.device), mask.to(self.device), finished.to(self.device))
        return (*out, logprobs.to(self.device)) if return_logprobs else out

    # ------------------------------------------------------------------ memory
    def _wake(self) -> None:
        if self.asleep:
            self.llm.wake_up()
            self.asleep = False

    def _rest(self) -> None:
        """Between rollouts on a GPU (``sleep_between_rollouts``): the KV cache freed, the weights offloaded."""
        if self.sleeps and not self.asleep:
            self.llm.sleep(level=1)
            self.asleep = True

    def close(self) -> None:
        """Free the engine (its KV cache and weights) and its scratch directory."""
        llm, self.llm = getattr(self, "llm", None), None
        if llm is not None:
            engine = getattr(llm, "llm_engine", None)
            core = getattr(engine, "engine_core", None)
            if core is not None and hasattr(core, "shutdown"):
                core.shutdown()
            del llm
            import gc

            gc.collect()
            if self._owns_process_group:  # the process group vLLM made for itself (none was there before it)
                from vllm.distributed.parallel_state import destroy_distributed_environment, destroy_model_parallel

                destroy_model_parallel()
                destroy_distributed_environment()
        shutil.rmtree(self._dir, ignore_errors=True)
