"""The experience of one RL iteration: the rollout plus the tensors derived from it for the update.

Shapes: ``B`` completions (a group's ``num_generations`` completions are consecutive rows), ``P`` prompt
tokens (left-padded), ``T`` response tokens (right-padded; ``mask`` ones a prefix of each row).

The fields an update reads (`UPDATE_FIELDS`) are sliced per minibatch by `Experience.take`; the others
are diagnostics of the whole batch, logged once per iteration. A field that does not apply is None,
never missing: ``ref_logprobs`` / ``kl`` without a reference policy, ``mc_advantages`` without a critic,
``zero_std_rows`` without groups.

**The single pass.** With one epoch over one minibatch the update starts from the very policy that
sampled, so its own first forward gives ``logπ_old = sg(logπ_θ)``: `make_experience` then leaves
``old_logprobs``, ``rollout_entropy`` and ``kl`` None (`needs_old_logprobs` is True) and the update
stores them with `store_first_pass` once its forward has run.
"""
from __future__ import annotations

from dataclasses import dataclass, fields

import torch

from rlexp import core
from rlexp.rollout import RolloutBatch

Tensor = torch.Tensor

#: [B, P] fields: never trimmed along T
ROW_FIELDS = ("prompt_ids", "prompt_mask")
#: the fields an update reads, sliced per minibatch; the others are diagnostics
UPDATE_FIELDS = ROW_FIELDS + ("response_ids", "mask", "loss_mask", "old_logprobs", "advantages", "ref_logprobs",
                              "old_values", "returns", "rollout_logprobs")


@dataclass
class Experience:
    #: [B, P] prompt tokens and their attention mask (left-padded)
    prompt_ids: Tensor
    prompt_mask: Tensor
    #: [B, T] sampled tokens and their mask (1 on the completion, EOS included)
    response_ids: Tensor
    mask: Tensor
    #: [B, T] ``mask`` with the rows left out of the loss zeroed (zero-variance groups, truncated or
    #: unscorable completions)
    loss_mask: Tensor
    #: [B, T] the advantages the loss uses (whitened when ``whiten_advantages``)
    advantages: Tensor
    #: [B, T] the critic's values at the rollout (zeros without a critic) and the value targets
    old_values: Tensor
    returns: Tensor
    #: [B, T] the trainer's log-probs before the update; None until the single pass has run
    old_logprobs: Tensor | None = None
    #: [B, T] the reference policy's log-probs; None without a reference
    ref_logprobs: Tensor | None = None
    #: [B, T] the sampler's log-probs (the rollout's, for the rollout correction); None = not recorded
    rollout_logprobs: Tensor | None = None
    # ---- diagnostics (whole batch, not sliced)
    #: the rollout the experience was made from (None on a minibatch)
    rollout: RolloutBatch | None = None
    #: [B, T] token rewards: the task's (shaped) reward, minus β·KL with ``kl_placement=in_reward``
    rewards: Tensor | None = None
    #: [B, T] the estimator's advantages before whitening
    raw_advantages: Tensor | None = None
    #: [B, T] Monte-Carlo advantages (GAE with λ = 1), beside a critic's GAE(λ); None without a critic
    mc_advantages: Tensor | None = None
    #: [B] 1.0 where the row's group has no variance in the task's verdict; None without groups
    zero_std_rows: Tensor | None = None
    #: [B, T] the policy's entropy at the rollout; None until the single pass has run
    rollout_entropy: Tensor | None = None
    #: [B, T] the KL estimate k(logπ_old, logπ_ref) on the mask; None without a reference (or until the
    #: single pass has run)
    kl: Tensor | None = None

    @property
    def size(self) -> int:
        return self.response_ids.shape[0]

    @property
    def needs_old_logprobs(self) -> bool:
        """True on the single-pass path: the update's first forward gives the old log-probs."""
        return self.old_logprobs is None

    def take(self, idx: Tensor) -> "Experience":
        """Rows ``idx`` of the update's fields, trimmed to the longest completion among them; the
        diagnostics are left None."""
        T = max(int(self.mask[idx].sum(1).max().item()), 1)
        cut = lambda k, x: x[idx] if k in ROW_FIELDS else x[idx, :T]  # noqa: E731
        picked = {k: None if getattr(self, k) is None else cut(k, getattr(self, k)) for k in UPDATE_FIELDS}
        return Experience(**picked)

    def store_first_pass(self, idx: Tensor, logprobs: Tensor, entropy: Tensor) -> None:
        """The single pass's log-probs and entropy of rows ``idx`` (``[len(idx), T']``, a minibatch's
        first ``T'`` positions) as ``old_logprobs`` / ``rollout_entropy``, the values `make_experience`
        would have computed (zeros where no forward ran)."""
        T = logprobs.shape[1]
        for name, value in (("old_logprobs", logprobs), ("rollout_entropy", entropy)):
            if getattr(self, name) is None:
                setattr(self, name, torch.zeros_like(self.mask))
            getattr(self, name)[idx, :T] = value.to(getattr(self, name).dtype)

    def store_first_pass_kl(self, estimator: str) -> None:
        """The KL diagnostic ``k(logπ_old, logπ_ref)·mask`` once the single pass gave ``old_logprobs``."""
        if self.ref_logprobs is not None:
            self.kl = core.kl_estimate(self.old_logprobs, self.ref_logprobs, estimator) * self.mask

    def __repr__(self) -> str:
        shapes = {f.name: tuple(v.shape) for f in fields(self) if isinstance(v := getattr(self, f.name), Tensor)}
        return f"Experience({shapes})"

