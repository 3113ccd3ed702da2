"""Evaluation on held-out prompts: greedy (mean task reward, accuracy, samples) and pass@k sampling.

``reward_mean`` is the mean over the completions the reward function could score: those it could not
(``task.on_reward_error=skip``) are left out of it and counted in ``reward_errors``, not scored 0; so is
``component_means``, each ``task.rewards`` component's own (unweighted) score.
When it could score none, ``reward_mean`` is NaN (logged as such: the comparison tools and the
summaries read NaN as "no value"), never a misleading 0.

``sample_correct`` draws ``n`` completions per prompt at the rollout's temperature / top_p for the pass@k
estimate (``rlexp.core.pass_at_k``): per prompt, how many the task judges correct (``task.is_correct``),
and the mean task reward of the scorable ones. It draws from the global RNG (its caller seeds it), or with
``engine`` from that rollout engine's seeded requests (its caller reseeds it).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from rlexp.rollout.generate import sample, sampler, score
from rlexp.tasks.base import Example, Task


@dataclass
class EvalResult:
    #: mean task reward over the scorable completions; NaN when there was none
    reward_mean: float
    accuracy: float
    response_length: float
    samples: list[dict] = field(default_factory=list)
    #: completions the reward function could not score (``task.on_reward_error=skip``)
    reward_errors: int = 0
    #: ``{name: mean}`` of each ``task.rewards`` component's score over the scorable completions (NaN: none)
    component_means: dict[str, float] = field(default_factory=dict)


@torch.no_grad()
def evaluate(model, tokenizer, task: Task, examples: list[Example], *, max_new_tokens: int,
             batch_size: int = 256, num_samples: int = 0, engine=None) -> EvalResult:
    """Greedy-decode every example; ``accuracy``: the share the task judges correct (``task.is_correct``;
    by default the completion text equals the target and ended with EOS), over all of them.
    A sample's ``reward`` is None where the reward function could not score it. ``engine``: a rollout engine
    (`rlexp.rollout.engines`) that decodes instead of the policy's ``generate``."""
    sample = sampler(engine)
    was_training = model.training
    model.eval()
    rewards, errors, correct, lengths, samples, parts = [], 0, [], [], [], {}
    for start in range(0, len(examples), batch_size):
        chunk = examples[start:start + batch_size]
        _, _, response_ids, mask, finished = sample(model, tokenizer, [e.prompt for e in chunk],
                                                    max_new_tokens=max_new_tokens, do_sample=False,
                                                    chat_template=task.chat_template, system_turn=task.system_turn)
        components = {}
        _, scores, texts, failed = score(task, tokenizer, chunk, response_ids, mask, finished, with_failed=True,
                                         components=components)
        for name, values in components.items():  # task.rewards: each component's scores of the scorable ones
            parts.setdefault(name, []).extend(values[~failed].tolist())
        kept = [None if f else s for s, f in zip(scores.tolist(), failed.tolist())]
        rewards += [s for s in kept if s is not None]
        errors += int(failed.sum())
        lengths += mask.sum(1).tolist()
        for e, text, done, s in zip(chunk, texts, finished.tolist(), kept):
            correct.append(float(task.is_correct(e, text, done)))
            if len(samples) < num_samples:
                samples.append({"prompt": e.prompt, "completion": text, "target": e.target, "reward": s})
    model.train(was_training)
    n = max(len(correct), 1)
    reward_mean = sum(rewards) / len(rewards) if rewards else float("nan")
    means = {name: sum(v) / len(v) if v else float("nan") for name, v in parts.items()}
    return EvalResult(reward_mean, sum(correct) / n, sum(lengths) / n, samples, errors, means)


@dataclass
class SampledResult:
    #: per example, how many of its ``n`` sampled completions the task judges correct (``task.is_correct``)
    correct_counts: list[int]
    #: mean task reward over the scorable sampled completions; NaN when there was none
    reward_mean: float
    #: sampled completions the reward function could not score (``task.on_reward_error=skip``)
    reward_errors: int = 0


@torch.no_grad()
def sample_correct(model, tokenizer, task: Task, examples: list[Example], *, n: int, max_new_tokens: int,
                   temperature: float, top_p: float, batch_size: int = 256, engine=None) -> SampledResult:
    """Sample ``n`` completions of every example (its rows consecutive, ``batch_size`` rows per ``generate``)
    at ``temperature`` / ``top_p``, score them with the task's reward and count, per example, those
    ``task.is_correct`` accepts (the greedy evaluation's ``accuracy`` test). ``engine``: a rollout engine
    (`rlexp.rollout.engines`) that samples instead of the policy's ``generate``."""
    sample = sampler(engine)
    rows = [e for e in examples for _ in range(n)]
    rewards, errors, correct = [], 0, []
    for start in range(0, len(rows), batch_size):
        chunk = rows[start:start + batch_size]
        _, _, response_ids, mask, finished = sample(model, tokenizer, [e.prompt for e in chunk],
                                                    max_new_tokens=max_new_tokens, do_sample=True,
                                                    temperature=temperature, top_p=top_p,
                                                    chat_template=task.chat_template, system_turn=task.system_turn)
        _, scores, texts, failed = score(task, tokenizer, chunk, response_ids, mask, finished, with_failed=True)
        rewards += [s for s, f in zip(scores.tolist(), failed.tolist()) if not f]
        errors += int(failed.sum())
        correct += [bool(task.is_correct(e, text, done)) for e, text, done in zip(chunk, texts, finished.tolist())]
    counts = [sum(correct[i * n:(i + 1) * n]) for i in range(len(examples))]
    return SampledResult(counts, sum(rewards) / len(rewards) if rewards else float("nan"), errors)
