"""Verifiers as reward functions, usable with any task: ``task.reward._target_=rlexp.tasks.rewards.NAME``.

Each has rlexp's reward signature (``rlexp/tasks/base.py``) and scores 1.0 / 0.0 per completion; extra
config keys become keyword arguments (Hydra builds them with ``_partial_: true``), e.g.
``+task.reward.tolerance=1e-3``.

- ``numeric_match``: the last number of the completion against the target's number, within a tolerance;
- ``regex_match``: the completion matches ``task.reward.pattern`` (``{target}`` in it: the target, escaped);
- ``format`` (= ``format_reward``): the completion is ``<think>…</think> <answer>…</answer>``;
- ``math_answer``: Hugging Face's ``math-verify`` parses the target and the completion (LaTeX, numbers,
  ``\\boxed{}``) and compares them symbolically (``pip install 'rlexp[math]'``).
"""
from __future__ import annotations

import math
import re
import threading
from functools import lru_cache

#: a number: optional sign (not after a digit, letter, dot or ")" — in ``10-3`` the ``-`` is an operator),
#: then ``1,234,567`` (thousands separators: groups of exactly three digits), ``12``, ``12.5`` or ``.5``,
#: then an optional exponent (``1e-6``, ``2.5E3``)
_NUMBER = re.compile(r"(?:(?<![\w.)])-)?(?<![\d.])(?:\d{1,3}(?:,\d{3}(?!\d))+(?:\.\d+)?|\d+(?:\.\d+)?|\.\d+)"
                     r"(?:[eE][-+]?\d+)?")
#: the same without thousands separators (``thousands=False``): ``1,234`` is the two numbers 1 and 234
_NUMBER_PLAIN = re.compile(r"(?:(?<![\w.)])-)?(?<![\d.])(?:\d+(?:\.\d+)?|\.\d+)(?:[eE][-+]?\d+)?")


def last_number(text: str, thousands: bool = True) -> float | None:
    """The last number written in ``text`` (None when there is none).

    Integers, decimals (``0.5``, ``.5``), negatives (``-3``, but ``10-3`` ends with 3), scientific notation
    (``1e-6``) and, with ``thousands``, thousands separators (``1,234`` is 1234 — so ``15,116`` in a list
    is one number too; ``thousands=False`` reads it as 15 and 116). A trailing period ends a sentence.
    """
    found = None
    for found in (_NUMBER if thousands else _NUMBER_PLAIN).finditer(text):
        pass
    return None if found is None else float(found.group().replace(",", ""))


def numeric_match(prompts, completions, *, targets, finished, tolerance: float = 1e-6,
                  require_finished: bool = True, thousands: bool = True, **kwargs) -> list[float]:
    """1.0 when the completion's last number equals the target's (its last number) within ``tolerance``.

    Close means ``|x − y| ≤ tolerance · max(1, |x|, |y|)`` (``math.isclose`` with ``rel_tol = abs_tol =
    tolerance``): absolute for numbers up to 1 in size, relative beyond. A completion without a number, or
    one that did not end with EOS when ``require_finished``, scores 0. A target without a number is an
    error naming it (``task.on_reward_error=skip`` scores such completions as missing).
    """
    out = []
    for c, t, done in zip(completions, targets, finished):
        y = last_number(t, thousands)
        if y is None:
            raise ValueError(f"numeric_match: the target {t!r} holds no number")
        x = last_number(c, thousands)
        ok = x is not None and (done or not require_finished) and math.isclose(x, y, rel_tol=tolerance,
                                                                                abs_tol=tolerance)
        out.append(1.0 if ok else 0.0)
    return out


@lru_cache(maxsize=4096)
def _compiled(pattern: str, target: str, flags: int) -> re.Pattern:
    """``pattern`` with ``{target}`` replaced by the escaped target, compiled; one-line error when invalid."""
    text = pattern.replace("{target}", re.escape(target))
    try:
        return re.compile(text, flags)
    except re.error as e:
        raise ValueError(f"task.reward.pattern={pattern!r} is not a valid regular expression: {e}") from None


def _regex_scores(completions, targets, pattern, full, flags) -> list[float]:
    if not isinstance(pattern, str) or not pattern:
        raise ValueError(f"task.reward.pattern={pattern!r}: a regular expression is required "
                         f"(e.g. +task.reward.pattern='answer: {{target}}')")
    find = "fullmatch" if full else "search"
    return [1.0 if getattr(_compiled(pattern, t, flags), find)(c) else 0.0 for c, t in zip(completions, targets)]


def regex_match(prompts, completions, *, targets, pattern: str | None = None, full: bool = False,
                **kwargs) -> list[float]:
    """1.0 when the completion matches ``pattern`` (anywhere; the whole completion with ``full``).

    ``{target}`` in the pattern stands for the completion's target, regex-escaped (other braces, such
    as ``\\d{3}``, are regex syntax). Python's ``re`` flags go inline (``(?s)``, ``(?i)``). An invalid
    pattern is an error naming ``task.reward.pattern`` (raised on the first call, at the first rollout).
    """
    return _regex_scores(completions, targets, pattern, full, 0)


#: the structure ``format_reward`` checks by default
THINK_ANSWER = r"<think>.*?</think>\s*<answer>.*?</answer>"


def format_reward(prompts, completions, *, targets, pattern: str = THINK_ANSWER, full: bool = True,
                  **kwargs) -> list[float]:
    """1.0 when the completion has the structure ``pattern`` (the whole completion, surrounding
    whitespace aside, with ``full``; ``.`` spans lines): by default ``<think>…</think> <answer>…</answer>``.
    ``{target}`` in the pattern works as in ``regex_match``."""
    return _regex_scores([c.strip() for c in completions], targets, pattern, full, re.DOTALL)


#: ``task.reward._target_=rlexp.tasks.rewards.format``
format = format_reward  # noqa: A001 - the name the config uses; the builtin is not needed in this module


def math_answer(prompts, completions, *, targets, finished, require_finished: bool = True,
                timeout_seconds: int | None = 5, **kwargs) -> list[float]:
    """1.0 when ``math_verify.verify(parse(target), parse(completion))`` holds (Hugging Face's math-verify:
    LaTeX, plain numbers and expressions, ``\\boxed{}``; ``\\frac{1}{2}`` equals ``0.5``), else 0.0.

    A bare LaTeX target that does not parse as written (``x^2+1``) is parsed again as ``$x^2+1$``. A
    completion (or target) that does not parse scores 0, and so does one that did not end with EOS when
    ``require_finished``. ``timeout_seconds`` bounds each parse and comparison; math-verify enforces it
    with ``signal.alarm``, which works in the main thread only, so in any other thread it is off (None).
    """
    try:
        from math_verify import parse, verify
    except ImportError:
        raise ImportError("rlexp.tasks.rewards.math_answer needs the math-verify package: "
                          "pip install 'rlexp[math]' (or pip install 'math-verify>=0.7')") from None
    limit = timeout_seconds if threading.current_thread() is threading.main_thread() else None
    golds: dict[str, list] = {}
    out = []
    for c, t, done in zip(completions, targets, finished):
        if t not in golds:
            golds[t] = parse(t, parsing_timeout=limit) or parse(f"${t}$", parsing_timeout=limit)
        if not done and require_finished:
            out.append(0.0)
            continue
        answer = parse(c, parsing_timeout=limit)
        ok = bool(golds[t]) and bool(answer) and verify(golds[t], answer, timeout_seconds=limit)
        out.append(1.0 if ok else 0.0)
    return out
