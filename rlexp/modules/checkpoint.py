"""Checkpoints at RL-iteration boundaries, and Ctrl-C that stops at one.

``IterationCheckpoint`` writes Lightning checkpoints (``trainer.save_checkpoint``: model, optimizers,
loop state, plus the module's ``rlexp_state``: iteration, prompt pool, RNG states, MLflow run id) to
``<dir>/last.ckpt`` every ``every_n_steps`` iterations and after the last one. A checkpoint is written to
a temporary file and renamed, so a kill mid-write leaves the previous one intact.

Ctrl-C (SIGINT) and SIGTERM (what SLURM, ``docker stop`` and ``timeout`` send) do not stop an iteration
halfway: the first one is noted and the run stops at the end of the current iteration, after writing a
checkpoint; a second one stops at once. ``stop_signal`` records which signal stopped the run.
"""
from __future__ import annotations

import logging
import os
import shutil
import signal
import threading
import time
from pathlib import Path

import lightning as L
import torch

log = logging.getLogger("rlexp")
#: the signals that stop a run at the end of its current iteration, with a checkpoint
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class CheckpointError(RuntimeError):
    """A checkpoint could not be written (a full disk, a quota, a file-size limit, a read-only directory)."""


class IterationCheckpoint(L.Callback):
    def __init__(self, dirpath: str | Path, every_n_steps: int, max_steps: int, keep_all: bool = False,
                 config: dict[str, str] | None = None):
        self.dirpath, self.every, self.max_steps, self.keep_all = Path(dirpath), every_n_steps, max_steps, keep_all
        self.config = config or {}  # the run's flattened config, saved so that a resume can be checked against it
        self.last_path: Path | None = None
        self._interrupt_requested = False
        self._previous_handlers: dict = {}
        self.stop_signal: int | None = None  # the signal that stopped the run (SIGINT, SIGTERM), if one did
        self.stopped_after: int | None = None  # the iteration it stopped after, with a checkpoint
        # wall seconds of training before this process (the checkpoints it continues), and this process's start
        self.wall_before, self._t0 = 0.0, None

    # ------------------------------------------------------------------ Ctrl-C / SIGTERM at an iteration boundary
    def _on_signal(self, signum, frame):
        if self._interrupt_requested:  # the second one: stop now
            self._restore_handler()
            raise KeyboardInterrupt
        self._interrupt_requested, self.stop_signal = True, signum
        if signum == signal.SIGINT:
            log.warning("Ctrl-C: stopping after this iteration, with a checkpoint (press again to stop now)")
        else:
            log.warning("%s: stopping after this iteration, with a checkpoint (a second one stops at once)",
                        signal.Signals(signum).name)

    def on_train_start(self, trainer, pl_module):
        self._t0 = time.perf_counter()
        if threading.current_thread() is threading.main_thread():  # replaces Lightning's SIGTERM handler
            self._previous_handlers = {s: signal.signal(s, self._on_signal) for s in STOP_SIGNALS}

    def _restore_handler(self):
        if self._previous_handlers and threading.current_thread() is threading.main_thread():
            for s, handler in self._previous_handlers.items():
                signal.signal(s, handler if handler is not None else signal.SIG_DFL)
            self._previous_handlers = {}

    def on_train_end(self, trainer, pl_module):
        self._restore_handler()

    def on_exception(self, trainer, pl_module, exception):
        self._restore_handler()

    # ------------------------------------------------------------------ saving
    def on_save_checkpoint(self, trainer, pl_module, checkpoint):
        checkpoint["rlexp_config"] = dict(self.config)
        checkpoint["rlexp_wall_seconds"] = self.wall_before + time.perf_counter() - (self._t0 or time.perf_counter())

    def on_load_checkpoint(self, trainer, pl_module, checkpoint):
        self.wall_before = float(checkpoint.get("rlexp_wall_seconds", 0.0))

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        done = pl_module.iteration + 1
        stop = trainer.strategy.reduce_boolean_decision(self._interrupt_requested, all=False)  # any worker
        if stop or done % self.every == 0 or done == self.max_steps:
            self.save(trainer, done)
        if stop:
            log.warning("Interrupted after iteration %d; checkpoint %s (continue with resume=%s)",
                        done, self.last_path, self.last_path)
            self.stopped_after = done
            raise KeyboardInterrupt

    def save(self, trainer, done: int) -> Path:
        """Write ``<dir>/last.ckpt`` (via ``.last.ckpt.tmp``). A write that fails (a full disk, a quota, a
        file-size limit) leaves no partial file behind and stops the run with a `CheckpointError`."""
        final = self.dirpath / "last.ckpt"
        tmp = self.dirpath / ".last.ckpt.tmp"
        kept = self.dirpath / f"iter-{done:06d}.ckpt"
        error = None
        try:
            if trainer.is_global_zero:
                self.dirpath.mkdir(parents=True, exist_ok=True)
            trainer.save_checkpoint(tmp, weights_only=False)  # every worker takes part (sharded strategies); the first one writes
            if trainer.is_global_zero:
                os.replace(tmp, final)
                if self.keep_all:
                    shutil.copyfile(final, kept)
        except BaseException as e:
            if trainer.is_global_zero:  # a partial file would keep the disk full; the previous last.ckpt stays
                for partial in (tmp, kept) if self.keep_all else (tmp,):
                    partial.unlink(missing_ok=True)
            if not isinstance(e, OSError):
                raise
            error = e
        if trainer.strategy.reduce_boolean_decision(error is not None, all=False):  # any worker failed: all stop
            raise CheckpointError(self._write_failed(done, error)) from error
        trainer.strategy.barrier()
        self.last_path = final
        return final

    def _write_failed(self, done: int, error: OSError | None) -> str:
        import errno
        import tempfile

        if error is None:
            return f"checkpoint.dir={self.dirpath}: another worker could not write the checkpoint of iteration {done}"
        why = (str(error).splitlines() or [""])[0][:300]
        full = error.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
        fix = ("free space there (and in the temporary directory " + tempfile.gettempdir() + ", where it is staged) "
               "or set checkpoint.dir to a disk with room") if full else "make it writable or set checkpoint.dir elsewhere"
        return (f"checkpoint.dir={self.dirpath}: cannot write the checkpoint of iteration {done} "
                f"({type(error).__name__}: {why}); {fix}. No partial file was left; what the run recorded is kept")


def rng_state() -> dict:
    """The random states an iteration draws from (sampling uses torch's global generator)."""
    import random
    state = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    import random
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def read_checkpoint(path: str | Path, *, whole: bool = False) -> tuple[dict, dict[str, str]]:
    """``(rlexp_state, run config)`` of a checkpoint: its iteration, MLflow run id... and the flattened config
    of the run that wrote it (``{}`` if none). Read with ``weights_only=True`` and memory-mapped, so the
    model and optimizer tensors are not loaded; ``whole=True`` first checks every byte (`verify_whole`)."""
    if whole:
        verify_whole(path)
    ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    state = ckpt.get("rlexp_state")
    if not state or "iteration" not in state:
        raise ValueError(f"resume={path}: not a checkpoint of an rlexp online run (no rlexp_state)")
    return state, dict(ckpt.get("rlexp_config") or {})


def verify_whole(path: str | Path) -> None:
    """Every record of the checkpoint (a zip archive: the pickled structure and one record per tensor storage)
    read back and checked against the CRC-32 written with it; ``torch.load`` does not check them, so a damaged
    tensor would load as wrong weights. Streams the file once, in constant memory. Raises ``ValueError``
    naming the damage."""
    import zipfile
    try:
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()
    except (zipfile.BadZipFile, EOFError) as e:
        raise ValueError(f"not a whole checkpoint (truncated, or not one written by torch): {e}") from e
    if bad is not None:
        raise ValueError(f"damaged: its record {bad} does not match its CRC-32 (the file was altered or "
                         f"partly overwritten)")


def read_rlexp_state(path: str | Path) -> dict:
    """The ``rlexp_state`` of a checkpoint (see `read_checkpoint`)."""
    return read_checkpoint(path)[0]


#: config keys a resumed run may change: where it runs and records, how often it checkpoints/evaluates,
#: and how long it runs. Everything else (algorithm, model, task, rollout, seed) decides the update.
RESUMABLE_CHANGES = ("resume", "checkpoint.", "tracking.", "hardware.", "trainer.", "model.cache_dir")


def config_changes(saved: dict[str, str], now: dict[str, str]) -> list[str]:
    """``key: saved -> now`` for each key that differs and decides the update (``RESUMABLE_CHANGES`` aside)."""
    keys = sorted(set(saved) | set(now))
    return [f"{k}: {saved.get(k, '(absent)')} -> {now.get(k, '(absent)')}" for k in keys
            if saved.get(k) != now.get(k) and not k.startswith(RESUMABLE_CHANGES)]


def find_last_checkpoint(roots: list[Path]) -> Path | None:
    """The most recently written ``last.ckpt`` under ``roots`` (``resume=auto``)."""
    found = [p for r in roots if r.is_dir() for p in r.rglob("last.ckpt")]
    return max(found, key=lambda p: p.stat().st_mtime) if found else None
