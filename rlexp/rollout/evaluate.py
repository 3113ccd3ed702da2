"""Greedy evaluation on held-out prompts: mean task reward, exact-match accuracy and samples."""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from rlexp.rollout.generate import sample, score
from rlexp.tasks.base import Example, Task


@dataclass
class EvalResult:
    reward_mean: float
    accuracy: float
    response_length: float
    samples: list[dict] = field(default_factory=list)


@torch.no_grad()
def evaluate(model, tokenizer, task: Task, examples: list[Example], *, max_new_tokens: int,
             batch_size: int = 256, num_samples: int = 0) -> EvalResult:
    """Greedy-decode every example; ``accuracy``: the share the task judges correct (``task.is_correct``;
    by default the completion text equals the target and ended with EOS)."""
    was_training = model.training
    model.eval()
    rewards, correct, lengths, samples = [], [], [], []
    for start in range(0, len(examples), batch_size):
        chunk = examples[start:start + batch_size]
        _, _, response_ids, mask, finished = sample(model, tokenizer, [e.prompt for e in chunk],
                                                    max_new_tokens=max_new_tokens, do_sample=False,
                                                    chat_template=task.chat_template)
        _, scores, texts = score(task, tokenizer, chunk, response_ids, mask, finished)  # unscorable: reward 0
        rewards += scores.tolist()
        lengths += mask.sum(1).tolist()
        for e, text, done, s in zip(chunk, texts, finished.tolist(), scores.tolist()):
            correct.append(float(task.is_correct(e, text, done)))
            if len(samples) < num_samples:
                samples.append({"prompt": e.prompt, "completion": text, "target": e.target, "reward": s})
    model.train(was_training)
    n = max(len(rewards), 1)
    return EvalResult(sum(rewards) / n, sum(correct) / n, sum(lengths) / n, samples)
