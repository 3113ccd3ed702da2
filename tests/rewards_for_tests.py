"""Reward functions used by tests through `task.reward._target_` (as a user's own would be)."""
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
