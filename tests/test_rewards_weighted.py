"""Several rewards with weights (`task.rewards`): the weighted sum, each component's metrics in a real
`rlexp train` run, a component that raises (under raise and under skip), the start-up checks, and a weight
that changes the update."""
from __future__ import annotations

import math

import pytest
import torch
from mlflow.tracking import MlflowClient

from fast_overrides import FAST
from rlexp.cli import main
from rlexp.config import ConfigError, validate
from rlexp.tasks import ArithmeticTask, RewardError, call_reward, exact_match, partial_credit
from rlexp.tasks.combine import RewardComponent, WeightedReward
from rlexp.train import compose, run

EXACT, PARTIAL = "rlexp.tasks.arithmetic.exact_match", "rlexp.tasks.arithmetic.partial_credit"


def rewards(*entries: str) -> str:
    """The `task.rewards=[...]` override (Hydra's list-of-dicts syntax) of ``entries`` (each ``k:v,...``)."""
    return "task.rewards=[" + ",".join("{" + e + "}" for e in entries) + "]"


# "12" (exact, EOS), "13" (first digit right, EOS), "1" (not finished): tokens one per character
COMPLETIONS = ["12", "13", "1"]
FIELDS = dict(targets=["12"] * 3, completion_ids=[[1, 2, 0], [1, 3, 0], [1]],
              completion_tokens=[["1", "2", "<eos>"], ["1", "3", "<eos>"], ["1"]], finished=[True, True, False])


def test_the_weighted_sum_mixes_sequence_scores_and_per_token_rewards():
    """2·exact_match − 0.5·partial_credit + 0.25·regex('^1'): by hand, token by token (partial_credit's unit
    is 1/3 for a 2-digit target; a sequence score sits on the last token)."""
    task = ArithmeticTask(num_eval=8, rewards=[
        {"_target_": EXACT, "weight": 2.0}, {"_target_": PARTIAL, "weight": -0.5},
        {"_target_": "rlexp.tasks.rewards.regex_match", "weight": 0.25, "pattern": "^1", "name": "starts_with_1"}])
    assert isinstance(task.reward, WeightedReward)
    rows, scores = task.reward.score(["p"] * 3, COMPLETIONS, **FIELDS)
    u = 1 / 3
    expected = [[-0.5 * u, -0.5 * u, 2.0 - 0.5 * u + 0.25],  # exact: 1, partial: u u u, regex: 1
                [-0.5 * u, 0.0, -0.5 * u + 0.25],              # exact: 0, partial: u 0 u (EOS after 2 chars)
                [-0.5 * u + 0.25]]                               # unfinished: partial u, regex 1
    assert [len(r) for r in rows] == [3, 3, 1]
    for got, want in zip(rows, expected):
        assert got == pytest.approx(want, abs=1e-12)
    assert scores == {"exact_match": [1.0, 0.0, 0.0], "partial_credit": pytest.approx([1.0, 2 * u, u]),
                      "starts_with_1": [1.0, 1.0, 1.0]}
    # the completion's score is the weighted sum of the components' scores
    for i, row in enumerate(rows):
        assert sum(row) == pytest.approx(2.0 * scores["exact_match"][i] - 0.5 * scores["partial_credit"][i]
                                         + 0.25 * scores["starts_with_1"][i])


def test_one_component_of_weight_1_is_the_reward_itself():
    weighted = WeightedReward([RewardComponent(partial_credit, 1.0)])
    assert weighted(["p"] * 3, COMPLETIONS, **FIELDS) == call_reward(partial_credit, ["p"] * 3, COMPLETIONS, **FIELDS)
    assert weighted.names == ["partial_credit"]


def test_names_default_to_the_function_and_repeats_are_numbered():
    weighted = WeightedReward([RewardComponent(exact_match, 1.0), RewardComponent(exact_match, 0.5),
                               RewardComponent(partial_credit, 1.0, name="exact_match_2")])
    # the given name keeps its own; the second default one takes the next free number
    assert weighted.names == ["exact_match", "exact_match_3", "exact_match_2"]
    with pytest.raises(ValueError, match=r"^task.rewards\[1\].name=x is already the name of task.rewards\[0\]"):
        WeightedReward([RewardComponent(exact_match, 1.0, "x"), RewardComponent(partial_credit, 1.0, "x")])
    with pytest.raises(ValueError, match=r"^task.rewards\[0\].weight=inf must be a finite number$"):
        WeightedReward([RewardComponent(exact_match, float("inf"))])


def test_a_component_that_fails_names_itself_or_leaves_the_completion_unscorable():
    from rewards_for_tests import chokes_on_a_digit
    weighted = WeightedReward([RewardComponent(exact_match, 1.0), RewardComponent(chokes_on_a_digit, 0.5)])
    completions = ["12", "17"]
    fields = dict(targets=["12", "17"], completion_ids=[[1, 2, 0]] * 2, completion_tokens=[["1", "2", "<eos>"]] * 2,
                  finished=[True, True])
    with pytest.raises(RewardError, match=r"^reward function rewards_for_tests.chokes_on_a_digit raised ValueError"
                                          r"[^\n]*completion 1 '17'[^\n]*$"):
        weighted.score(["p", "q"], completions, **fields)
    errors: list[str] = []
    rows, scores = weighted.score(["p", "q"], completions, on_error="skip", errors=errors, **fields)
    assert rows == [[0.0, 0.0, 1.5], None] and len(errors) == 1 and "chokes_on_a_digit" in errors[0]
    # a completion without every component's reward has no score in any component's mean
    assert scores == {"exact_match": [1.0, None], "chokes_on_a_digit": [1.0, None]}


# ---- in a real run ------------------------------------------------------------------------------------

def _history(client, run_id, key):
    return {m.step: m.value for m in client.get_metric_history(run_id, key)}


def test_each_component_is_logged_in_training_and_evaluation(mlflow_uri, in_tmp):
    """exact_match + 0.5·partial_credit, named `digits`: train/reward/<name> and eval/reward/<name> at every
    step, their weighted sum the logged reward_mean; a `task.reward` override is a dead knob, and the replaced
    `task.reward` is left out of the params."""
    over = [rewards(f"_target_:{EXACT},weight:1.0", f"_target_:{PARTIAL},weight:0.5,name:digits"),
            "task.reward._target_=rlexp.tasks.rewards.numeric_match"]
    assert main(["train", *FAST, *over, f"tracking.uri={mlflow_uri}", "tracking.experiment=weighted"]) == 0
    client = MlflowClient(mlflow_uri)
    run_ = client.search_runs([client.get_experiment_by_name("weighted").experiment_id])[0]
    rid = run_.info.run_id
    assert run_.info.status == "FINISHED"
    for split, steps in (("train", [1, 2]), ("eval", [0, 1, 2])):
        mean = _history(client, rid, f"{split}/reward_mean")
        exact, digits = _history(client, rid, f"{split}/reward/exact_match"), _history(client, rid, f"{split}/reward/digits")
        assert sorted(mean) == sorted(exact) == sorted(digits) == steps, split
        for s in steps:
            assert mean[s] == pytest.approx(exact[s] + 0.5 * digits[s], abs=1e-5), (split, s)
            assert 0.0 <= exact[s] <= digits[s] <= 1.0  # an exact answer has every digit
        assert max(digits.values()) > 0  # the warm start gets some digits right
    assert "task.reward._target_" in run_.data.tags["rlexp.dead_knobs"]
    # the replaced task.reward is not logged as if it had scored the run
    assert not [k for k in run_.data.params if k.startswith("task.reward.")]
    assert "task.reward.*: task.rewards is set" in run_.data.tags["rlexp.inactive_params"]
    assert "numeric_match" not in run_.data.params["task.rewards"] and "partial_credit" in run_.data.params["task.rewards"]


def test_a_component_that_raises_stops_the_run_naming_it(mlflow_uri, in_tmp, capsys):
    over = [rewards(f"_target_:{EXACT},weight:1.0", "_target_:rewards_for_tests.chokes_on_a_digit,weight:0.5"),
            "rollout.temperature=3.0"]
    with pytest.raises(SystemExit) as e:
        main(["train", *FAST, *over, f"tracking.uri={mlflow_uri}", "tracking.experiment=weighted_raise"])
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert e.value.code == 1 and last.startswith("rlexp: "), last
    assert "reward function rewards_for_tests.chokes_on_a_digit raised ValueError" in last and "on completion" in last


def test_under_skip_a_failing_component_is_counted_and_the_run_completes(mlflow_uri, in_tmp):
    """T=3 makes '7's common: chokes_on_a_digit fails on them; those completions are unscorable."""
    over = [rewards(f"_target_:{EXACT},weight:1.0", "_target_:rewards_for_tests.chokes_on_a_digit,weight:0.5"),
            "task.on_reward_error=skip", "rollout.temperature=3.0"]
    assert main(["train", *FAST, *over, f"tracking.uri={mlflow_uri}", "tracking.experiment=weighted_skip"]) == 0
    client = MlflowClient(mlflow_uri)
    run_ = client.search_runs([client.get_experiment_by_name("weighted_skip").experiment_id])[0]
    errors = _history(client, run_.info.run_id, "train/reward_errors")
    chokes = _history(client, run_.info.run_id, "train/reward/chokes_on_a_digit")
    assert run_.info.status == "FINISHED" and sorted(errors) == sorted(chokes) == [1, 2] and sum(errors.values()) > 0


# ---- start-up checks ----------------------------------------------------------------------------------

@pytest.mark.parametrize("entries, message", [
    ([f"_target_:{EXACT}"], r"task.rewards\[0\].weight is missing: each component needs a weight"),
    ([f"_target_:{EXACT},weight:1", f"_target_:{PARTIAL},weight:nan"], r"task.rewards\[1\].weight=nan must be a finite number"),
    ([f"_target_:{EXACT},weight:heavy"], r"task.rewards\[0\].weight=heavy must be a finite number"),
    ([f"_target_:{EXACT},weight:1", "_target_:nowhere.reward,weight:1"],
     r"task: Error locating target 'nowhere.reward' \(task.rewards\[1\]._target_\)"),
    ([f"_target_:{EXACT},weight:1,name:r", f"_target_:{PARTIAL},weight:1,name:r"],
     r"task.rewards\[1\].name=r is already the name of task.rewards\[0\]"),
    ([f"weight:1"], r"task.rewards\[0\]=\{'weight': 1\}: each component is \{_target_: <reward function>, weight:"),
    ([], r"task.rewards=\[\] must be a non-empty list of"),
])
def test_bad_components_are_refused_at_start_up(entries, message, in_tmp, capsys):
    with pytest.raises(SystemExit) as e:
        main(["train", *FAST, rewards(*entries) if entries else "task.rewards=[]", "tracking=none"])
    err = capsys.readouterr().err.strip().splitlines()
    assert e.value.code == 2 and len(err) == 1 and err[0].startswith("rlexp: "), err
    assert __import__("re").search(message, err[0]), err[0]


def test_without_task_rewards_there_are_no_component_metrics():
    """task.reward alone: the task's reward is the function itself, and nothing is logged per component."""
    cfg = compose(FAST)
    validate(cfg)
    from rlexp.train.steps import instantiate_task
    assert instantiate_task(cfg).reward.func is exact_match
    with pytest.raises(ConfigError, match=r"task.rewards\[0\].name='a b' must be a non-empty metric name"):
        validate(compose([rewards(f"_target_:{EXACT},weight:1,name:'a b'")]))


# ---- the knob changes the update ----------------------------------------------------------------------

def test_flipping_a_weight_changes_the_update():
    """partial_credit at +1 or −1 next to exact_match: the first rollout is the same (same seed, same
    policy), its rewards and so the policy after the update are not."""
    base = [*FAST, "tracking=none", "trainer.max_steps=1", "trainer.eval_every=1000"]
    runs = {w: run(compose([*base, rewards(f"_target_:{EXACT},weight:1.0", f"_target_:{PARTIAL},weight:{w}")]))
            for w in ("1.0", "-1.0")}
    first = {w: next(h for h in m.history if "train/reward_mean" in h) for w, m in runs.items()}
    assert first["1.0"]["train/response_length"] == first["-1.0"]["train/response_length"]
    assert first["1.0"]["train/reward/partial_credit"] == first["-1.0"]["train/reward/partial_credit"] > 0
    e, p = first["1.0"]["train/reward/exact_match"], first["1.0"]["train/reward/partial_credit"]
    assert first["1.0"]["train/reward_mean"] == pytest.approx(e + p, abs=1e-5)
    assert first["-1.0"]["train/reward_mean"] == pytest.approx(e - p, abs=1e-5)
    params = {w: torch.cat([t.detach().flatten() for t in m.policy_model.parameters()]) for w, m in runs.items()}
    assert not torch.equal(params["1.0"], params["-1.0"])
    assert math.isfinite(float((params["1.0"] - params["-1.0"]).abs().max()))


def test_rejection_sampling_accepts_by_the_weighted_sum():
    """The offline algorithms score with the same sum: partial_credit + 0.5·exact_match accepts completions
    and logs each component; partial_credit at −1 makes every score ≤ 0, so nothing is accepted."""
    base = [o for o in FAST if not o.startswith("algorithm.")] + [
        "algorithm=rejection_sampling", "algorithm.num_prompts=4", "algorithm.samples_per_prompt=4",
        "algorithm.batch_size=2", "algorithm.epochs_per_round=1", "trainer.max_steps=1", "tracking=none"]
    rounds = {}
    for w in ("1.0", "-1.0"):
        module = run(compose([*base, rewards(f"_target_:{PARTIAL},weight:{w}", f"_target_:{EXACT},weight:0.5")]))
        rounds[w] = next(h for h in module.history if "train/round" in h)
    plus, minus = rounds["1.0"], rounds["-1.0"]
    assert plus["train/sample_reward_mean"] == pytest.approx(
        plus["train/reward/partial_credit"] + 0.5 * plus["train/reward/exact_match"], abs=1e-5)
    assert plus["train/reward/partial_credit"] > 0 and plus["train/accepted_fraction"] > 0
    assert minus["train/reward/partial_credit"] == plus["train/reward/partial_credit"]  # the same samples
    assert minus["train/accepted_fraction"] == 0.0
