"""Preparing the policy's starting directory: build the embedded model, warm-start it, cache it.

Every model ends up as a local directory loaded by ``rlexp.models.load_causal_lm`` — the same path
a user's own Hugging Face model takes. For ``model=tiny`` the random-initialised model is saved under
``<cache_dir>/models/tiny-<key>``; a warm start (short SFT on the task's format, stopped at the first
greedy evaluation that reaches ``target_accuracy``) is saved under ``<cache_dir>/warmstart/<key>``,
where ``key`` hashes everything that made it. It is built on first use (under a file lock, so parallel
sweep jobs build it once) and reported as such.

The embedded model's character tokenizer has one token per character of ``task.char_alphabet()``: the
task's fixed ``alphabet`` (``task=arithmetic``: ``0123456789+=``), else every character of its texts.

**Which prompts the warm start checks.** Its greedy evaluations run on the first ``CHECK_PROMPTS`` (200)
prompts of the task's *training* pool (the held-out eval split stays unseen). A pool of ``HOLD_OUT_FROM``
(1000) prompts or more holds them out of the SFT data, which is the rest of the pool; a smaller pool
trains on all its prompts and checks on the first 200 of them (or all), since holding out a fifth of a few
dozen prompts would leave both the training data and the check too small to mean anything (a 10-prompt
task trains on its 10 prompts). Only these small pools have ``"check": "train"`` in their cache key, so the
keys of larger pools' warm starts are unchanged. A task without training prompts is refused
(``model.warmstart.enabled=false`` turns the warm start off).
"""
from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import shutil
import time
from contextlib import contextmanager
from pathlib import Path

import lightning as L
import torch
import transformers
from omegaconf import OmegaConf

from rlexp.config import ConfigError
from rlexp.config.paths import resolve_model_dir
from rlexp.core.seeding import WARMSTART_BATCHES, generator
from rlexp.models import (
    ModelLoadError, build_char_tokenizer, build_tiny_model, check_characters, load_causal_lm, load_tokenizer,
    source_gguf_file,
)
from rlexp.modules import SFTModule
from rlexp.rollout import collate_supervised, evaluate

log = logging.getLogger(__name__)
INFO_FILE = "rlexp_warmstart.json"
_VERSION = 1  # bump when the warm-start procedure changes, to invalidate caches


def _key(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


@contextmanager
def _locked(path: Path):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(str(path) + ".lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _save_atomic(target: Path, write) -> None:
    tmp = target.with_name(target.name + f".tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    write(tmp)
    shutil.rmtree(target, ignore_errors=True)
    os.replace(tmp, target)


def build_tiny_dir(model_cfg, task) -> Path:
    """The random-initialised embedded model + a character tokenizer over ``task.char_alphabet()``, saved with
    save_pretrained (a task with a chat template is refused: the character tokenizer has none)."""
    if task.chat_template:
        raise ModelLoadError("task.chat_template=true: model=tiny's character tokenizer has no chat template (set "
                             "task.chat_template=false, or use model=hf with an instruct model)")
    arch = {k: model_cfg[k] for k in ("hidden_size", "intermediate_size", "num_layers", "num_heads", "init_seed")}
    alphabet = task.char_alphabet()  # a fixed one (task=arithmetic) keeps the key of the models already cached
    if not alphabet:
        raise ModelLoadError(f"model=tiny: task {task.name!r} has no text to build a character alphabet from")
    key = _key({"arch": arch, "alphabet": alphabet, "transformers": transformers.__version__, "v": _VERSION})
    target = Path(model_cfg.cache_dir).expanduser() / "models" / f"tiny-{key}"
    with _locked(target):
        if not (target / "config.json").is_file():
            tok = build_char_tokenizer(alphabet)
            model = build_tiny_model(tok, hidden_size=arch["hidden_size"],
                                     intermediate_size=arch["intermediate_size"], num_layers=arch["num_layers"],
                                     num_heads=arch["num_heads"], seed=arch["init_seed"])

            def write(d: Path):
                model.save_pretrained(d)
                tok.save_pretrained(d)
            _save_atomic(target, write)
    return target


class _StopAtAccuracy(L.Callback):
    """Greedy-evaluate every ``every`` steps; stop at the first evaluation reaching ``target``."""

    def __init__(self, tokenizer, task, examples, every: int, target: float):
        self.tokenizer, self.task, self.examples, self.every, self.target = tokenizer, task, examples, every, target
        self.evals: list[tuple[int, float]] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        step = batch_idx + 1
        if step % self.every:
            return
        acc = evaluate(pl_module.model, self.tokenizer, self.task, self.examples,
                       max_new_tokens=self.task.max_new_tokens).accuracy
        self.evals.append((step, acc))
        if acc >= self.target:
            trainer.should_stop = True


class _SFTBatches(torch.utils.data.Dataset):
    """Step ``i`` → a batch of training examples drawn with a generator seeded by (seed, i)."""

    def __init__(self, tokenizer, task, examples, batch_size: int, steps: int, seed: int):
        self.tokenizer, self.task, self.examples = tokenizer, task, examples
        self.batch_size, self.steps, self.seed = batch_size, steps, seed

    def __len__(self):
        return self.steps

    def __getitem__(self, i):
        g = generator(self.seed, i, WARMSTART_BATCHES)
        idx = torch.randint(len(self.examples), (self.batch_size,), generator=g).tolist()
        rows = [self.examples[j] for j in idx]
        return collate_supervised(self.tokenizer, [e.prompt for e in rows],
                                  [self.task.sft_completion(e) for e in rows], chat_template=self.task.chat_template)


#: the warm start checks its progress on this many prompts of the training pool (never on the eval split) ...
CHECK_PROMPTS = 200
#: ... held out from its SFT data when the pool has at least this many (so that 4/5 of it or more is left to train
#: on); a smaller pool trains on all its prompts and is checked on the first of them
HOLD_OUT_FROM = 5 * CHECK_PROMPTS


def check_split(task) -> tuple[list, list, bool]:
    """``(check, train, held_out)``: the prompts the warm start checks its progress on, those it trains on, and
    whether the check prompts are held out from training (pools of ``HOLD_OUT_FROM`` prompts or more). A task
    without training prompts cannot be warm-started: a one-line ``ConfigError`` says so."""
    pool = task.train_examples
    if not pool:
        raise ConfigError(f"model.warmstart.enabled=true: task {task.name!r} has no training prompts to warm-start "
                          f"on (set model.warmstart.enabled=false to start from the model as loaded)")
    if len(pool) >= HOLD_OUT_FROM:
        return pool[:CHECK_PROMPTS], pool[CHECK_PROMPTS:], True
    return pool[:CHECK_PROMPTS], pool, False


def made_of(src: Path, model_cfg, task, precision: str = "32-true") -> dict:
    """Everything that makes a warm start: its cache key hashes this (``precision``: ``hardware.precision``, which
    the warm start trains at; in the key only when it is not float32, so those keys stay as they were)."""
    out = {"src": str(src.resolve()), "ws": OmegaConf.to_container(model_cfg.warmstart), "task": task.fingerprint(),
           "seed": model_cfg.init_seed, "dtype": model_cfg.dtype, "v": _VERSION}
    gguf_file = source_gguf_file(model_cfg, src)
    if gguf_file:  # only then: the keys of existing caches stay as they were
        out["gguf_file"] = gguf_file
    if not check_split(task)[2]:  # likewise: only small pools, checked on their training prompts
        out["check"] = "train"
    if str(precision) not in ("32-true", "32"):  # a bf16 warm start is another model than the float32 one
        out["precision"] = str(precision)
    return out


def warm_start(src: Path, model_cfg, task, hardware_cfg) -> tuple[Path, dict]:
    """SFT ``src`` on the task's format until ``target_accuracy``; cached. Returns (dir, info)."""
    ws = model_cfg.warmstart
    gguf_file = source_gguf_file(model_cfg, src)
    check, train, held_out = check_split(task)
    key = _key(made_of(src, model_cfg, task, hardware_cfg.precision))
    target = Path(model_cfg.cache_dir).expanduser() / "warmstart" / f"{model_cfg.name}-{key}"
    with _locked(target):
        if (target / INFO_FILE).is_file():
            info = json.loads((target / INFO_FILE).read_text())
            info["built"] = False
            return target, info
        t0 = time.perf_counter()
        log.info("Building the warm start (first use of this model/task/config): %s", target)
        tok = load_tokenizer(src, trust_remote_code=model_cfg.trust_remote_code, gguf_file=gguf_file)
        check_characters(tok, task.texts(), source=str(src))  # a character tokenizer: every task text encodes
        model = load_causal_lm(src, dtype=model_cfg.dtype, trust_remote_code=model_cfg.trust_remote_code,
                               gguf_file=gguf_file)
        stopper = _StopAtAccuracy(tok, task, check, ws.eval_every, ws.target_accuracy)
        module = SFTModule(model, lr=ws.lr, warmup_steps=ws.warmup_steps, fp32_logits=model_cfg.fp32_logits)
        loader = torch.utils.data.DataLoader(
            _SFTBatches(tok, task, train, ws.batch_size, ws.max_steps, model_cfg.init_seed), batch_size=None)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(model_cfg.init_seed)
            trainer = L.Trainer(max_epochs=1, accelerator=hardware_cfg.accelerator, devices=1,
                                precision=hardware_cfg.precision, logger=False, enable_checkpointing=False,
                                enable_progress_bar=False, enable_model_summary=False, callbacks=[stopper])
            trainer.fit(module, train_dataloaders=loader)
        final = evaluate(model, tok, task, check, max_new_tokens=task.max_new_tokens).accuracy
        info = {"path": str(target), "source": str(src), "steps": trainer.global_step,
                "check": {"prompts": len(check), "held_out": held_out},
                "accuracy": final, "target_accuracy": ws.target_accuracy,
                "reached_target": final >= ws.target_accuracy, "seconds": round(time.perf_counter() - t0, 2),
                "evals": stopper.evals}

        def write(d: Path):
            model.save_pretrained(d)
            tok.save_pretrained(d)
            (d / INFO_FILE).write_text(json.dumps(info, indent=1))
        _save_atomic(target, write)
        info["built"] = True
        log.info("Warm start built in %.1f s: %d SFT steps, greedy accuracy %.3f", info["seconds"],
                 info["steps"], final)
        return target, info


def prepare_model_dir(model_cfg, task, hardware_cfg) -> tuple[Path, dict]:
    """The directory the policy loads from, and what the warm start did (``{}`` when disabled)."""
    if model_cfg.name == "tiny":
        src = build_tiny_dir(model_cfg, task)
    else:  # a directory, or pkg://<module> (an installed package's folder, e.g. the one holding a GGUF file)
        src = resolve_model_dir(str(model_cfg.name_or_path))
    if not model_cfg.warmstart.enabled:
        return src, {}
    return warm_start(src, model_cfg, task, hardware_cfg)
