"""rlexp.core: the pure-math layer (torch only) of rlexp.

Masked statistics, advantage estimators, KL estimators, loss aggregation,
log-prob/entropy helpers and PPO-family losses, plus the name registries that
let configs select among them.  Tensor convention: response tensors are
``[B, T]``, right-padded, with a prefix ``mask``; see each module's docstring.
"""

from .advantages import ADVANTAGE_ESTIMATORS, gae
from .aggregation import AGGREGATIONS, aggregate
from .kl import KL_ESTIMATORS, kl_estimate
from .logprobs import entropy_from_logits, logprobs_from_logits
from .losses import POLICY_LOSSES, ppo_policy_loss, value_loss
from .registry import Registry
from .stats import explained_variance, masked_mean, masked_sum, masked_var, masked_whiten

__all__ = [
    "ADVANTAGE_ESTIMATORS",
    "AGGREGATIONS",
    "KL_ESTIMATORS",
    "POLICY_LOSSES",
    "Registry",
    "aggregate",
    "entropy_from_logits",
    "explained_variance",
    "gae",
    "kl_estimate",
    "logprobs_from_logits",
    "masked_mean",
    "masked_sum",
    "masked_var",
    "masked_whiten",
    "ppo_policy_loss",
    "value_loss",
]
