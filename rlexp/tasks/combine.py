"""Several rewards with weights (``task.rewards``): the task's reward is their weighted sum.

``task.rewards`` is a list of components, each ``{_target_: <reward function>, weight: <number>, name:
<optional>, ...}``; the other keys are the function's keyword arguments (Hydra builds it with ``_partial_:
true`` unless the entry says otherwise, as for ``task.reward``). When it is set it replaces ``task.reward``.

- the combined per-token rewards of a completion are ``Σ_j w_j · r_j`` token by token, where ``r_j`` is what
  component ``j`` returned as per-token rewards (a sequence score sits on the last token, so sequence scores
  and per-token rewards mix); the completion's score is their sum, ``Σ_j w_j · s_j``;
- each component is called through ``call_reward`` (``rlexp/tasks/base.py``), so it gets the error handling
  of a single reward: under ``task.on_reward_error=raise`` a component that raises or returns something
  unusable stops the run with an error naming that function; under ``skip`` the completions it cannot score
  are unscorable (a completion needs every component's reward);
- ``s_j``, a component's own score (its per-token rewards summed, unweighted), is kept per completion for
  the metrics ``train/reward/<name>`` and ``eval/reward/<name>`` (the mean over the scorable completions).

A component's name is its ``name``, else its function's ``__name__`` (``_2``, ``_3``... added to repeats:
``rlexp.config.schema.reward_names``).
"""
from __future__ import annotations

import math
import numbers
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Callable

from rlexp.config.schema import reward_names
from rlexp.tasks.base import call_reward

#: rlexp's own keys of a ``task.rewards`` entry (not passed to the function)
OWN_KEYS = ("weight", "name")


@dataclass(frozen=True)
class RewardComponent:
    """One term of the weighted sum: a reward function, its weight, its metric name (None: the function's)."""

    fn: Callable
    weight: float
    name: str | None = None


def function_name(fn: Callable) -> str:
    """``__name__`` of the function (of the class, for a reward object), through a ``functools.partial``."""
    inner = getattr(fn, "func", fn)
    return getattr(inner, "__name__", None) or type(inner).__name__


def hydra_entries(entries: Sequence) -> list[dict]:
    """``task.rewards`` as Hydra instantiates it into ``RewardComponent``s: each entry's function (``_partial_:
    true`` unless it says otherwise) without rlexp's own keys, which go to the component."""
    from omegaconf import DictConfig, OmegaConf

    out = []
    for e in entries:
        e = dict(OmegaConf.to_container(e, resolve=True) if isinstance(e, DictConfig) else e)
        own = {k: e.pop(k, None) for k in OWN_KEYS}
        out.append({"_target_": f"{__name__}.RewardComponent", "fn": {"_partial_": True, **e}, **own})
    return out


def instantiate_task(node):
    """The Task of the config ``node`` (``cfg.task``), by Hydra; with ``task.rewards`` its components are built
    first (``hydra_entries``: Hydra would otherwise call each function with its weight) and given to the Task.
    Errors are Hydra's ``InstantiationException``, as for any task."""
    from hydra.errors import InstantiationException
    from hydra.utils import instantiate

    rewards = node.get("rewards")
    if rewards is None:
        return instantiate(node)
    components = [instantiate(e) for e in hydra_entries(rewards)]
    build = instantiate(node, rewards=None, _partial_=True)
    try:
        return build(rewards=components)
    except Exception as e:  # noqa: BLE001 - as Hydra reports an error in a constructor
        raise InstantiationException(f"Error in call to target '{node.get('_target_')}':\n{e!r}") from e


def _component(entry, i: int) -> RewardComponent:
    """A ``RewardComponent`` as given, or built from a config entry (``{_target_: ..., weight: ...}``)."""
    if isinstance(entry, RewardComponent):
        c = entry
    elif isinstance(entry, Mapping) and isinstance(entry.get("_target_"), str):
        from hydra.utils import instantiate
        c = instantiate(hydra_entries([entry])[0])
    else:
        raise ValueError(f"task.rewards[{i}]={entry!r}: each component is {{_target_: <reward function>, weight: "
                         f"<number>}} (a RewardComponent from Python)")
    w = c.weight
    if isinstance(w, bool) or not isinstance(w, numbers.Real) or not math.isfinite(float(w)):
        raise ValueError(f"task.rewards[{i}].weight={w!r} must be a finite number")
    return replace(c, weight=float(w))


class WeightedReward:
    """The weighted sum of ``components`` (``task.rewards``), with rlexp's reward signature; ``score`` also
    returns each component's own scores. Built from the entries of ``task.rewards`` or ``RewardComponent``s;
    their names resolved (``name``, else the function's, made distinct)."""

    def __init__(self, components: Sequence):
        if isinstance(components, (str, Mapping)) or not len(components):
            raise ValueError(f"task.rewards={components!r} must be a non-empty list of components "
                             f"(null: task.reward alone)")
        built = [_component(c, i) for i, c in enumerate(components)]
        names = reward_names([c.name for c in built], [function_name(c.fn) for c in built])
        self.components = [replace(c, name=n) for c, n in zip(built, names)]

    @property
    def names(self) -> list[str]:
        return [c.name for c in self.components]

    def score(self, prompts: list[str], completions: list[str], *, on_error: str = "raise",
              errors: list[str] | None = None, **fields) -> tuple[list[list[float] | None], dict[str, list]]:
        """``(rows, scores)``: the combined per-token rewards of each completion (None where a component could
        not score it, under ``skip``) and ``{name: [its score of each completion, None where unscorable]}``."""
        combined: list[list[float] | None] = [None] * len(completions)
        scores: dict[str, list] = {}
        failed = [False] * len(completions)
        for c in self.components:
            rows = call_reward(c.fn, prompts, completions, on_error=on_error, errors=errors, **fields)
            scores[c.name] = [None if r is None else math.fsum(r) for r in rows]
            for i, row in enumerate(rows):
                if row is None:
                    failed[i] = True
                elif combined[i] is None:
                    combined[i] = [c.weight * x for x in row]
                else:
                    combined[i] = [a + c.weight * x for a, x in zip(combined[i], row)]
        for name in scores:  # a component's score counts where the completion has a reward
            scores[name] = [None if f else s for s, f in zip(scores[name], failed)]
        return [None if f else row for row, f in zip(combined, failed)], scores

    def __call__(self, prompts, completions, **fields) -> list[list[float]]:
        """The combined per-token rewards (a component that fails raises, naming itself)."""
        return self.score(prompts, completions, **fields)[0]

    def __repr__(self) -> str:
        return "WeightedReward(" + ", ".join(f"{c.weight:g}·{c.name}" for c in self.components) + ")"


def score_rows(reward: Callable, prompts: list[str], completions: list[str], *, on_error: str = "raise",
               errors: list[str] | None = None, **fields) -> tuple[list[list[float] | None], dict[str, list]]:
    """``(per-token rewards of each completion, {component: scores})`` from the task's reward: a
    ``WeightedReward``'s components, or one reward function (no components)."""
    if isinstance(reward, WeightedReward):
        return reward.score(prompts, completions, on_error=on_error, errors=errors, **fields)
    return call_reward(reward, prompts, completions, on_error=on_error, errors=errors, **fields), {}
