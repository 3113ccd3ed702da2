"""Preference pairs for DPO: reading a JSONL file strictly, generating pairs on-policy, writing JSONL.

**Format** — one JSON object per line with three non-empty strings (other keys are ignored)::

    {"prompt": "07+45=", "chosen": "52", "rejected": "53"}

Completions are text without the EOS token: EOS is appended when they are tokenized, as in SFT
(``rlexp.rollout.collate_supervised``). Blank lines are not records.

**Validation** happens before training. A record that is not valid JSON, is not an object, lacks a
field, has a non-string or empty field, a ``rejected`` identical to ``chosen``, or text the policy's
tokenizer cannot encode (a character tokenizer's missing characters are named) raises
:class:`DatasetError` naming ``file:line`` and the field. Nothing is dropped silently: with
``skip_invalid=True`` such records are skipped and returned (the module logs their count as
``data/skipped_records``).

**Generation** (no file given): ``samples_per_prompt`` completions are sampled for each of
``num_prompts`` training prompts and scored with the task's reward; each prompt whose completions
do not all score the same gives one pair, its best completion (chosen) against its worst (rejected),
the first of each in sampling order on ties. Empty completions (an immediate EOS) cannot be written
as records and are not candidates.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from rlexp.models import char_vocabulary, without_special_tokens
from rlexp.config.paths import DatasetError  # the error of every data file rlexp reads (re-exported here)
from rlexp.rollout import generate_rollout
from rlexp.tasks.base import Example, Task

FIELDS = ("prompt", "chosen", "rejected")


@dataclass(frozen=True)
class PreferencePair:
    prompt: str
    chosen: str
    rejected: str


def _record_problem(obj, tokenizer, chars: frozenset[str] | None = None) -> str | None:
    """Why ``obj`` is not a valid record (``"field 'chosen' ..."``), or None. ``chars``: the characters of a
    character tokenizer (``char_vocabulary(tokenizer)``), whose unknown characters are named."""
    if not isinstance(obj, dict):
        return f"a record must be a JSON object with fields {', '.join(FIELDS)}; got {type(obj).__name__}"
    for name in FIELDS:
        if name not in obj:
            return f"field '{name}' is missing"
        value = obj[name]
        if not isinstance(value, str):
            return f"field '{name}' must be a string, got {type(value).__name__} ({json.dumps(value)[:40]})"
        if not value.strip():
            return f"field '{name}' is empty" + ("" if name == "prompt" else " (an empty completion)")
    if obj["chosen"] == obj["rejected"]:
        return "field 'rejected' is identical to 'chosen' (the pair states no preference)"
    if tokenizer is not None:
        for name in FIELDS:
            unknown = set(without_special_tokens(tokenizer, obj[name])) - chars if chars is not None else set()
            if unknown:
                return (f"field '{name}' has characters the policy's character tokenizer cannot encode: "
                        f"{', '.join(map(repr, sorted(unknown)))} in {obj[name][:40]!r} (model=tiny's alphabet holds "
                        f"the task's characters only: remove them, or add them to the task's Task.extra_text())")
            try:
                n = len(tokenizer(obj[name], add_special_tokens=False)["input_ids"])
            except Exception as e:  # noqa: BLE001 - tokenizers raise plain Exception
                return f"field '{name}' cannot be tokenized by the policy's tokenizer ({e}): {obj[name][:40]!r}"
            if n == 0:
                return f"field '{name}' tokenizes to no tokens: {obj[name][:40]!r}"
    return None


def load_preferences(path: str | Path, *, skip_invalid: bool = False, tokenizer=None,
                     key: str = "algorithm.data.path") -> tuple[list[PreferencePair], list[str]]:
    """``(pairs, skipped)``: the valid records of a JSONL file, and one ``file:line: why`` per skipped one.

    Raises :class:`DatasetError` on the first invalid record (unless ``skip_invalid``), for a missing
    file, and when no valid record is left. ``tokenizer`` (optional) checks every field encodes.
    """
    p = Path(path).expanduser()
    if not p.is_file():
        raise DatasetError(f"{key}={path}: no such file")
    pairs: list[PreferencePair] = []
    skipped: list[str] = []
    chars = char_vocabulary(tokenizer) if tokenizer is not None else None
    with open(p, encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
                problem = _record_problem(obj, tokenizer, chars)
            except json.JSONDecodeError as e:
                problem = f"invalid JSON ({e.msg} at column {e.colno})"
            if problem is not None:
                where = f"{path}:{lineno}: {problem}"
                if not skip_invalid:
                    raise DatasetError(where + " (algorithm.data.skip_invalid=true skips such records)")
                skipped.append(where)
                continue
            pairs.append(PreferencePair(obj["prompt"], obj["chosen"], obj["rejected"]))
    if not pairs:
        raise DatasetError(f"{path}: no valid preference records ({len(skipped)} invalid, skipped)")
    return pairs, skipped


def to_jsonl(records: list[dict]) -> str:
    """One JSON object per line (UTF-8 kept readable)."""
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)


@torch.no_grad()
def generate_preferences(model, tokenizer, task: Task, examples: list[Example], *, samples_per_prompt: int,
                         max_new_tokens: int, temperature: float = 1.0, top_p: float = 1.0,
                         chunk_rows: int = 1024) -> tuple[list[dict], dict[str, float]]:
    """Sample, score and pair: ``(records, stats)``.

    ``records``: ``{"prompt", "chosen", "rejected", "chosen_reward", "rejected_reward"}`` per pair
    (loadable by :func:`load_preferences`). ``stats``: ``data/prompts``, ``data/completions``,
    ``data/pairs`` and ``data/sample_reward_mean`` (mean score of all sampled completions).
    """
    k = samples_per_prompt
    per_chunk = max(1, chunk_rows // k)
    records: list[dict] = []
    total, n_rows = 0.0, 0
    for start in range(0, len(examples), per_chunk):
        chunk = examples[start:start + per_chunk]
        batch = generate_rollout(model, tokenizer, task, chunk, num_generations=k, max_new_tokens=max_new_tokens,
                                 temperature=temperature, top_p=top_p)
        scores = batch.scores.tolist()
        total += sum(scores)
        n_rows += len(scores)
        for g, ex in enumerate(chunk):
            rows = [g * k + j for j in range(k) if batch.completions[g * k + j].strip()]
            if not rows:
                continue
            best = max(rows, key=lambda i: scores[i])   # first maximum in sampling order
            worst = min(rows, key=lambda i: scores[i])  # first minimum
            if scores[best] > scores[worst] and batch.completions[best] != batch.completions[worst]:
                records.append({**asdict(PreferencePair(ex.prompt, batch.completions[best],
                                                        batch.completions[worst])),
                                "chosen_reward": scores[best], "rejected_reward": scores[worst]})
    stats = {"data/prompts": float(len(examples)), "data/completions": float(n_rows),
             "data/pairs": float(len(records)), "data/sample_reward_mean": total / max(n_rows, 1)}
    return records, stats
