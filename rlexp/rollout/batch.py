"""The typed rollout batch and prompt encoding.

Shapes: ``prompt_ids/prompt_mask [B, P]`` left-padded; ``response_ids/mask [B, T]`` right-padded,
``mask`` ones a prefix of each row (EOS included); ``token_rewards [B, T]`` the rewards per token (a
sequence score sits on the last masked token); ``scores [B]`` their per-row sums, shaping included
(DAPO's overlong penalty); ``task_scores [B]`` the task's own verdict before any shaping, which decides
what has signal (dynamic sampling, zero-variance filtering, pass rates); ``rollout_logprobs [B, T]``
the sampler's log-prob of each sampled token (0 off the mask).
Completions of one prompt are consecutive rows (groups of ``num_generations``).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class RolloutBatch:
    prompt_ids: torch.Tensor
    prompt_mask: torch.Tensor
    response_ids: torch.Tensor
    mask: torch.Tensor
    finished: torch.Tensor
    token_rewards: torch.Tensor
    scores: torch.Tensor
    prompts: list[str] = field(default_factory=list)
    completions: list[str] = field(default_factory=list)
    targets: list[str] = field(default_factory=list)
    #: index of each row's prompt in the task's training pool (-1 when unknown)
    prompt_index: list[int] = field(default_factory=list)
    #: [B] bool: the reward function could not score the row (task.on_reward_error=skip); None = none failed
    reward_failed: torch.Tensor | None = None
    #: [B, T] the sampler's log-prob of each sampled token (0 off the mask); None = not recorded
    rollout_logprobs: torch.Tensor | None = None
    #: [B] the task's reward before shaping; None = same as ``scores``
    task_scores: torch.Tensor | None = None
    #: seconds the reward function took to score the batch (the rest of a rollout's time is generation)
    reward_seconds: float = 0.0
    #: why each unscorable completion could not be scored (one line each; task.on_reward_error=skip)
    reward_errors: list[str] = field(default_factory=list)
    #: ``{name: [B]}`` each ``task.rewards`` component's own score (unweighted; NaN where the row is unscorable);
    #: empty with a single ``task.reward``
    component_scores: dict[str, torch.Tensor] = field(default_factory=dict)

    def verdicts(self) -> torch.Tensor:
        """``[B]`` the task's scores before shaping (``scores`` when nothing was shaped)."""
        return self.scores if self.task_scores is None else self.task_scores

    def component_means(self) -> dict[str, torch.Tensor]:
        """``{name: mean}`` of each component's score over the rows with a reward (NaN when there is none)."""
        valid = self.valid_rows()
        return {k: v[valid].mean() if bool(valid.any()) else torch.full((), float("nan"))
                for k, v in self.component_scores.items()}

    def valid_rows(self) -> torch.Tensor:
        """``[B]`` bool, True where the completion has a reward (the complement of `failed_rows`)."""
        return ~self.failed_rows()

    def failed_rows(self) -> torch.Tensor:
        """``[B]`` bool, True where the reward is missing."""
        if self.reward_failed is None:
            return torch.zeros(self.size, dtype=torch.bool, device=self.mask.device)
        return self.reward_failed

    @property
    def size(self) -> int:
        return self.response_ids.shape[0]

    def select(self, rows: list[int]) -> "RolloutBatch":
        """The batch restricted to ``rows`` (in that order)."""
        idx = torch.tensor(rows, dtype=torch.long, device=self.mask.device)
        pick = lambda xs: [xs[i] for i in rows] if xs else []  # noqa: E731
        opt = lambda x: None if x is None else x[idx]  # noqa: E731
        return RolloutBatch(self.prompt_ids[idx], self.prompt_mask[idx], self.response_ids[idx], self.mask[idx],
                            self.finished[idx], self.token_rewards[idx], self.scores[idx], pick(self.prompts),
                            pick(self.completions), pick(self.targets), pick(self.prompt_index),
                            self.failed_rows()[idx], opt(self.rollout_logprobs), opt(self.task_scores),
                            self.reward_seconds, self.reward_errors,
                            {k: v[idx] for k, v in self.component_scores.items()})

    @staticmethod
    def cat(batches: list["RolloutBatch"], pad_id: int) -> "RolloutBatch":
        """Rows of all ``batches``; prompts re-padded on the left, responses on the right."""
        if len(batches) == 1:
            return batches[0]
        P = max(b.prompt_ids.shape[1] for b in batches)
        T = max(b.response_ids.shape[1] for b in batches)

        def left(x, width, value):
            return torch.nn.functional.pad(x, (width - x.shape[1], 0), value=value)

        def right(x, width, value):
            return torch.nn.functional.pad(x, (0, width - x.shape[1]), value=value)
        has_logprobs = all(b.rollout_logprobs is not None for b in batches)
        return RolloutBatch(
            torch.cat([left(b.prompt_ids, P, pad_id) for b in batches]),
            torch.cat([left(b.prompt_mask, P, 0) for b in batches]),
            torch.cat([right(b.response_ids, T, pad_id) for b in batches]),
            torch.cat([right(b.mask, T, 0.0) for b in batches]),
            torch.cat([b.finished for b in batches]),
            torch.cat([right(b.token_rewards, T, 0.0) for b in batches]),
            torch.cat([b.scores for b in batches]),
            [p for b in batches for p in b.prompts], [c for b in batches for c in b.completions],
            [t for b in batches for t in b.targets], [i for b in batches for i in b.prompt_index],
            torch.cat([b.failed_rows() for b in batches]),
            torch.cat([right(b.rollout_logprobs, T, 0.0) for b in batches]) if has_logprobs else None,
            torch.cat([b.verdicts() for b in batches]), sum(b.reward_seconds for b in batches),
            [e for b in batches for e in b.reward_errors],
            {k: torch.cat([b.component_scores[k] for b in batches]) for k in batches[0].component_scores})

    def tensors(self) -> dict[str, torch.Tensor]:
        """The per-row tensors, for minibatch slicing together with derived ones (advantages...)."""
        return {"prompt_ids": self.prompt_ids, "prompt_mask": self.prompt_mask,
                "response_ids": self.response_ids, "mask": self.mask}


def render_chat(tokenizer, prompts: list[str], system_turn: str | None = None) -> list[str]:
    """Each prompt as a user turn of the tokenizer's chat template (after a system turn ``system_turn``, when
    given), followed by the assistant header."""
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError("task.chat_template=true but the tokenizer has no chat template (use an instruct model's "
                         "tokenizer, or set task.chat_template=false)")
    system = [{"role": "system", "content": system_turn}] if system_turn else []
    return [tokenizer.apply_chat_template([*system, {"role": "user", "content": p}], tokenize=False,
                                          add_generation_prompt=True) for p in prompts]


def encode_prompts(tokenizer, prompts: list[str], device=None, *, chat_template: bool = False,
                   system_turn: str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``(prompt_ids, prompt_mask)`` ``[B, P]``, left-padded. ``chat_template``: each prompt wrapped as a
    user turn first, after the system turn ``system_turn`` when given (``Task.system_turn``; the template
    writes its own special tokens, so the tokenizer adds none)."""
    if chat_template:
        enc = tokenizer(render_chat(tokenizer, prompts, system_turn), return_tensors="pt", padding=True,
                        padding_side="left", add_special_tokens=False)
    else:
        enc = tokenizer(prompts, return_tensors="pt", padding=True, padding_side="left")
    return enc["input_ids"].to(device), enc["attention_mask"].to(device)


def collate_supervised(tokenizer, prompts: list[str], completions: list[str], device=None, *,
                       chat_template: bool = False, system_turn: str | None = None):
    """Prompt + completion + EOS as ``(prompt_ids, prompt_mask, response_ids, mask)`` for an NLL loss."""
    prompt_ids, prompt_mask = encode_prompts(tokenizer, prompts, device, chat_template=chat_template,
                                             system_turn=system_turn)
    rows = [tokenizer(c, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id] for c in completions]
    T = max(len(r) for r in rows)
    response_ids = torch.full((len(rows), T), tokenizer.pad_token_id, dtype=torch.long)
    mask = torch.zeros((len(rows), T))
    for i, r in enumerate(rows):
        response_ids[i, :len(r)] = torch.tensor(r)
        mask[i, :len(r)] = 1.0
    return prompt_ids, prompt_mask, response_ids.to(device), mask.to(device)
