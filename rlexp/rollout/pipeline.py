"""The off-policy generator (``rollout.off_policy_lag = k ≥ 1``): a process beside the trainer that samples
and scores the rollout of iteration ``j`` while the trainer updates on an earlier one.

**The lag is fixed, not "at most".** The weights *version* ``v`` is the policy after ``v`` optimizer updates
(version ``v`` is what the trainer holds when iteration ``v`` starts). The generator samples the batch of
iteration ``j`` with version ``need(j) = max(start, j - k)`` exactly, where ``start`` is the version it was
started with (0, or the iteration a resumed run continues from): it waits for that version if it does not
have it yet, and it never uses a newer one (it is never sent one before it asked for ``j``: the trainer
sends version ``i + 1`` after iteration ``i``'s update, and ``need(j) ≤ i + 1`` for every ``j ≤ i + 1 + k``).
So the batch trained at iteration ``i`` was sampled with the weights of iteration ``i - k`` (``i`` of the first
``k`` ones: the initial weights), whatever the two processes' speeds: a run is reproducible. With the
synchronous loop the same rule holds with ``k = 0``.

**The process.** ``fork``ed from the trainer (the child starts with the trainer's whole state: model, task,
prompt pool, tokenizer — nothing is rebuilt or pickled), so it must start before the trainer builds
anything a fork cannot carry (a vLLM engine, CUDA). A forked process cannot grow OpenMP's thread pool
(measured here: a child that calls ``torch.set_num_threads(2)`` after its parent used two threads hangs in
its first matrix product), so the generator runs with one intra-op thread. It ignores Ctrl-C (the trainer
handles it and closes the generator); it exits when told to, when it has produced its last batch, or when
the trainer's end of the pipe is gone.

**Messages** are pickled by value (tensors included, no shared-memory handles that die with their sender):
the trainer sends ``(version, payload)`` (what changed: the trainable weights, the prompt pool), the
generator sends ``("batch", j, version, result)`` or, on an exception, ``("error", j, exception)``; the
trainer re-raises that exception in its own process, prefixed with where it happened. A generator that dies
without a word (a kill, a segfault, out of memory) is noticed within ``poll_seconds`` and stops the run with
`GeneratorDied`, naming its pid, exit code and the iteration it was producing: the trainer never waits for a
dead generator.

What lives elsewhere: what a batch *is* and how it is made (the module's ``collect_rollout``), the weights
a version carries and how they are loaded (`rlexp.modules.pipelined`).
"""
from __future__ import annotations

import os
import pickle
import queue
import signal
from typing import Any, Callable, NamedTuple


#: the generator's intra-op threads: one (a forked process cannot grow OpenMP's thread pool)
GENERATOR_THREADS = 1


def trainer_threads(total: int) -> int:
    """The trainer's torch threads beside the generator, out of ``total`` (``hardware.num_threads``, or torch's
    default when that is null): the rest, at least one (``hardware.num_threads=1``: 1 + 1, both cores of a
    2-core machine)."""
    return max(1, total - GENERATOR_THREADS)


class GeneratorDied(RuntimeError):
    """The generator process ended without producing a batch the trainer waits for."""


class Produced(NamedTuple):
    """The batch of ``iteration``, sampled with weights ``version``, and what ``produce`` returned for it."""
    iteration: int
    version: int
    result: Any


def needed_version(iteration: int, lag: int, start: int) -> int:
    """The weights version the batch of ``iteration`` is sampled with: ``max(start, iteration - lag)``."""
    return max(start, iteration - lag)


def _die_with_parent(parent: int) -> None:
    """Linux: the kernel kills this process when the trainer dies (even by SIGKILL), so no orphan is left
    waiting for weights that will never come; elsewhere `_next_weights` notices the new parent."""
    try:
        import ctypes
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass
    if os.getppid() != parent:  # it died before the line above took effect
        os._exit(1)


def _next_weights(weights_q, parent: int):
    """The next message from the trainer; exits this process if the trainer is gone."""
    while True:
        try:
            return weights_q.get(timeout=1.0)
        except queue.Empty:
            if os.getppid() != parent:
                os._exit(1)


def _child_loop(produce, apply, lag: int, start: int, first: int, stop: int, threads: int, weights_q, out_q,
                parent: int):
    import torch

    _die_with_parent(parent)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the trainer's: it closes the generator
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    torch.set_num_threads(threads)
    version, j = start, first
    try:
        for j in range(first, stop):
            need = needed_version(j, lag, start)
            while version < need:
                msg = _next_weights(weights_q, parent)
                if msg is None:  # the trainer is done with us
                    return
                version, payload = pickle.loads(msg)
                apply(payload)
            out_q.put(pickle.dumps(("batch", j, version, produce(j))))
    except BaseException as e:  # noqa: BLE001 — every failure goes to the trainer, as itself when it pickles
        try:
            out_q.put(pickle.dumps(("error", j, e)))
        except Exception:  # an exception that does not pickle: its type and text
            out_q.put(pickle.dumps(("error", j, RuntimeError(f"{type(e).__name__}: {e}"))))
        out_q.close()
        out_q.join_thread()
        os._exit(1)


class OffPolicyGenerator:
    """The trainer's end of the pipeline: `start` forks the generator, `get` waits for a batch, `send` hands it a
    new weights version, `close` ends it.

    ``produce(j)`` (run in the child) makes the batch of iteration ``j``; ``apply(payload)`` (in the child) loads a
    version's payload. Batches ``first .. stop - 1`` are produced, in order.
    """

    def __init__(self, produce: Callable[[int], Any], apply: Callable[[Any], None], *, lag: int, start: int,
                 first: int, stop: int, threads: int = GENERATOR_THREADS, poll_seconds: float = 0.2, name: str = "rollout generator"):
        if lag < 1:
            raise ValueError(f"rollout.off_policy_lag={lag}: the generator process is for a lag of at least 1")
        self.produce, self.apply = produce, apply
        self.lag, self.start_version, self.first, self.stop, self.threads = lag, start, first, stop, threads
        self.poll_seconds, self.name = poll_seconds, name
        self.process = None
        self._received: dict[int, Produced] = {}

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> None:
        import multiprocessing as mp

        ctx = mp.get_context("fork")
        self._weights_q, self._out_q = ctx.Queue(), ctx.Queue()
        self.process = ctx.Process(target=_child_loop, name=self.name, daemon=True,
                                   args=(self.produce, self.apply, self.lag, self.start_version, self.first,
                                         self.stop, self.threads, self._weights_q, self._out_q, os.getpid()))
        self.process.start()

    @property
    def pid(self) -> int | None:
        return None if self.process is None else self.process.pid

    def close(self, timeout: float = 5.0) -> None:
        """Tell the generator to stop, wait ``timeout`` seconds for it, then kill it. Idempotent."""
        p, self.process = self.process, None
        if p is None:
            return
        if p.is_alive():
            try:
                self._weights_q.put(None)
            except (OSError, ValueError):
                pass
            p.join(timeout)
            if p.is_alive():
                p.kill()
                p.join(timeout)
        for q in (self._weights_q, self._out_q):
            q.cancel_join_thread()  # never block the trainer's exit on a pipe nobody reads
            q.close()

    # ------------------------------------------------------------------ trainer side
    def send(self, version: int, payload: Any) -> None:
        """Hand the generator weights ``version`` (what ``apply`` loads); nothing once it needs no newer one."""
        last_needed = needed_version(self.stop - 1, self.lag, self.start_version)
        if self.process is not None and version <= last_needed:
            self._weights_q.put(pickle.dumps((version, payload)))

    def get(self, iteration: int) -> Produced:
        """The batch of ``iteration``, waiting for it; raises what the generator raised, or `GeneratorDied`."""
        while iteration not in self._received:
            self._receive_one(iteration)
        return self._received.pop(iteration)

    def holds(self, iteration: int) -> bool:
        return iteration in self._received

    def put_back(self, produced: Produced) -> None:
        """A batch received earlier (a resumed run's in-flight batches, from its checkpoint)."""
        self._received[produced.iteration] = produced

    def peek(self, iterations: range) -> list[Produced]:
        """The batches of ``iterations`` (waiting for those not received yet), left in place: what a checkpoint
        saves so that a resumed run trains on exactly these."""
        out = []
        for j in iterations:
            while j not in self._received:
                self._receive_one(j)
            out.append(self._received[j])
        return out

    def _receive_one(self, iteration: int) -> None:
        if self.process is None:
            raise GeneratorDied(f"{self.name}: closed before it produced the batch of iteration {iteration}")
        while True:
            try:
                msg = self._out_q.get(timeout=self.poll_seconds)
                break
            except queue.Empty:
                if not self.process.is_alive():
                    try:  # it may have put its last words just before it ended
                        msg = self._out_q.get(timeout=self.poll_seconds)
                        break
                    except queue.Empty:
                        raise GeneratorDied(self._death(iteration)) from None
        kind, j, *rest = pickle.loads(msg)
        if kind == "error":
            err = rest[0]
            self.close()
            prefix = f"{self.name} (iteration {j}): "
            try:
                err.args = (prefix + str(err.args[0]),) + tuple(err.args[1:]) if err.args else (prefix.rstrip(": "),)
            except Exception:  # noqa: BLE001 — an exception whose args cannot be set keeps its own text
                pass
            raise err
        version, result = rest
        self._received[j] = Produced(j, version, result)

    def _death(self, iteration: int) -> str:
        p = self.process
        p.join(0.1)
        code = p.exitcode
        how = (f"was killed by {signal.Signals(-code).name}" if code is not None and code < 0 and
               -code in signal.Signals._value2member_map_ else f"exited with code {code}")
        return (f"{self.name} (pid {p.pid}) {how} before it produced the batch of iteration {iteration} "
                f"(rollout.off_policy_lag={self.lag}); what was logged and checkpointed is kept")

