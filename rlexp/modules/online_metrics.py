"""What one online RL iteration logs (``train/*``, ``perf/*``), from its experience and its update.

`iteration_metrics` — the rollout (reward, length, entropy, errors), the experience (KL, advantages,
returns, the rows in the loss, λ diagnostics against Monte-Carlo with a critic) and the update's
per-minibatch metrics averaged over the whole update (``nanmean``: a skipped, non-finite step does not turn
the averages into NaN); `mismatch_metrics` — the sampler/trainer gap; `throughput_metrics` — seconds and
tokens per second of the iteration's phases.
"""
from __future__ import annotations

import torch

from rlexp import core
from rlexp.modules.experience import Experience


def iteration_metrics(exp: Experience, acc: dict[str, list[torch.Tensor]], *, has_critic: bool) -> dict[str, float]:
    """``exp``: the iteration's experience (with its rollout); ``acc``: every minibatch's update metrics."""
    batch, mask = exp.rollout, exp.mask
    stats = {f"train/{k}": torch.stack(v).nanmean() for k, v in acc.items()}
    zero = torch.zeros(())
    scored = batch.scores[batch.valid_rows()]  # completions with a reward
    stats.update({
        "train/reward_mean": scored.mean() if scored.numel() else torch.full((), float("nan")),
        "train/reward_std": scored.std() if scored.numel() > 1 else zero,
        "train/kl": core.masked_mean(exp.kl, mask) if exp.kl is not None else zero,
        "train/response_length": mask.sum(1).mean(),
        "train/finished_frac": batch.finished.float().mean(),
        "train/rollout_entropy": core.masked_mean(exp.rollout_entropy, mask),
        "train/advantage_mean": core.masked_mean(exp.raw_advantages, mask),
        "train/advantage_var": core.masked_var(exp.raw_advantages, mask),
        "train/returns_mean": core.masked_mean(exp.returns, mask),
        "train/loss_rows_frac": (exp.loss_mask.sum(1) > 0).float().mean(),
        "train/reward_errors": batch.failed_rows().float().sum(),
    })
    stats.update({f"train/reward/{name}": mean for name, mean in batch.component_means().items()})  # task.rewards
    stats.update(mismatch_metrics(exp))
    if exp.zero_std_rows is not None:  # groups are equal-sized: the row mean is the fraction of groups
        stats["train/frac_zero_std_groups"] = exp.zero_std_rows.mean()
    if has_critic:
        stats["train/explained_variance"] = core.explained_variance(exp.old_values, exp.returns, mask)
    if exp.mc_advantages is not None:
        gap = exp.raw_advantages - exp.mc_advantages
        stats["train/adv_bias_vs_mc"] = core.masked_mean(gap, mask)
        stats["train/adv_mse_vs_mc"] = core.masked_mean(gap * gap, mask)
        stats["train/mc_advantage_var"] = core.masked_var(exp.mc_advantages, mask)
    return {k: float(v.item()) for k, v in stats.items()}


def mismatch_metrics(exp: Experience) -> dict[str, torch.Tensor]:
    """How far the trainer's log-probs at the start of the update (``old_logprobs``) are from the
    sampler's (the rollout's ``rollout_logprobs``), over the sampled tokens: the k3 estimate of
    KL(π_sampler ‖ π_trainer) (``d = logπ_sampler - logπ_trainer``, ``k3 = e^{-d} + d - 1``) and
    ``max |d|``. ~1e-7 in fp32 when both score the same distribution."""
    mask, sampler = exp.mask, exp.rollout.rollout_logprobs
    d = (sampler - exp.old_logprobs) * mask
    kl = core.kl_estimate(sampler, exp.old_logprobs, "k3") * mask
    return {"train/rollout_mismatch_kl": core.masked_mean(kl, mask),
            "train/rollout_logprob_absdiff_max": d.abs().max()}


def throughput_metrics(n_tokens: float, step_seconds: float, rollout_seconds: float,
                       reward_seconds: float, generator_seconds: float | None = None) -> dict[str, float]:
    """Seconds of the iteration and of its phases; ``rollout_seconds`` includes the reward function's
    ``reward_seconds`` (generation alone is the difference). With an off-policy lag the rollout was made by the
    generator process in ``generator_seconds`` (scoring included) while the trainer did other work:
    ``rollout_seconds`` is then only the trainer's wait for it (``perf/wait_seconds``), and the generation
    figures are the generator's."""
    made_in = rollout_seconds if generator_seconds is None else generator_seconds
    generate_seconds = made_in - reward_seconds
    out = {"perf/step_seconds": step_seconds, "perf/generate_seconds": generate_seconds,
           "perf/reward_seconds": reward_seconds, "perf/update_seconds": step_seconds - rollout_seconds,
           "perf/tokens_per_second": n_tokens / step_seconds,
           "perf/generate_tokens_per_second": n_tokens / max(generate_seconds, 1e-9)}
    if generator_seconds is not None:
        out["perf/wait_seconds"] = rollout_seconds
    return out
