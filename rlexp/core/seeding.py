"""How a run's ``seed`` becomes the seed of each of its random streams: the one home of that derivation.

Every stream is keyed by ``(seed, iteration)`` (the iteration, or the rejection-sampling round, or the
warm start's step) so that the same iteration sees the same random choices whatever came before it, which
is what makes runs reproducible and resumable. With run seed ``s``, iteration ``i``, and a stream's
``stride`` and ``index`` (plus ``draw``: the d-th draw of one iteration)::

    derive_seed(s, i, stream, d) = ((s · 1_000_003 + i) · stride + index + d)  mod 2^64

``s · 1_000_003 + i`` is distinct for every ``(s, i)`` with ``i < 1_000_003``; the stride (a prime) and the
index keep the streams of one iteration apart. ``mod 2^64``: a generator takes 64 bits; below that (every
seed the formulas gave before this module, for ``s < ~2.3e9``) the value is the formula's own, above it a
run seed in ``[2.3e9, 2^32)`` (which validation accepts) no longer overflows ``manual_seed``.

The streams (each the formula that its call site used before it came here, so same seed, same numbers):

    stream              stride  index  used by
    MINIBATCH_ORDER       7       1    online: the minibatch order of iteration i's update epochs
    WARMSTART_BATCHES     7       2    the warm start's SFT: the examples of step i
    ACCEPTED_ORDER        7       3    rejection sampling: the shuffles of round i's accepted completions
    PROMPT_DRAW        7919       0    PromptPool: the prompts of iteration i, draw d (DAPO's dynamic sampling)
    ROLLOUT               1       0    rejection sampling: ``torch.manual_seed`` while round i's completions
                                       are sampled (under ``fork_rng``: the global streams are untouched)
    PASS_AT_K          7901       0    the pass@k evaluation logged at step i: ``seeded`` while its completions
                                       are sampled, so that turning it on leaves every training stream as it was
    ROLLOUT_ENGINE     7907       0    rollout.engine=vllm: the sampling seeds of iteration i, draw d (request j of
                                       that rollout: ``derive_seed · 2^20 + j``, `rlexp.rollout.engines.vllm`)
    ROLLOUT_PIPELINE   7927       0    rollout.off_policy_lag ≥ 1: ``seeded`` while the generator process samples
                                       the batch of iteration i (`rlexp.modules.pipelined`)

The first three are the *step streams* (stride 7, index = the ``salt`` of
`rlexp.modules.data.step_generator`). ``seeded`` runs a block under a fixed seed without disturbing the
global streams. Pure arithmetic and torch: no Lightning, no config.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import NamedTuple

import torch

#: spreads the run seeds apart: ``s · RUN_STRIDE + i`` is one number per (seed, iteration)
RUN_STRIDE = 1_000_003
#: the stride of the step streams (`rlexp.modules.data.step_generator`'s ``salt`` is their index)
STEP_STRIDE = 7


class Stream(NamedTuple):
    """One random stream of a run: ``derive_seed`` multiplies ``s · RUN_STRIDE + i`` by ``stride`` and adds
    ``index``."""
    stride: int
    index: int = 0


MINIBATCH_ORDER = Stream(STEP_STRIDE, 1)
WARMSTART_BATCHES = Stream(STEP_STRIDE, 2)
ACCEPTED_ORDER = Stream(STEP_STRIDE, 3)
PROMPT_DRAW = Stream(7919, 0)
ROLLOUT = Stream(1, 0)
PASS_AT_K = Stream(7901, 0)
ROLLOUT_ENGINE = Stream(7907, 0)
ROLLOUT_PIPELINE = Stream(7927, 0)


def derive_seed(seed: int, iteration: int, stream: Stream, draw: int = 0) -> int:
    """``((seed · RUN_STRIDE + iteration) · stream.stride + stream.index + draw) mod 2^64``: the seed of
    ``stream`` at ``iteration`` (its ``draw``-th draw there) for run seed ``seed``."""
    return ((seed * RUN_STRIDE + iteration) * stream.stride + stream.index + draw) % 2 ** 64


def generator(seed: int, iteration: int, stream: Stream, draw: int = 0) -> torch.Generator:
    """A CPU ``torch.Generator`` seeded with `derive_seed` ``(seed, iteration, stream, draw)``."""
    return torch.Generator().manual_seed(derive_seed(seed, iteration, stream, draw))


@contextmanager
def seeded(seed: int, device: torch.device):
    """Run a block (sampling) under ``torch.manual_seed(seed)`` without disturbing the global RNG streams: the
    CPU one and ``device``'s when it is a CUDA device are restored afterwards (``torch.random.fork_rng``)."""
    devices = [device.index if device.index is not None else torch.cuda.current_device()] \
        if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield
