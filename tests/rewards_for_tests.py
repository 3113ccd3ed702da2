"""Reward functions used by tests through `task.reward._target_` (as a user's own would be)."""
import os

CALLS = {"n": 0}


def fails_after_first_call(prompts, completions, *, targets, finished, **kwargs):
    """Scores the step-0 evaluation normally, then raises (a reward function with a bug)."""
    CALLS["n"] += 1
    if CALLS["n"] > 1:
        raise KeyError("no such field 'answer'")
    return [float(done and c == t) for c, t, done in zip(completions, targets, finished)]


def coin(prompts, completions, *, completion_ids, **kwargs):
    """1.0 when the completion's token ids sum to an even number: a reward uncorrelated with skill,
    so groups of 2 have equal rewards about half the time (dynamic sampling / filtering have work)."""
    return [float(sum(ids) % 2 == 0) for ids in completion_ids]


def chokes_on_a_digit(prompts, completions, *, targets, finished, **kwargs):
    """Raises on any completion containing a '7' (a reward function with a parsing bug), else exact match."""
    out = []
    for c, t, done in zip(completions, targets, finished):
        if "7" in c:
            raise ValueError(f"cannot parse {c!r}")
        out.append(float(done and c == t))
    return out


def fails_on_batches(prompts, completions, *, targets, finished, **kwargs):
    """Raises on any batch of more than one completion, scores one alone (exact match): a verifier with
    a batching bug, or a flaky one, that can score every completion when asked one at a time."""
    if len(completions) > 1:
        raise RuntimeError(f"verifier overloaded by {len(completions)} completions")
    return [float(done and c == t) for c, t, done in zip(completions, targets, finished)]


def returns_text(prompts, completions, *, targets, finished, **kwargs):
    """Exact match, but as the string "1.0"/"0.0" for completions containing a '7' (a verifier that
    forgot to convert its output to a number)."""
    scores = [float(done and c == t) for c, t, done in zip(completions, targets, finished)]
    return [str(s) if "7" in c else s for s, c in zip(scores, completions)]


def returns_none_on_a_digit(prompts, completions, *, targets, finished, **kwargs):
    """Exact match, but None for completions containing a '7' (a verifier that gives up on them)."""
    return [None if "7" in c else float(done and c == t) for c, t, done in zip(completions, targets, finished)]


#: what `returns_garbage_rows` returns for completions "a", "b", "c", "d": a per-token row; a row with a
#: nested list; a row with a string; a dict
GARBAGE_ROWS = {"a": [0.0, 1.0], "b": [0.0, [1.0]], "c": [0.0, "1"], "d": {"reward": 1.0}}


def returns_garbage_rows(prompts, completions, **kwargs):
    return [GARBAGE_ROWS[c] for c in completions]


def returns_a_dict(prompts, completions, *, targets, finished, **kwargs):
    """``{completion: score}`` instead of a list of scores."""
    return {c: float(done and c == t) for c, t, done in zip(completions, targets, finished)}


def returns_a_float(prompts, completions, *, targets, finished, **kwargs):
    """The batch's mean score instead of one score per completion."""
    return sum(float(done and c == t) for c, t, done in zip(completions, targets, finished)) / len(completions)



def first_operand_or_fail(prompts, completions, **kwargs):
    """``a / 100`` for the prompt ``a+b=``; raises when ``b`` is odd. It reads the prompt only, so every
    evaluation of the same held-out prompts has the same scorable ones and the same mean over them."""
    out = []
    for p in prompts:
        a, b = p.rstrip("=").split("+")
        if int(b) % 2:
            raise ValueError(f"cannot score {p!r}")
        out.append(int(a) / 100)
    return out


def wrong_signature(prompts, completions):
    """Lacks the keyword arguments every reward receives: a TypeError on every call, not a completion's fault."""
    return [1.0 for _ in completions]


def always_nan(prompts, completions, **kwargs):
    """Nothing it returns is usable."""
    return [float("nan") for _ in completions]


#: the prompts of every call of `records_prompts`, in order (a test clears it before a run)
PROMPTS: list[list[str]] = []


def records_prompts(prompts, completions, *, targets, finished, **kwargs):
    """Exact match; records each call's prompts in PROMPTS (which prompts a run trained on, in order)."""
    PROMPTS.append(list(prompts))
    return [float(done and c == t) for c, t, done in zip(completions, targets, finished)]


_IMPORTED_IN = os.getpid()


def fails_in_another_process(prompts, completions, *, targets, finished, **kwargs):
    """Exact match in the process that imported it (the trainer's evaluation); raises in any other one (the
    off-policy generator, forked from it)."""
    if os.getpid() != _IMPORTED_IN:
        raise RuntimeError("scored outside the trainer")
    return [float(c.strip() == t) for c, t in zip(completions, targets)]
