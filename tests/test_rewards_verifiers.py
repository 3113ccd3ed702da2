"""The verifiers of rlexp.tasks.rewards: real math-verify comparisons, numbers, regexes, the think/answer
format, and one `rlexp train` run scored by numeric_match."""
from __future__ import annotations

import builtins
import threading

import pytest
from mlflow.tracking import MlflowClient

from fast_overrides import FAST
from rlexp.cli import main
from rlexp.tasks import rewards
from rlexp.tasks.base import RewardError, call_reward
from rlexp.tasks.rewards import format_reward, last_number, math_answer, numeric_match, regex_match


def _score(fn, completions, targets, finished=None, **kw):
    n = len(completions)
    return fn(["p"] * n, completions, targets=targets, completion_ids=[[1, 2]] * n,
              completion_tokens=[["x", "<eos>"]] * n, finished=[True] * n if finished is None else finished, **kw)


# ---- math_answer (real math-verify) -------------------------------------------------------------------

def test_math_answer_compares_symbolically_and_extracts_boxed():
    completions = [r"\frac{1}{2}", r"The answer is $\boxed{42}$.", r"so \boxed{41}", "I have no idea",
                   "0.5", r"$(x+1)^2$"]
    targets = ["0.5", "42", "42", "42", r"\frac{1}{2}", "x^2+2x+1"]
    assert _score(math_answer, completions, targets) == [1.0, 1.0, 0.0, 0.0, 1.0, 1.0]


def test_math_answer_scores_an_unparsable_or_unfinished_completion_0():
    assert _score(math_answer, ["", "))((", r"\boxed{42"], ["42", "42", "42"]) == [0.0, 0.0, 0.0]
    assert _score(math_answer, [r"\boxed{42}"], ["42"], finished=[False]) == [0.0]
    assert _score(math_answer, [r"\boxed{42}"], ["42"], finished=[False], require_finished=False) == [1.0]


def test_math_answer_works_outside_the_main_thread():
    """math-verify's signal.alarm timeout raises in a worker thread unless it is turned off there."""
    got = []
    worker = threading.Thread(target=lambda: got.append(_score(math_answer, [r"\boxed{\frac{2}{4}}"], ["0.5"])))
    worker.start()
    worker.join()
    assert got == [[1.0]]


def test_math_answer_without_math_verify_says_how_to_install_it(monkeypatch):
    real_import = builtins.__import__

    def no_math_verify(name, *args, **kwargs):
        if name == "math_verify" or name.startswith("math_verify."):
            raise ImportError(f"No module named {name!r}")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_math_verify)
    with pytest.raises(ImportError, match=r"^rlexp.tasks.rewards.math_answer needs the math-verify package: "
                                          r"pip install 'rlexp\[math\]'[^\n]*$"):
        _score(math_answer, ["1"], ["1"])


# ---- numeric_match ------------------------------------------------------------------------------------

@pytest.mark.parametrize("text,value", [
    ("42", 42.0), ("-3", -3.0), ("x = -2.5.", -2.5), ("10-3", 3.0), (".5", 0.5), ("1e-6", 1e-6),
    ("2.5E3", 2500.0), ("first 3 then 7", 7.0), ("1,234", 1234.0), ("answer: 1,234,567.89", 1234567.89),
    ("1,2345", 2345.0), ("7,15,16", 16.0), ("no number", None), ("(-5)", -5.0),
])
def test_last_number(text, value):
    assert last_number(text) == value


def test_thousands_separators_can_be_turned_off():
    assert last_number("15,116") == 15116.0 and last_number("15,116", thousands=False) == 116.0
    assert _score(numeric_match, ["15,116"], ["116"]) == [0.0]
    assert _score(numeric_match, ["15,116"], ["116"], thousands=False) == [1.0]


def test_numeric_match_last_number_wins_and_tolerance_applies():
    completions = ["3 + 4 = 7", "7 or maybe 8", "-12", "12", "0.3333", "I give up", "1,000"]
    targets = ["7", "7", "-12", "-12", "0.33333333", "7", "1000"]
    assert _score(numeric_match, completions, targets) == [1.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0]
    assert _score(numeric_match, ["0.3333"], ["0.33333333"], tolerance=1e-3) == [1.0]
    # relative beyond 1 in size: 1e6 ± 0.5 is within 1e-6 · 1e6 = 1
    assert _score(numeric_match, ["1000000.5", "1000002"], ["1000000", "1000000"]) == [1.0, 0.0]


def test_numeric_match_needs_eos_unless_told_otherwise():
    assert _score(numeric_match, ["7", "7"], ["7", "7"], finished=[True, False]) == [1.0, 0.0]
    assert _score(numeric_match, ["7"], ["7"], finished=[False], require_finished=False) == [1.0]


def test_a_target_without_a_number_is_named():
    with pytest.raises(ValueError, match=r"^numeric_match: the target 'seven' holds no number$"):
        _score(numeric_match, ["7"], ["seven"])


# ---- regex_match and format ---------------------------------------------------------------------------

def test_regex_match_substitutes_the_escaped_target():
    completions = ["so the answer is 1+1.", "so the answer is 11.", "answer is 1+1", "ANSWER IS 1+1"]
    targets = ["1+1"] * 4
    assert _score(regex_match, completions, targets, pattern=r"answer is {target}") == [1.0, 0.0, 1.0, 0.0]
    assert _score(regex_match, completions, targets, pattern=r"answer is {target}", full=True) == [0.0, 0.0, 1.0, 0.0]
    assert _score(regex_match, completions, targets, pattern=r"(?i)^answer is {target}$") == [0.0, 0.0, 1.0, 1.0]
    # braces that are not {target} stay regex syntax
    assert _score(regex_match, ["code 123", "code 12"], ["", ""], pattern=r"\d{3}") == [1.0, 0.0]


def test_an_invalid_pattern_is_one_line_naming_the_key():
    with pytest.raises(ValueError, match=r"^task.reward.pattern='answer \(\{target\}' is not a valid regular "
                                         r"expression: [^\n]*$"):
        _score(regex_match, ["x"], ["1"], pattern="answer ({target}")
    with pytest.raises(ValueError, match=r"^task.reward.pattern=None: a regular expression is required"):
        _score(regex_match, ["x"], ["1"])


def test_an_invalid_pattern_stops_the_reward_call_with_the_key_named():
    """Through rlexp's reward caller, as in a run: one line, the key named, not blamed on a completion."""
    from functools import partial
    with pytest.raises(RewardError, match=r"^reward function rlexp.tasks.rewards.regex_match raised ValueError: "
                                          r"task.reward.pattern='\[' is not a valid regular expression[^\n]*on every "
                                          r"completion[^\n]*$"):
        call_reward(partial(regex_match, pattern="["), ["p", "q"], ["a", "b"], targets=["1", "2"],
                    completion_ids=[[1], [1]], completion_tokens=[["<eos>"], ["<eos>"]], finished=[True, True])


def test_format_checks_the_think_answer_structure():
    completions = ["<think>3+4\nis 7</think>\n<answer>7</answer>", "  <think></think><answer>7</answer>\n",
                   "<answer>7</answer>", "<think>x</think><answer>7</answer> and more", "7",
                   "<think>x</think><answer>7"]
    assert _score(format_reward, completions, ["7"] * 6) == [1.0, 1.0, 0.0, 0.0, 0.0, 0.0]
    assert _score(format_reward, completions, ["7"] * 6, full=False) == [1.0, 1.0, 0.0, 1.0, 0.0, 0.0]
    assert rewards.format is format_reward


# ---- end to end ---------------------------------------------------------------------------------------

@pytest.mark.slow
def test_train_with_numeric_match(mlflow_uri, in_tmp):
    assert main(["train", *FAST, "task.reward._target_=rlexp.tasks.rewards.numeric_match",
                 "+task.reward.tolerance=0.5", f"tracking.uri={mlflow_uri}", "tracking.experiment=verifier_numeric"]) == 0
    client = MlflowClient(mlflow_uri)
    run = client.search_runs([client.get_experiment_by_name("verifier_numeric").experiment_id])[0]
    train = [m.value for m in client.get_metric_history(run.info.run_id, "train/reward_mean")]
    evals = [m.value for m in client.get_metric_history(run.info.run_id, "eval/reward_mean")]
    accuracy = [m.value for m in client.get_metric_history(run.info.run_id, "eval/accuracy")]
    assert run.info.status == "FINISHED" and len(train) == 2 and len(evals) == len(accuracy) == 3
    assert all(0.0 <= r <= 1.0 for r in train + evals)
    # an exact answer is numerically equal: the numeric score is never below the exact-match accuracy
    assert all(r >= a - 1e-9 for r, a in zip(evals, accuracy)) and max(evals) > 0
    assert run.data.params["task.reward._target_"] == "rlexp.tasks.rewards.numeric_match"
    assert run.data.params["task.reward.tolerance"] == "0.5"
