"""Token log-probabilities and entropies from logits, memory-conscious.

``logits`` are ``[B, T, V]`` (any leading shape works), ``labels`` ``[B, T]``.
Low-precision logits (fp16/bf16) are upcast to float32 one leading row at a
time, so no full float32 copy of the logits and no full ``log_softmax``
tensor is ever materialized in the forward pass.
"""

from __future__ import annotations

import torch

Tensor = torch.Tensor

_LOW_PRECISION = (torch.float16, torch.bfloat16)


def _gather_minus_lse(logits: Tensor, labels: Tensor) -> Tensor:
    picked = logits.gather(-1, labels.unsqueeze(-1)).squeeze(-1)
    return picked - torch.logsumexp(logits, dim=-1)


def _entropy(logits: Tensor) -> Tensor:
    p = torch.softmax(logits, dim=-1)
    return torch.logsumexp(logits, dim=-1) - (p * logits).sum(-1)


def logprobs_from_logits(logits: Tensor, labels: Tensor) -> Tensor:
    """``log π(y_t) = l_{t, y_t} - logsumexp_v l_{t, v}``.

    logits: ``[B, T, V]``; labels: ``[B, T]`` (int64 token ids).  Returns ``[B, T]``
    (float32 for fp16/bf16 logits, else the logits dtype).  Differentiable w.r.t. logits.
    """
    labels = labels.long()
    if logits.dtype not in _LOW_PRECISION:
        return _gather_minus_lse(logits, labels)
    if logits.dim() < 2 or logits.shape[0] == 0:
        return _gather_minus_lse(logits.float(), labels)
    rows = [_gather_minus_lse(row.float(), lab) for row, lab in zip(logits, labels)]
    return torch.stack(rows)


def entropy_from_logits(logits: Tensor) -> Tensor:
    """``H_t = logsumexp_v l_{t,v} - Σ_v softmax(l_t)_v · l_{t,v}``  (= ``-Σ p log p``).

    logits: ``[B, T, V]`` -> ``[B, T]`` (float32 for fp16/bf16 logits).
    """
    if logits.dtype not in _LOW_PRECISION:
        return _entropy(logits)
    if logits.dim() < 2 or logits.shape[0] == 0:
        return _entropy(logits.float())
    return torch.stack([_entropy(row.float()) for row in logits])
