"""rlexp.core: the pure-math layer (torch only) of rlexp.

Masked statistics, advantage estimators (GAE, REINFORCE++ returns and group-relative:
GRPO, Dr. GRPO, RLOO), KL estimators, loss aggregation, log-prob/entropy helpers, policy
losses (PPO clip, GSPO, CISPO, SAPO; the :class:`PolicyLoss` contract), the rollout correction's
importance weights (TIS, MIS), value loss, DAPO
overlong reward shaping, preference losses (DPO, IPO, SLiC hinge) and the unbiased pass@k
estimator, plus the name registries that let configs select among them.  Tensor convention:
response tensors are ``[B, T]``, right-padded, with a prefix ``mask``; completions of one prompt
are consecutive rows (groups of ``group_size``); see each module's docstring.
"""

from .advantages import (
    ADVANTAGE_ESTIMATORS,
    AdvantageEstimator,
    discounted_returns,
    gae,
    group_advantages,
    group_pass_rate,
    rloo_advantages,
    zero_std_groups,
)
from .aggregation import AGGREGATIONS, aggregate, aggregation_denominator
from .dpo import DPO_LOSSES, dpo_loss
from .kl import KL_ESTIMATORS, kl_estimate
from .logprobs import entropy_from_logits, logprobs_from_logits
from .losses import POLICY_LOSSES, PolicyLoss, policy_loss, ppo_policy_loss, value_loss
from .passk import mean_pass_at_k, pass_at_k
from .policy_losses import cispo_policy_loss, gspo_policy_loss, sapo_policy_loss
from .registry import Registry
from .rollout_correction import ROLLOUT_CORRECTIONS, rollout_is_weights
from .shaping import add_overlong_penalty, overlong_penalty
from .stats import explained_variance, masked_mean, masked_sum, masked_var, masked_whiten

__all__ = [
    "ADVANTAGE_ESTIMATORS",
    "AGGREGATIONS",
    "DPO_LOSSES",
    "KL_ESTIMATORS",
    "POLICY_LOSSES",
    "ROLLOUT_CORRECTIONS",
    "AdvantageEstimator",
    "PolicyLoss",
    "Registry",
    "add_overlong_penalty",
    "aggregate", "aggregation_denominator",
    "cispo_policy_loss",
    "discounted_returns",
    "dpo_loss",
    "entropy_from_logits",
    "explained_variance",
    "gae",
    "group_advantages",
    "group_pass_rate",
    "gspo_policy_loss",
    "kl_estimate",
    "logprobs_from_logits",
    "masked_mean",
    "masked_sum",
    "masked_var",
    "masked_whiten",
    "mean_pass_at_k",
    "overlong_penalty",
    "pass_at_k",
    "policy_loss",
    "ppo_policy_loss",
    "rloo_advantages",
    "rollout_is_weights",
    "sapo_policy_loss",
    "value_loss",
    "zero_std_groups",
]
