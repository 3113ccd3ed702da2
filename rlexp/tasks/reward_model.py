"""A learned reward: a sequence-classification model scoring each prompt + completion.

Plug it in as the task's reward function (RLHF with a reward model instead of a verifier)::

    rlexp train algorithm=ppo task.reward._target_=rlexp.tasks.reward_model.RewardModel \
        task.reward._partial_=false +task.reward.path=/models/my-rm

The model is any local ``AutoModelForSequenceClassification`` directory with one label
(``num_labels=1``), e.g. a ``LlamaForSequenceClassification``. It reads the prompt, the completion and
its EOS (when the completion ended) with its own tokenizer, and its logit at the last token is the
completion's score, placed on the completion's last token like any sequence reward. It is loaded once,
when the task is built, and runs under ``torch.inference_mode`` in batches of ``batch_size``.
"""
from __future__ import annotations

import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from rlexp.models.loading import DTYPES, ModelLoadError, _check_dir, disable_dropout


class RewardModel:
    def __init__(self, path: str, *, batch_size: int = 64, dtype: str = "float32", device: str | None = None,
                 trust_remote_code: bool = False):
        key = "task.reward.path"
        p = _check_dir(path, key)
        if batch_size < 1:
            raise ValueError(f"task.reward.batch_size={batch_size}: must be ≥ 1")
        if dtype not in DTYPES:
            raise ValueError(f"task.reward.dtype={dtype}: expected one of {sorted(DTYPES)}")
        self.tokenizer = AutoTokenizer.from_pretrained(p, local_files_only=True, trust_remote_code=trust_remote_code)
        self.model = AutoModelForSequenceClassification.from_pretrained(
            p, dtype=DTYPES[dtype], local_files_only=True, trust_remote_code=trust_remote_code)
        if self.model.config.num_labels != 1:
            raise ModelLoadError(f"{key}={path}: a reward model has one output (num_labels=1), this one has "
                                 f"{self.model.config.num_labels}")
        self.pad_id = self.tokenizer.pad_token_id
        if self.pad_id is None:
            self.pad_id = self.tokenizer.eos_token_id if self.tokenizer.eos_token_id is not None else 0
        disable_dropout(self.model)
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.model.to(self.device).eval().requires_grad_(False)
        self.batch_size = batch_size
        self.path = str(p)

    def __repr__(self) -> str:
        return f"RewardModel({self.path!r})"

    def encode(self, prompts: list[str], completions: list[str], finished: list[bool]) -> list[list[int]]:
        """Token ids of ``prompt + completion`` (+ EOS when the completion ended), per row."""
        texts = [p + c for p, c in zip(prompts, completions)]
        ids = self.tokenizer(texts, add_special_tokens=False)["input_ids"]
        eos = self.tokenizer.eos_token_id
        return [row + [eos] if done and eos is not None else row for row, done in zip(ids, finished)]

    @torch.inference_mode()
    def score_ids(self, rows: list[list[int]]) -> torch.Tensor:
        """The model's logit at each row's last token, ``[len(rows)]`` float32."""
        out = []
        for s in range(0, len(rows), self.batch_size):
            chunk = rows[s:s + self.batch_size]
            width = max(len(r) for r in chunk)
            ids = torch.full((len(chunk), width), self.pad_id, dtype=torch.long)
            attn = torch.zeros((len(chunk), width), dtype=torch.long)
            for i, r in enumerate(chunk):  # right padding: positions count from 0 for every row
                ids[i, :len(r)] = torch.tensor(r, dtype=torch.long)
                attn[i, :len(r)] = 1
            ids, attn = ids.to(self.device), attn.to(self.device)
            last = attn.sum(1) - 1                                              # [b]
            if hasattr(self.model, "score"):  # the usual *ForSequenceClassification head
                hidden = self.model.base_model(input_ids=ids, attention_mask=attn).last_hidden_state
                logit = self.model.score(hidden[torch.arange(len(chunk), device=self.device), last])
            else:  # other heads: the model's own pooling (last non-pad token)
                logit = self.model(input_ids=ids, attention_mask=attn).logits
            out.append(logit.float().reshape(len(chunk)).cpu())
        return torch.cat(out) if out else torch.zeros(0)

    def __call__(self, prompts: list[str], completions: list[str], *, finished: list[bool], **kwargs) -> list[float]:
        return self.score_ids(self.encode(prompts, completions, finished)).tolist()
