"""Reward shaping on completion lengths.

``overlong_penalty`` maps per-completion lengths ``[B]`` to an additive reward term ``[B]``;
``add_overlong_penalty`` adds it to a batch's sequence reward (on the last masked token) and scores.
"""

from __future__ import annotations

import torch

Tensor = torch.Tensor


def overlong_penalty(lengths: Tensor, max_len: int, buffer: int, penalty: float) -> Tensor:
    """DAPO soft overlong punishment (Yu et al., 2025, eq. 13).

    With ``L_max = max_len``, ``L_cache = buffer``, ``|y| = lengths``::

        R(y) = 0                                          if |y| <= L_max - L_cache
             = ((L_max - L_cache) - |y|) / L_cache · penalty   if L_max - L_cache < |y| <= L_max
             = -penalty                                   if |y| > L_max

    (``buffer = 0``: 0 up to ``L_max``, then ``-penalty``).  lengths: ``[B]`` float or
    integer -> float ``[B]`` (dtype of ``lengths`` if floating), values in ``[-penalty, 0]``.
    ValueError if ``buffer < 0``, ``buffer > max_len`` or ``penalty < 0``.
    """
    if buffer < 0 or buffer > max_len:
        raise ValueError(f"buffer must be in [0, max_len={max_len}], got {buffer}")
    if not penalty >= 0:
        raise ValueError(f"penalty must be >= 0, got {penalty}")
    dtype = lengths.dtype if lengths.is_floating_point() else torch.get_default_dtype()
    L = lengths.to(dtype)
    start = max_len - buffer
    ramp = (start - L) / max(buffer, 1) * penalty  # only selected when buffer > 0
    zero = torch.zeros((), dtype=dtype, device=L.device)
    full = torch.full((), -float(penalty), dtype=dtype, device=L.device)
    return torch.where(L <= start, zero, torch.where(L <= max_len, ramp, full))


def add_overlong_penalty(token_rewards: Tensor, scores: Tensor, mask: Tensor, max_len: int, buffer: int,
                         penalty: float) -> tuple[Tensor, Tensor]:
    """DAPO's overlong shaping of a batch: ``R(|y|)`` of :func:`overlong_penalty`, with ``|y| = Σ_t mask``,
    added to the reward of each row's last masked token and to its score.

    token_rewards ``[B, T]``, scores ``[B]``, mask ``[B, T]`` (ones a prefix of each row) ->
    ``(token_rewards', scores')`` of the same shapes and dtypes, new tensors (the inputs are left as they
    are): ``token_rewards'[i, |y_i| - 1] = token_rewards[i, |y_i| - 1] + R(|y_i|)`` (position 0 when
    ``|y_i| = 0``), ``scores' = scores + R(|y|)``.
    """
    lengths = mask.sum(1)
    shaped = overlong_penalty(lengths, max_len, buffer, penalty)
    last = (lengths.long() - 1).clamp(min=0)
    token_rewards = token_rewards.clone()
    token_rewards[torch.arange(token_rewards.shape[0], device=last.device), last] += shaped.to(token_rewards.dtype)
    return token_rewards, scores + shaped.to(scores.dtype)
