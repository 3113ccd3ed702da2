"""The rollout correction in the online update (``algorithm.rollout_correction``, ``rollout_is_cap``).

The HF engine's sampler and the trainer agree to ~1e-7 (tests/test_fidelity.py), so the weights are ~1
there. A real mismatch: a fixed rollout sampled at temperature 1 and trained by a run whose trainer scores
at ``rollout.temperature=0.7`` (π_old/π_sampler then spans ~0.3-1.4 on these tokens), through a real
Lightning Trainer (tests/one_iteration.py)."""
from __future__ import annotations

import pytest
import torch

from fast_overrides import FAST
from one_iteration import build, one_iteration
from rlexp import core
from rlexp.config import ConfigError, validate
from rlexp.config.knobs import dead_overrides, inactive_knobs
from rlexp.rollout import generate_rollout
from rlexp.train import compose, run

GROUPS = ["algorithm=grpo", "algorithm.prompts_per_step=2", "algorithm.num_generations=4", "algorithm.actor_lr=1e-3",
          "task.reward._target_=rlexp.tasks.arithmetic.partial_credit"]
TWO_PASS = GROUPS + ["algorithm.minibatch_size=4", "rollout.temperature=0.7"]  # old log-probs from a scoring pass
SINGLE_PASS = GROUPS + ["algorithm.minibatch_size=8", "rollout.temperature=0.7"]  # ... from the update's forward
#: each knob -> (its base, the flipped value): the table tests/test_ppo_module.py defers to for these keys
KNOBS = {"rollout_correction": ([], "algorithm.rollout_correction=tis"),
         "rollout_is_cap": (["algorithm.rollout_correction=tis"], "algorithm.rollout_is_cap=1.25")}


@pytest.fixture(scope="module")
def batch():
    """8 completions sampled at T = 1 by the run's initial policy, with the sampler's log-probs (at T = 1)."""
    _, module = build(TWO_PASS)
    torch.manual_seed(123)
    examples, idx = module.sample_prompts(0)
    return generate_rollout(module.actor, module.tokenizer, module.task, examples, num_generations=4,
                            max_new_tokens=6, temperature=1.0, prompt_index=idx)


def _params(module) -> torch.Tensor:
    return torch.cat([p.detach().flatten() for p in module.actor.parameters()])


def _recorded(overrides, batch):
    """One iteration on ``batch``; the module and, per actor loss, what `_rollout_is_weights` was given and gave."""
    from rlexp.modules.update import UpdateSteps
    calls, inner = [], UpdateSteps._rollout_is_weights

    def recording(self, mb, old_logprobs):
        out = inner(self, mb, old_logprobs)
        calls.append((mb.loss_mask, old_logprobs, mb.rollout_logprobs, *out))
        return out
    UpdateSteps._rollout_is_weights = recording
    try:
        module = one_iteration(overrides, batch)
    finally:
        UpdateSteps._rollout_is_weights = inner
    return module, calls


def _logged(module) -> dict:
    return next(h for h in module.history if "train/policy_loss" in h)


@pytest.mark.parametrize("overrides", [TWO_PASS, SINGLE_PASS], ids=["two-pass", "single-pass"])
@pytest.mark.parametrize("mode, cap", [("tis", 1.25), ("mis", 2.0)])
def test_the_loss_is_weighted_by_the_ratio_of_the_old_policy_to_the_sampler(overrides, mode, cap, batch):
    module, calls = _recorded(overrides + [f"algorithm.rollout_correction={mode}", f"algorithm.rollout_is_cap={cap}"],
                              batch)
    assert len(calls) == (2 if overrides is TWO_PASS else 1)
    cut_total = 0.0
    for loss_mask, old, sampler, weights, metrics in calls:
        m = loss_mask.bool()
        ratio = torch.exp(old - sampler)
        want = ratio.clamp(max=cap) if mode == "tis" else torch.where((ratio >= 1 / cap) & (ratio <= cap), ratio, 0.0)
        torch.testing.assert_close(weights, torch.where(m, want, 0.0), rtol=1e-6, atol=0)
        assert metrics["rollout_is_weight_mean"].item() == pytest.approx(want[m].mean().item(), rel=1e-5)
        cut_total += metrics["rollout_is_clipfrac"].item()
    h = _logged(module)
    assert h["train/rollout_is_clipfrac"] == pytest.approx(cut_total / len(calls), rel=1e-5)
    assert h["train/rollout_is_clipfrac"] > 0.05  # the mismatch is real: tokens are truncated / masked
    assert h["train/rollout_mismatch_kl"] > 1e-3
    assert h["train/rollout_is_weight_mean"] == pytest.approx(
        sum(c[4]["rollout_is_weight_mean"].item() for c in calls) / len(calls), rel=1e-5)


def test_none_passes_no_weights_reads_no_sampler_logprobs_and_logs_no_weight_metrics(batch):
    module, calls = _recorded(TWO_PASS, batch)
    assert [c[3] for c in calls] == [None, None] and [c[4] for c in calls] == [{}, {}]
    assert not any(k.startswith("train/rollout_is_") for k in _logged(module))
    shifted = batch.select(list(range(batch.size)))
    shifted.rollout_logprobs = batch.rollout_logprobs - 0.5 * batch.mask  # another sampler, same tokens
    again, _ = _recorded(TWO_PASS, shifted)
    assert torch.equal(_params(module), _params(again))


@pytest.mark.parametrize("knob", sorted(KNOBS))
def test_each_knob_changes_the_update(knob, batch):
    extra, flipped = KNOBS[knob]
    base = _params(one_iteration(TWO_PASS + extra, batch))
    assert torch.equal(base, _params(one_iteration(TWO_PASS + extra, batch))), "same config, same update"
    module = one_iteration(TWO_PASS + extra + [flipped], batch)
    assert not torch.equal(base, _params(module)), f"{flipped} changed nothing"
    assert knob not in inactive_knobs(module.algo), f"{knob} is tested where it is declared inactive"


def test_tis_and_mis_make_different_updates(batch):
    """At C = 2 no ratio here exceeds 2: tis is plain IS, mis also drops the tokens with ρ < 1/2."""
    tis, mis = (one_iteration(TWO_PASS + [f"algorithm.rollout_correction={m}"], batch) for m in ("tis", "mis"))
    assert _logged(tis)["train/rollout_is_clipfrac"] == 0.0 < _logged(mis)["train/rollout_is_clipfrac"]
    assert not torch.equal(_params(tis), _params(mis))


def test_a_rollout_without_sampler_logprobs_is_refused_in_one_line(batch):
    bare = batch.select(list(range(batch.size)))
    bare.rollout_logprobs = None
    with pytest.raises(ValueError, match=r"^algorithm.rollout_correction=mis needs the sampler's log-prob of each "
                                         r"sampled token and this rollout did not record them") as e:
        one_iteration(TWO_PASS + ["algorithm.rollout_correction=mis"], bare)
    assert "\n" not in str(e.value)


def test_with_the_hf_engine_the_weights_are_one(in_tmp):
    """The sampler is the trainer's own model: ρ = 1 up to fp32 noise, nothing truncated or masked."""
    module = run(compose(FAST + GROUPS + ["tracking=none", "algorithm.minibatch_size=4", "rollout.temperature=0.7",
                                          "algorithm.rollout_correction=mis", "algorithm.rollout_is_cap=1.01"]),
                 launch_dir=str(in_tmp))
    steps = [h for h in module.history if "train/policy_loss" in h]
    assert len(steps) == 2
    for h in steps:
        assert h["train/rollout_is_weight_mean"] == pytest.approx(1.0, abs=1e-4)
        assert h["train/rollout_is_clipfrac"] == 0.0


def test_the_keys_are_validated_and_the_cap_is_dead_without_a_correction():
    with pytest.raises(ConfigError, match=r"algorithm\.rollout_is_cap=1\.0 is out of range: must be > 1\.0"):
        validate(compose(["algorithm.rollout_correction=tis", "algorithm.rollout_is_cap=1.0"]))
    with pytest.raises(ConfigError, match=r"algorithm\.rollout_correction=is is not registered; allowed: mis, none, tis"):
        validate(compose(["algorithm.rollout_correction=is"]))
    algo = compose(["algorithm=grpo"]).algorithm
    assert (algo.rollout_correction, algo.rollout_is_cap) == ("none", 2.0)  # every online recipe inherits ppo's
    assert inactive_knobs(algo)["rollout_is_cap"] == "rollout_correction=none"
    assert dead_overrides(algo, ["algorithm.rollout_is_cap=3"]) == {"algorithm.rollout_is_cap": "rollout_correction=none"}
    live = compose(["algorithm=grpo", "algorithm.rollout_correction=tis"]).algorithm
    assert not {"rollout_correction", "rollout_is_cap"} & set(inactive_knobs(live))
    assert core.ROLLOUT_CORRECTIONS.names() == ["mis", "none", "tis"]
