"""The training "dataset" of an online run: the iteration indices ``0 .. max_steps-1``.

Prompts are drawn inside ``training_step`` from the task's pool with a generator seeded by
``(seed, iteration)``: the same iteration always sees the same prompts, whatever came before, which
makes runs reproducible and resumable, and lets each data-parallel rank take its own slice.
"""
from __future__ import annotations

import torch
from torch.utils.data import DataLoader, Dataset

from rlexp.core.seeding import STEP_STRIDE, Stream, generator


class IterationDataset(Dataset):
    def __init__(self, num_iterations: int, start: int = 0):
        self.start, self.stop = start, num_iterations

    def __len__(self) -> int:
        return self.stop - self.start

    def __getitem__(self, i: int) -> int:
        return self.start + i


def iteration_loader(num_iterations: int, start: int = 0) -> DataLoader:
    return DataLoader(IterationDataset(num_iterations, start), batch_size=None, shuffle=False)


def step_generator(seed: int, iteration: int, salt: int = 0) -> torch.Generator:
    """A CPU generator for one iteration's random choices: the step stream ``salt`` of `rlexp.core.seeding`
    (1 ``MINIBATCH_ORDER``, 2 ``WARMSTART_BATCHES``, 3 ``ACCEPTED_ORDER``; ``seeding.generator`` with the named
    stream is the same generator)."""
    return generator(seed, iteration, Stream(STEP_STRIDE, salt))
