"""A reward function that raises or returns something unusable (a string, None, a dict): the error names
the function and the completion at fault; with task.on_reward_error=skip the completion is scored as
missing, left out of the loss and of the evaluation's mean, and counted."""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hydra.utils import instantiate
from mlflow.tracking import MlflowClient

from fast_overrides import FAST
from one_iteration import build
from rlexp.cli import main
from rlexp.rollout import evaluate
from rlexp.tasks import ArithmeticTask
from rlexp.tasks.base import RewardError, call_reward
from rlexp.train import compose

BAD = "task.reward._target_=rewards_for_tests.chokes_on_a_digit"


def _call(fn, completions, on_error="raise"):
    n = len(completions)
    return call_reward(fn, ["p"] * n, completions, targets=["1"] * n, completion_ids=[[3, 1]] * n,
                       completion_tokens=[["x", "<eos>"]] * n, finished=[True] * n, on_error=on_error)


def test_the_error_names_the_function_and_the_offending_completion():
    from rewards_for_tests import chokes_on_a_digit
    with pytest.raises(RewardError, match=r"rewards_for_tests.chokes_on_a_digit raised ValueError.*completion 2 "
                                          r"'17' \(prompt 'p'\).*task.on_reward_error=skip"):
        _call(chokes_on_a_digit, ["1", "2", "17", "70"])
    rows = _call(chokes_on_a_digit, ["1", "2", "17", "70"], on_error="skip")
    assert rows[2] is None and rows[3] is None and rows[0] == [0.0, 1.0] and rows[1] == [0.0, 0.0]


def test_non_finite_rewards_are_skipped_or_named():
    def nan_on_b(prompts, completions, **kw):
        return [float("nan") if c == "b" else 1.0 for c in completions]
    with pytest.raises(RewardError, match="non-finite reward for completion 1"):
        _call(nan_on_b, ["a", "b"])
    assert _call(nan_on_b, ["a", "b"], on_error="skip")[1] is None


def test_a_failure_of_the_whole_batch_only_is_named_or_skipped_with_the_values_kept():
    """Every completion scores alone: ``raise`` names the batching bug; ``skip`` keeps the values."""
    from rewards_for_tests import fails_on_batches
    with pytest.raises(RewardError, match=r"^reward function rewards_for_tests.fails_on_batches raised RuntimeError: "
                                          r"verifier overloaded by 3 completions on the whole batch of 3 completions, "
                                          r"but scored each of them alone[^\n]*$"):
        _call(fails_on_batches, ["1", "2", "1"])
    assert _call(fails_on_batches, ["1", "2", "1"], on_error="skip") == [[0.0, 1.0], [0.0, 0.0], [0.0, 1.0]]


def test_skip_trains_through_a_verifier_that_fails_on_batches_only(mlflow_uri, in_tmp):
    """Each batch call raises and each completion alone scores: the run finishes with nothing unscorable."""
    assert main(["train", *FAST, "task.reward._target_=rewards_for_tests.fails_on_batches",
                 "task.on_reward_error=skip", f"tracking.uri={mlflow_uri}", "tracking.experiment=reward_batch_bug"]) == 0
    client = MlflowClient(mlflow_uri)
    run = client.search_runs([client.get_experiment_by_name("reward_batch_bug").experiment_id])[0]
    errors = [m.value for m in client.get_metric_history(run.info.run_id, "train/reward_errors")]
    rows = [m.value for m in client.get_metric_history(run.info.run_id, "train/loss_rows_frac")]
    assert run.info.status == "FINISHED" and errors == [0.0, 0.0] and all(r > 0 for r in rows)


def test_a_string_reward_is_refused_not_parsed():
    from rewards_for_tests import returns_text
    with pytest.raises(RewardError, match=r"^reward function rewards_for_tests.returns_text returned the string '0.0' "
                                          r"for completion 2 '17': a reward must be a number, not a string[^\n]*$"):
        _call(returns_text, ["1", "2", "17", "70"])
    assert _call(returns_text, ["1", "2", "17", "70"], on_error="skip") == [[0.0, 1.0], [0.0, 0.0], None, None]


def test_a_none_reward_is_named_under_raise_and_skipped_under_skip():
    from rewards_for_tests import returns_none_on_a_digit
    with pytest.raises(RewardError, match=r"^reward function rewards_for_tests.returns_none_on_a_digit returned None "
                                          r"for completion 2 '17'[^\n]*task.on_reward_error=skip[^\n]*$"):
        _call(returns_none_on_a_digit, ["1", "2", "17", "70"])
    assert _call(returns_none_on_a_digit, ["1", "2", "17", "70"], on_error="skip") == [[0.0, 1.0], [0.0, 0.0], None, None]


def test_unusable_values_for_a_completion_are_named_or_skipped():
    """A nested list, a string among the token rewards and a dict for completions 1, 2 and 3."""
    from rewards_for_tests import returns_garbage_rows
    with pytest.raises(RewardError, match=r"^reward function rewards_for_tests.returns_garbage_rows returned a list "
                                          r"\(\[1.0\]\) as token reward 1 of completion 1 'b'[^\n]*$"):
        _call(returns_garbage_rows, ["a", "b", "c", "d"])
    for c, what in [("c", r"a str \('1'\) as token reward 1 of completion 0 'c'"),
                    ("d", r"a dict \(\{'reward': 1.0\}\) for completion 0 'd'")]:
        with pytest.raises(RewardError, match=rf"^reward function rewards_for_tests.returns_garbage_rows returned {what}"):
            _call(returns_garbage_rows, [c])
    assert _call(returns_garbage_rows, ["a", "b", "c", "d"], on_error="skip") == [[0.0, 1.0], None, None, None]


WHOLE = {"returns_a_dict": r"a dict \(keys '1', '2', '17', '70'\) instead of a list of 4 values, one per completion",
         "returns_a_float": r"a float \(0.25\) instead of a list of 4 values, one per completion"}


@pytest.mark.parametrize("on_error", ["raise", "skip"])
@pytest.mark.parametrize("fn", sorted(WHOLE))
def test_a_result_that_is_not_one_value_per_completion_is_one_line_in_either_mode(fn, on_error):
    import rewards_for_tests
    with pytest.raises(RewardError, match=rf"^reward function rewards_for_tests.{fn} returned {WHOLE[fn]}[^\n]*$"):
        _call(getattr(rewards_for_tests, fn), ["1", "2", "17", "70"], on_error=on_error)


def test_skip_counts_string_rewards_as_unscorable(mlflow_uri, in_tmp):
    """T=3 makes '7's common: their string rewards are skipped and counted, the run goes on."""
    assert main(["train", *FAST, "task.reward._target_=rewards_for_tests.returns_text", "task.on_reward_error=skip",
                 "rollout.temperature=3.0", f"tracking.uri={mlflow_uri}", "tracking.experiment=reward_text"]) == 0
    client = MlflowClient(mlflow_uri)
    run = client.search_runs([client.get_experiment_by_name("reward_text").experiment_id])[0]
    errors = [m.value for m in client.get_metric_history(run.info.run_id, "train/reward_errors")]
    assert run.info.status == "FINISHED" and len(errors) == 2 and sum(errors) > 0


def test_a_run_stops_with_the_completion_named(mlflow_uri, in_tmp, capsys):
    with pytest.raises(SystemExit) as e:
        main(["train", *FAST, BAD, f"tracking.uri={mlflow_uri}", "tracking.experiment=reward_raise",
              "rollout.temperature=3.0"])
    err = capsys.readouterr().err
    assert e.value.code == 1 and "chokes_on_a_digit raised ValueError" in err and "on completion" in err
    client = MlflowClient(mlflow_uri)
    run = client.search_runs([client.get_experiment_by_name("reward_raise").experiment_id])[0]
    assert run.info.status == "FAILED" and "chokes_on_a_digit" in run.data.tags["rlexp.error"]


def test_skip_leaves_the_completions_out_of_the_loss_and_counts_them(mlflow_uri, in_tmp):
    """T=3 makes '7's common: the run goes on, every iteration counts its unscorable completions."""
    assert main(["train", *FAST, BAD, "task.on_reward_error=skip", "rollout.temperature=3.0",
                 f"tracking.uri={mlflow_uri}", "tracking.experiment=reward_skip"]) == 0
    client = MlflowClient(mlflow_uri)
    run = client.search_runs([client.get_experiment_by_name("reward_skip").experiment_id])[0]
    errors = [m.value for m in client.get_metric_history(run.info.run_id, "train/reward_errors")]
    rows = [m.value for m in client.get_metric_history(run.info.run_id, "train/loss_rows_frac")]
    assert run.info.status == "FINISHED" and len(errors) == len(rows) == 2 and sum(errors) > 0
    # FAST: 8 completions per iteration; the skipped ones are no loss rows
    assert all(r <= 1 - e / 8 + 1e-6 for r, e in zip(rows, errors))


def test_evaluation_leaves_unscorable_completions_out_of_the_mean_and_counts_them(mlflow_uri, in_tmp):
    """The reward scores half the held-out prompts (from the prompt alone): eval/reward_mean is the mean
    over those, eval/reward_errors counts the others, and their samples have no reward (not 0)."""
    over = ["task.reward._target_=rewards_for_tests.first_operand_or_fail", "task.on_reward_error=skip"]
    assert main(["train", *FAST, *over, f"tracking.uri={mlflow_uri}", "tracking.experiment=reward_eval"]) == 0
    mean, unscorable = _first_operand_expectation(over)
    client = MlflowClient(mlflow_uri)
    run = client.search_runs([client.get_experiment_by_name("reward_eval").experiment_id])[0]
    means = [m.value for m in client.get_metric_history(run.info.run_id, "eval/reward_mean")]
    errors = [m.value for m in client.get_metric_history(run.info.run_id, "eval/reward_errors")]
    assert run.info.status == "FINISHED" and errors == [unscorable] * 3
    assert means == pytest.approx([mean] * 3, abs=1e-6)
    table = json.loads(Path(client.download_artifacts(run.info.run_id, "samples/eval_step_000000.json",
                                                      str(in_tmp))).read_text())
    cols = table["columns"]
    for row in table["data"]:
        _, b = row[cols.index("prompt")].rstrip("=").split("+")
        assert (row[cols.index("reward")] is None) == (int(b) % 2 == 1), row


def _first_operand_expectation(over):
    """``(mean over the scorable held-out prompts, number of unscorable ones)`` for first_operand_or_fail."""
    held_out = [e.prompt.rstrip("=").split("+") for e in instantiate(compose([*FAST, *over]).task).eval_examples]
    scorable = [int(a) / 100 for a, b in held_out if int(b) % 2 == 0]
    assert 0 < len(scorable) < len(held_out) == 32
    return sum(scorable) / len(scorable), len(held_out) - len(scorable)


@pytest.mark.slow
def test_two_workers_reduce_the_evaluation_over_scorable_completions(tmp_path):
    """hardware=ddp_cpu: each worker evaluates half the held-out prompts; the logged mean is over the
    scorable completions of both, and the errors are their sum."""
    over = ["task.reward._target_=rewards_for_tests.first_operand_or_fail", "task.on_reward_error=skip"]
    mean, unscorable = _first_operand_expectation(over)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).parent), os.environ.get("PYTHONPATH", "")])}
    res = subprocess.run([sys.executable, "-m", "rlexp", "train", "hardware=ddp_cpu", *FAST, *over, "trainer.max_steps=1",
                          "hydra.run.dir=run"], cwd=tmp_path, capture_output=True, text=True, timeout=600, env=env)
    assert res.returncode == 0, res.stderr[-4000:]
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    run_id = client.search_runs([client.get_experiment_by_name("rlexp").experiment_id])[0].info.run_id
    assert [m.value for m in client.get_metric_history(run_id, "eval/reward_errors")] == [unscorable] * 2
    assert [m.value for m in client.get_metric_history(run_id, "eval/reward_mean")] == pytest.approx([mean] * 2, abs=1e-6)


def test_evaluation_with_nothing_scorable_has_no_mean_not_zero():
    """Every completion unscorable: reward_mean is NaN (no value), not 0; all counted."""
    _, module = build([])
    task = ArithmeticTask(num_eval=8, reward=lambda p, c, **kw: [None] * len(c), on_reward_error="skip")
    res = evaluate(module.policy_model, module.tokenizer, task, task.eval_examples, max_new_tokens=task.max_new_tokens,
                   num_samples=2)
    assert math.isnan(res.reward_mean) and res.reward_errors == 8 and [s["reward"] for s in res.samples] == [None, None]


def test_on_reward_error_accepts_raise_or_skip_only():
    from rlexp.config import ConfigError, validate
    from rlexp.train import compose
    with pytest.raises(ConfigError, match="task.on_reward_error"):
        validate(compose(["task.on_reward_error=ignore"]))


def test_a_function_failing_on_every_completion_is_not_sent_to_skip():
    """A wrong signature fails on every completion alone too: not a per-completion failure, so the message
    does not recommend task.on_reward_error=skip; one failing completion among others still does."""
    from rewards_for_tests import chokes_on_a_digit, wrong_signature
    with pytest.raises(RewardError) as e:
        _call(wrong_signature, ["1", "2", "3"])
    line = str(e.value)
    assert "\n" not in line and "wrong_signature raised TypeError" in line and "on every completion" in line
    assert "would not help" in line and "skip scores" not in line
    with pytest.raises(RewardError, match="task.on_reward_error=skip scores such completions as missing"):
        _call(chokes_on_a_digit, ["7", "1"])  # fails on the first only


def test_skip_records_why_each_completion_could_not_be_scored():
    from rewards_for_tests import wrong_signature
    errors = []
    n = 2
    rows = call_reward(wrong_signature, ["p"] * n, ["1", "2"], targets=["1"] * n, completion_ids=[[3, 1]] * n,
                       completion_tokens=[["x", "<eos>"]] * n, finished=[True] * n, on_error="skip", errors=errors)
    assert rows == [None, None] and len(errors) == 2 and all("raised TypeError" in m for m in errors)


@pytest.mark.parametrize("reward", ["wrong_signature", "always_nan"])
def test_a_reward_that_never_scores_stops_the_run_under_skip(reward, mlflow_uri, in_tmp, capsys):
    """Under skip a reward function that scores nothing would train on nothing, silently: the run stops
    after trainer.max_unscored_steps such iterations in a row, with one line and its last error, keeping
    what was logged; one iteration fewer than the limit and the run finishes."""
    exp = f"unscored-{reward}"
    base = [*FAST, f"task.reward._target_=rewards_for_tests.{reward}", "task.on_reward_error=skip",
            f"tracking.uri={mlflow_uri}", "trainer.max_steps=3"]
    with pytest.raises(SystemExit) as e:
        main(["train", *base, "trainer.max_unscored_steps=2", f"tracking.experiment={exp}"])
    err = capsys.readouterr().err.strip().splitlines()
    assert e.value.code == 1 and err[-1].startswith("rlexp: "), err
    assert "no completion could be scored in 2 iterations in a row (trainer.max_unscored_steps=2)" in err[-1]
    assert f"rewards_for_tests.{reward}" in err[-1]
    client = MlflowClient(mlflow_uri)
    run = client.search_runs([client.get_experiment_by_name(exp).experiment_id])[0]
    assert run.info.status == "FAILED"
    assert [m.step for m in client.get_metric_history(run.info.run_id, "train/reward_errors")] == [1]
    assert main(["train", *base, "trainer.max_unscored_steps=4", f"tracking.experiment={exp}-ok"]) == 0
