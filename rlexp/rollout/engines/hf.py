"""The ``hf`` rollout engine: the policy's own ``generate`` (`rlexp.rollout.generate.sample`), unchanged.

It holds the policy itself, so there are no weights to sync (``load_weights`` does nothing) and nothing to
free; its draws come from torch's global generator (``reseed`` does nothing: the run's seeding is as it
always was).
"""
from __future__ import annotations


class HFEngine:
    name = "hf"

    def __init__(self, model, tokenizer):
        self.model, self.tokenizer = model, tokenizer

    def sample(self, prompts: list[str], **kwargs):
        """`rlexp.rollout.generate.sample` with this engine's model and tokenizer."""
        from rlexp.rollout.generate import sample

        return sample(self.model, self.tokenizer, prompts, **kwargs)

    def load_weights(self, state_dict) -> None:
        """Nothing: the engine is the policy."""

    def reseed(self, seed: int) -> None:
        """Nothing: ``generate`` draws from torch's global generator."""

    def close(self) -> None:
        """Nothing to free."""
