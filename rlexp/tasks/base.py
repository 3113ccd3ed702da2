"""The task contract and the reward-function signature.

A task holds a training pool and a held-out evaluation split of ``Example(prompt, target)`` and a
reward function. **Reward signature** (plug your own in with ``task.reward._target_=pkg.module.fn``;
Hydra builds it with ``_partial_: true``, so extra config keys become keyword arguments)::

    def my_reward(prompts: list[str], completions: list[str], *, targets: list[str],
                  completion_ids: list[list[int]], completion_tokens: list[list[str]],
                  finished: list[bool], **kwargs) -> list[float] | list[list[float]]

- ``completions[i]``: the decoded text of completion ``i`` without its EOS;
- ``completion_ids[i]`` / ``completion_tokens[i]``: its token ids / per-token text, EOS included
  when it ended (``finished[i]``), so ``len(completion_ids[i])`` is its number of masked tokens;
- return one float per completion (a sequence score, placed on its last token), or one list per
  completion with one float per token (per-token rewards; their sum is the completion's score).
  Numbers only (ints, bools and numpy/torch scalars count; a string such as ``"1.0"`` is an error);
  under ``task.on_reward_error=skip``, ``None`` marks a completion the function cannot score.
Accept ``**kwargs`` so that fields added later do not break your function. Several rewards with
weights: ``task.rewards`` (``rlexp/tasks/combine.py``), their weighted sum in place of ``task.reward``.
"""
from __future__ import annotations

import logging
import math
import numbers
import reprlib
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Callable, Sequence

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Example:
    """One prompt and the reference answer text (no EOS)."""

    prompt: str
    target: str


class RewardError(RuntimeError):
    """A reward function that raised or returned something unusable; names the function."""


def _fn_name(fn: Callable) -> str:
    inner = getattr(fn, "func", fn)  # functools.partial from Hydra's _partial_
    return f"{getattr(inner, '__module__', '?')}.{getattr(inner, '__qualname__', repr(inner))}"


REWARD_ERROR_MODES = ("raise", "skip")


def _show(x) -> str:
    """``type (short repr)`` of a returned value, for an error message."""
    return f"{type(x).__name__} ({_REPR.repr(x)})"


_REPR = reprlib.Repr()
_REPR.maxstring, _REPR.maxother, _REPR.maxlist, _REPR.maxdict = 40, 40, 4, 4


def _number(x) -> float | None:
    """``float(x)`` for a real number (int, float, bool, a numpy or 0-d torch scalar); None for anything
    else. Strings are not numbers here, even "1.0": a verifier returning text is a bug to report."""
    if isinstance(x, (str, bytes)) or x is None:
        return None
    if isinstance(x, numbers.Real) or getattr(x, "ndim", None) == 0:
        try:
            return float(x)
        except (TypeError, ValueError):
            return None
    return None


def _values(out, n: int, name: str, alone: str = "") -> list:
    """What ``fn`` returned for ``n`` completions as a list of ``n`` values; one-line RewardError when it is
    not one value per completion (a dict, a string, a number, None, a set, the wrong length)."""
    expected = (f"{alone + ' ' if alone else ''}instead of a list of {n} value{'s' * (n != 1)}, one per "
                f"completion (in the order of `completions`)")
    if isinstance(out, Mapping):
        raise RewardError(f"reward function {name} returned a dict (keys {', '.join(map(repr, list(out)[:4]))}"
                          f"{', …' if len(out) > 4 else ''}) {expected}")
    if out is None or isinstance(out, (str, bytes, set, frozenset)) or not isinstance(out, Iterable) \
            or getattr(out, "ndim", 1) == 0:
        raise RewardError(f"reward function {name} returned {'None' if out is None else 'a ' + _show(out)} {expected}")
    out = list(out)
    if len(out) != n:
        raise RewardError(f"reward function {name} returned {len(out)} values for {n} completions")
    return out


def _row_rewards(r, ids, i, completions, name) -> list[float]:
    """One completion's per-token rewards from what the reward function returned for it: a number (the
    sequence score, placed on the last token) or one number per token."""
    which = f"completion {i} {completions[i]!r}"
    score = _number(r)
    if score is not None:
        row = [0.0] * len(ids)
        if row:
            row[-1] = score
    elif isinstance(r, (str, bytes)):
        raise RewardError(f"reward function {name} returned the string {_REPR.repr(r)} for {which}: a reward must "
                          f"be a number, not a string (convert it in the reward function)")
    elif r is None:
        raise RewardError(f"reward function {name} returned None for {which}: a reward must be a number "
                          f"(None marks a completion as unscorable under task.on_reward_error=skip)")
    elif isinstance(r, Mapping) or not isinstance(r, Iterable):
        raise RewardError(f"reward function {name} returned a {_show(r)} for {which}: expected a number, or a "
                          f"list with one number per token")
    else:
        row = []
        for j, x in enumerate(r):
            v = _number(x)
            if v is None:
                raise RewardError(f"reward function {name} returned a {_show(x)} as token reward {j} of {which}: "
                                  f"token rewards must be numbers")
            row.append(v)
        if len(row) != len(ids):
            raise RewardError(f"reward function {name} returned {len(row)} token rewards for completion "
                              f"{i} of {len(ids)} tokens ({completions[i]!r})")
    if not all(math.isfinite(x) for x in row):
        raise RewardError(f"reward function {name} returned a non-finite reward for completion {i} "
                          f"({completions[i]!r}): {_REPR.repr(r)}")
    return row


def call_reward(fn: Callable, prompts: list[str], completions: list[str], *, targets: list[str],
                completion_ids: list[list[int]], completion_tokens: list[list[str]],
                finished: list[bool], on_error: str = "raise",
                errors: list[str] | None = None) -> list[list[float] | None]:
    """Call ``fn`` and return per-token rewards, one list per completion (sequence scores go last).

    When ``fn`` raises, it is called again on each completion alone to find the one at fault, and the
    error names the function and that completion. ``on_error="skip"`` instead scores such completions
    (and those with a non-finite or unusable reward: a string, None, a dict...) as missing: ``None`` in
    their place. When it raises on the whole batch but on no completion alone, ``skip`` uses the scores
    of each alone. A result that is not one value per completion is an error in either mode.
    ``errors``: a list that receives the one-line reason of each completion scored as missing.
    """
    name = _fn_name(fn)
    kw = dict(targets=targets, completion_ids=completion_ids, completion_tokens=completion_tokens, finished=finished)
    try:
        out = fn(prompts, completions, **kw)
    except Exception as e:  # noqa: BLE001 - re-raised with the function and the completion named
        out = _one_by_one(fn, name, e, prompts, completions, kw, on_error, errors)
    out = _values(out, len(completions), name)
    token_rewards: list[list[float] | None] = []
    for i, (r, ids) in enumerate(zip(out, completion_ids)):
        if r is _RAISED:  # skip: it raised on this completion alone (the reason is in ``errors`` already)
            token_rewards.append(None)
            continue
        if r is None and on_error == "skip":
            token_rewards.append(None)
            if errors is not None:
                errors.append(f"reward function {name} returned None for completion {i} {completions[i]!r}")
            continue
        try:
            token_rewards.append(_row_rewards(r, ids, i, completions, name))
        except RewardError as e:
            if on_error != "skip":
                raise
            token_rewards.append(None)
            if errors is not None:
                errors.append(str(e))
    return token_rewards


def _one_line(error: BaseException) -> str:
    """``Type: first line of the message`` (``Type`` alone for an empty message)."""
    text = str(error).strip()
    return f"{type(error).__name__}: {text.splitlines()[0]}" if text else type(error).__name__


#: `_one_by_one`'s value for a completion that it raised on alone (under skip)
_RAISED = object()


def _one_by_one(fn, name, error, prompts, completions, kw, on_error, errors=None):
    """``fn`` on each completion alone: its values, ``_RAISED`` where it raises (``skip``); with ``raise``,
    a RewardError naming the first completion it raises on. When it raises on none of them alone, the
    batch call's failure is the function's own (a batching bug, or a flaky verifier): ``skip`` keeps
    the values of each alone (all scorable), ``raise`` names the function and says so. When it raises on
    every completion alone too, the failure is not a completion's (a wrong signature, a bug): ``raise``
    says so rather than suggesting ``skip``."""
    out, raised = [], 0
    for i in range(len(completions)):
        one = {k: [v[i]] for k, v in kw.items()}
        try:
            got = fn([prompts[i]], [completions[i]], **one)
        except Exception as e:  # noqa: BLE001
            if on_error == "skip":
                out.append(_RAISED)
                raised += 1
                if errors is not None:
                    errors.append(f"reward function {name} raised {_one_line(e)} on completion {i} {completions[i]!r}")
                continue
            if i > 0 or len(completions) < 2 or not _raises_on_every_other(fn, prompts, completions, kw, i):
                raise RewardError(f"reward function {name} raised {_one_line(e)} on completion {i} "
                                  f"{completions[i]!r} (prompt {prompts[i]!r}); task.on_reward_error=skip scores "
                                  f"such completions as missing instead") from e
            raise RewardError(f"reward function {name} raised {_one_line(e)} on every completion, alone as in a "
                              f"batch: not a failure of some completions (check its signature, documented in "
                              f"rlexp/tasks/base.py, and its code); task.on_reward_error=skip would not help") from e
        out.append(_values(got, 1, name, f"for completion {i} alone")[0])  # an error in either mode, as in a batch
    if raised:
        return out
    whole = (f"reward function {name} raised {_one_line(error)} on the whole batch of {len(completions)} "
             f"completions, but scored each of them alone")
    if on_error != "skip":
        raise RewardError(f"{whole}: a bug in how it handles a batch (or a flaky verifier); "
                          f"task.on_reward_error=skip uses the scores of each alone") from error
    if name not in _warned_batch:
        _warned_batch.add(name)
        log.warning("%s: using the scores of each alone (warned once)", whole)
    return out


def _raises_on_every_other(fn, prompts, completions, kw, first: int) -> bool:
    """Whether ``fn`` raises on each completion after ``first`` alone too (the first to fail, so together:
    on every completion when ``first`` is 0)."""
    for i in range(first + 1, len(completions)):
        try:
            fn([prompts[i]], [completions[i]], **{k: [v[i]] for k, v in kw.items()})
        except Exception:  # noqa: BLE001
            continue
        return False
    return True


#: reward functions already warned about failing on whole batches only (one warning per process)
_warned_batch: set[str] = set()


def pass_at_k_settings(eval: Mapping | None) -> tuple[list[int], int, int | None]:  # noqa: A002
    """``(ks, n, prompts)`` from ``task.eval``: the sorted distinct ``pass_k``, the samples per prompt
    (``pass_samples``; null = the largest k) and ``pass_prompts`` (None = every held-out prompt). An ``n``
    below the largest k is an error naming both keys (an estimate of pass@k needs n ≥ k samples)."""
    eval = eval or {}
    ks = sorted({int(k) for k in (eval.get("pass_k") or [])})
    if ks and ks[0] < 1:
        raise ValueError(f"task.eval.pass_k={ks}: every k must be >= 1")
    n = eval.get("pass_samples")
    if ks and n is not None and n < ks[-1]:
        raise ValueError(f"task.eval.pass_samples={n} must be >= the largest task.eval.pass_k ({ks[-1]}): "
                         f"pass@k needs at least k samples per prompt")
    return ks, (int(n) if n is not None else (ks[-1] if ks else 0)), eval.get("pass_prompts")


class Task:
    """Base class: a name, a training pool, a held-out split, a reward function and a token budget."""

    name: str = "task"
    #: a fixed alphabet for the embedded character tokenizer (``model=tiny``); None = derived from the task's
    #: own texts by ``char_alphabet()``
    alphabet: str | None = None
    #: wrap each prompt with the tokenizer's chat template as a user turn when encoding it
    chat_template: bool = False
    #: under ``chat_template``: the text of a system turn before each user turn (None: none)
    system_turn: str | None = None

    def __init__(self, *, name: str, reward: Callable, max_new_tokens: int, on_reward_error: str = "raise",
                 eval: Mapping | None = None, rewards: Sequence | None = None):  # noqa: A002 - `task.eval`
        if on_reward_error not in REWARD_ERROR_MODES:
            raise ValueError(f"task.on_reward_error={on_reward_error}: expected one of {', '.join(REWARD_ERROR_MODES)}")
        self.name = name
        #: pass@k evaluation (``task.eval``): the ks (sorted, empty = off), the samples per prompt n, and how
        #: many held-out prompts it uses (None = all)
        self.pass_k, self.pass_samples, self.pass_prompts = pass_at_k_settings(eval)
        #: the reward function; with ``rewards`` (``task.rewards``, several with weights) their weighted sum
        #: in its place (``rlexp.tasks.combine.WeightedReward``)
        self.reward = reward
        if rewards is not None:
            from rlexp.tasks.combine import WeightedReward
            self.reward = WeightedReward(rewards)
        #: what a reward function that raises (or returns NaN/Inf, a string, None...) for a completion does:
        #: stop the run, or skip the completion
        self.on_reward_error = on_reward_error
        self.max_new_tokens = max_new_tokens
        self.train_examples: list[Example] = []
        self.eval_examples: list[Example] = []

    def extra_text(self) -> list[str]:
        """Text the model will see besides the examples' prompts, targets and ``sft_completion``\s (a system
        prompt, words a template adds when prompts are encoded): its characters join ``char_alphabet()``."""
        return []

    def texts(self) -> Iterator[tuple[str, str]]:
        """Every text of the task a policy must encode, as ``(where, text)``: each training and held-out prompt
        and target (``task train prompt 17``, ``task eval target 3``), each warm-start completion that is not
        its target (``task sft completion 17``) and each ``extra_text()`` (``task extra text 0``)."""
        for split, examples in (("train", self.train_examples), ("eval", self.eval_examples)):
            for i, e in enumerate(examples):
                yield f"task {split} prompt {i}", e.prompt
                yield f"task {split} target {i}", e.target
        for i, e in enumerate(self.train_examples):
            completion = self.sft_completion(e)
            if completion != e.target:
                yield f"task sft completion {i}", completion
        for i, text in enumerate(self.extra_text()):
            yield f"task extra text {i}", text

    def char_alphabet(self) -> str:
        """The characters of the embedded character tokenizer for this task: ``alphabet`` when the class
        fixes one (so the embedded model built for it keeps its cache key), else the sorted distinct
        characters of ``texts()``."""
        if self.alphabet is not None:
            return self.alphabet
        chars: set[str] = set()
        for _, text in self.texts():
            chars.update(text)
        return "".join(sorted(chars))

    def sft_completion(self, example: Example) -> str:
        """The completion text a supervised warm start trains on (EOS is appended by the caller)."""
        return example.target

    def is_correct(self, example: Example, completion: str, finished: bool) -> bool:
        """Whether a completion (text without EOS) answers ``example``: the evaluation's ``accuracy``."""
        return finished and completion == example.target

    def fingerprint(self) -> dict:
        """What determines the prompts (used to key cached warm starts)."""
        return {"class": f"{type(self).__module__}.{type(self).__qualname__}", "name": self.name}
