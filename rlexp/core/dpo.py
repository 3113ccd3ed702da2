"""Direct preference losses on sequence log-probabilities (DPO and its relatives).

Inputs are per-pair sequence log-probabilities ``[B]``: ``log π(y|x) = Σ_t mask_t · log π(y_t|x, y_<t)``,
summed over the completion's tokens, for the chosen ``y_w`` and rejected ``y_l`` completion of
each prompt ``x``, under the policy ``π_θ`` and the frozen reference ``π_ref``. With

    ``Δ = (log π_θ(y_w) - log π_θ(y_l)) - (log π_ref(y_w) - log π_ref(y_l))``

registry ``DPO_LOSSES`` maps a ``loss_type`` to its per-pair loss ``ℓ(Δ, β)`` ``[B]``:

* ``sigmoid`` — DPO (Rafailov et al., 2023): ``ℓ = -log σ(βΔ)``;
* ``ipo``     — IPO (Azar et al., 2023): ``ℓ = (Δ - 1/(2β))²``;
* ``hinge``   — SLiC-HF (Zhao et al., 2023; Chen et al.): ``ℓ = max(0, 1 - βΔ)``.

``label_smoothing = ε`` treats each preference label as flipped with probability ε:
``ℓ_ε(Δ) = (1-ε)·ℓ(Δ) + ε·ℓ(-Δ)``. For ``sigmoid`` this is conservative DPO (cDPO, Mitchell 2023),
``-(1-ε)·log σ(βΔ) - ε·log σ(-βΔ)``; the same definition applies to every loss type (for IPO it
shrinks the target margin to ``(1-2ε)/(2β)``), so the knob is never silently ignored.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

from .registry import Registry

Tensor = torch.Tensor

DPO_LOSSES = Registry("DPO loss type")


@DPO_LOSSES.register("sigmoid")
def sigmoid_loss(delta: Tensor, beta: float) -> Tensor:
    """DPO: ``-log σ(βΔ)`` (computed with ``logsigmoid``, stable for large ``|βΔ|``). ``[B] -> [B]``."""
    return -F.logsigmoid(beta * delta)


@DPO_LOSSES.register("ipo")
def ipo_loss(delta: Tensor, beta: float) -> Tensor:
    """IPO: ``(Δ - 1/(2β))²`` — regresses the log-ratio gap onto ``1/(2β)``. ``[B] -> [B]``."""
    return (delta - 1.0 / (2.0 * beta)) ** 2


@DPO_LOSSES.register("hinge")
def hinge_loss(delta: Tensor, beta: float) -> Tensor:
    """SLiC hinge: ``max(0, 1 - βΔ)`` (β acts as the inverse margin). ``[B] -> [B]``."""
    return torch.relu(1.0 - beta * delta)


def dpo_loss(
    policy_chosen_logps: Tensor,
    policy_rejected_logps: Tensor,
    ref_chosen_logps: Tensor,
    ref_rejected_logps: Tensor,
    beta: float,
    loss_type: str = "sigmoid",
    label_smoothing: float = 0.0,
) -> tuple[Tensor, Tensor, Tensor]:
    """Per-pair preference loss and the implicit rewards.

    All four inputs: ``[B]`` sequence log-probs (summed over completion tokens); only the policy's
    carry gradient. ``Δ = (π_c - π_r) - (ref_c - ref_r)``; ``losses = (1-ε)·ℓ(Δ) + ε·ℓ(-Δ)`` with
    ``ℓ = DPO_LOSSES[loss_type]`` and ``ε = label_smoothing`` (0 skips the second term).
    Returns ``(losses [B], chosen_rewards [B], rejected_rewards [B])``, where the implicit rewards
    ``β·(π_c - ref_c)`` and ``β·(π_r - ref_r)`` are detached. The caller averages ``losses``.
    ValueError for ``β <= 0``, ``ε`` outside ``[0, 0.5)`` or an unknown ``loss_type``.
    """
    if not beta > 0:
        raise ValueError(f"beta must be > 0, got {beta}")
    if not 0.0 <= label_smoothing < 0.5:
        raise ValueError(f"label_smoothing must be in [0, 0.5), got {label_smoothing}")
    loss_fn: Callable[[Tensor, float], Tensor] = DPO_LOSSES.get(loss_type)
    ref_c = ref_chosen_logps.to(policy_chosen_logps.dtype)
    ref_r = ref_rejected_logps.to(policy_rejected_logps.dtype)
    delta = (policy_chosen_logps - policy_rejected_logps) - (ref_c - ref_r)  # [B]
    losses = loss_fn(delta, beta)
    if label_smoothing > 0:
        losses = (1.0 - label_smoothing) * losses + label_smoothing * loss_fn(-delta, beta)
    chosen_rewards = beta * (policy_chosen_logps - ref_c).detach()
    rejected_rewards = beta * (policy_rejected_logps - ref_r).detach()
    return losses, chosen_rewards, rejected_rewards
