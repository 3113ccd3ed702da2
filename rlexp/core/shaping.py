"""Reward shaping on completion lengths.

Functions map per-completion lengths ``[B]`` to an additive reward term ``[B]``
(the caller adds it to the sequence reward, e.g. on the last masked token).
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
