"""Reward functions used by tests through `task.reward._target_` (as a user's own would be)."""
CALLS = {"n": 0}


def fails_after_first_call(prompts, completions, *, targets, finished, **kwargs):
    """Scores the step-0 evaluation normally, then raises (a reward function with a bug)."""
    CALLS["n"] += 1
    if CALLS["n"] > 1:
        raise KeyError("no such field 'answer'")
    return [float(done and c == t) for c, t, done in zip(completions, targets, finished)]
