"""Which prompts an iteration trains on: the prompt pool and DAPO's dynamic sampling.

``PromptPool`` draws ``n`` distinct prompts for (iteration, draw) with a generator seeded by
``(seed, iteration, draw)`` — the same iteration always sees the same prompts, which keeps runs
reproducible and resumable. ScaleRL's *no-positive-resampling* removes a prompt for good once the
pass rate of its group reaches a threshold (``remove_solved``; with several workers, every worker removes
every worker's solved prompts, so the pools stay equal); the removed set is part of the run state.

``collect_groups`` implements DAPO's *dynamic sampling* (Yu et al. 2025, eq. 11: keep a group iff
0 < #correct < G): keep drawing batches of prompts, drop groups whose task verdicts (the reward before
shaping such as the overlong penalty; unscorable completions left out) are all equal — they carry no
group-relative signal — until
``num_prompts`` groups are kept or ``max_draws`` batches were drawn; a batch still short is topped
up with dropped groups (zero advantage under group estimators), so the batch shape never changes.
"""
from __future__ import annotations

from typing import Callable

import torch

from rlexp.core import group_pass_rate, zero_std_groups
from rlexp.core.seeding import PROMPT_DRAW, generator
from rlexp.rollout.batch import RolloutBatch
from rlexp.tasks.base import Example


class PromptPool:
    def __init__(self, examples: list[Example], seed: int):
        self.examples, self.seed = examples, seed
        self.removed: set[int] = set()

    @property
    def size(self) -> int:
        return len(self.examples) - len(self.removed)

    def draw(self, n: int, iteration: int, draw: int = 0) -> list[int]:
        """``n`` distinct pool indices (fewer if the pool is smaller), never a removed one."""
        g = generator(self.seed, iteration, PROMPT_DRAW, draw)
        if not self.removed:
            return torch.randperm(len(self.examples), generator=g)[:n].tolist()
        active = [i for i in range(len(self.examples)) if i not in self.removed]
        if not active:
            raise RuntimeError("every training prompt was removed by no-positive-resampling "
                               "(algorithm.pass_rate_threshold): the task is solved; stop the run or raise it")
        return [active[j] for j in torch.randperm(len(active), generator=g)[:n].tolist()]

    def remove(self, indices) -> None:
        self.removed.update(int(i) for i in indices if i >= 0)

    def remove_solved(self, batch: RolloutBatch, group_size: int, pass_reward: float, threshold: float, *,
                      gather: Callable[[list[int]], list[list[int]]] | None = None) -> int:
        """ScaleRL's no-positive-resampling: remove the prompts of ``batch`` whose group's pass rate (the share
        of its scorable completions whose task verdict is at least ``pass_reward``) reached ``threshold``.
        ``gather(this worker's solved prompts) -> every worker's`` (an all-gather; None with one worker).
        Returns how many prompts left the pool."""
        rate = group_pass_rate(batch.verdicts(), group_size, pass_reward, valid=batch.valid_rows())
        solved = [batch.prompt_index[g * group_size] for g in (rate >= threshold).nonzero().flatten().tolist()]
        if gather is not None:
            solved = [i for part in gather(solved) for i in part]
        before = self.size
        self.remove(solved)
        return before - self.size

    def state_dict(self) -> dict:
        return {"removed": sorted(self.removed)}

    def load_state_dict(self, state: dict) -> None:
        self.removed = set(state["removed"])


def collect_groups(generate: Callable[[int], RolloutBatch], *, num_prompts: int, group_size: int,
                   max_draws: int, pad_id: int) -> tuple[RolloutBatch, int, float]:
    """``(batch of num_prompts groups, batches drawn, fraction of drawn groups that had signal)``.

    ``generate(draw)`` samples and scores one batch of ``num_prompts`` groups.
    """
    kept: list[RolloutBatch] = []
    dropped: list[RolloutBatch] = []
    n_kept, n_seen, draws = 0, 0, 0
    while draws < max_draws and n_kept < num_prompts:
        batch = generate(draws)
        draws += 1
        signal = (~zero_std_groups(batch.verdicts(), group_size, valid=batch.valid_rows())).tolist()
        n_seen += len(signal)
        rows = lambda keep: [g * group_size + k for g, s in enumerate(signal) if s == keep  # noqa: E731
                             for k in range(group_size)]
        if any(signal):
            kept.append(batch.select(rows(True)))
            n_kept += sum(signal)
        if not all(signal):
            dropped.append(batch.select(rows(False)))
    parts = kept + dropped  # kept groups first; top-up with zero-signal groups only if still short
    batch = RolloutBatch.cat(parts, pad_id)
    batch = batch.select(list(range(num_prompts * group_size)))
    return batch, draws, n_kept / max(n_seen, 1)
