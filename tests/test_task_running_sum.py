"""task=running_sum: its chains and split, both rewards token by token, its validation, a run end to end."""
from __future__ import annotations

import re
import sys
from collections import Counter
from pathlib import Path

import pytest
import torch
from mlflow.tracking import MlflowClient

from fast_overrides import FAST
from rlexp.cli import main
from rlexp.config import ConfigError, validate
from rlexp.models import build_char_tokenizer
from rlexp.rollout.generate import _response_mask, score
from rlexp.tasks import RunningSumTask, step_credit, terminal
from rlexp.tasks.running_sum import running_sums
from rlexp.train import compose

#: FAST without its arithmetic-only task keys
RS_FAST = [o for o in FAST if not o.startswith("task.")] + ["task=running_sum", "task.num_eval=16"]


def test_prompts_are_chains_answered_by_their_running_sums():
    t = RunningSumTask(num_eval=50)
    chain = re.compile(r"^\d(\+\d){3,4}=$")
    for e in t.eval_examples + t.train_examples[:2000]:
        assert chain.match(e.prompt), e.prompt
        terms = [int(x) for x in e.prompt[:-1].split("+")]
        assert e.target == ",".join(str(s) for s in running_sums(terms))
    assert running_sums([3, 4, 8, 1]) == [7, 15, 16]
    assert RunningSumTask._example([3, 4, 8, 1]).prompt == "3+4+8+1=" and \
        RunningSumTask._example([3, 4, 8, 1]).target == "7,15,16"
    lengths = Counter(e.prompt.count("+") + 1 for e in t.train_examples + t.eval_examples)
    # equal shares of the 20 050 chains drawn, but there are only 10 000 chains of 4 terms: all of them
    assert lengths == {4: 10_000, 5: 10_050}
    # a length with fewer chains than its share gives them all, the others take the rest
    few = RunningSumTask(min_terms=3, max_terms=5, num_eval=50)
    assert Counter(e.prompt.count("+") + 1 for e in few.train_examples + few.eval_examples) == \
        {3: 1000, 4: 9525, 5: 9525}
    answer_tokens = [len(e.target) + 1 for e in t.train_examples]  # characters + EOS
    assert min(answer_tokens) == 6 and max(answer_tokens) == 12 == t.max_new_tokens - 4


def test_split_is_disjoint_seeded_and_small_spaces_are_enumerated():
    t = RunningSumTask(num_eval=50)
    assert len(t.eval_examples) == 50 and len(t.train_examples) == 20_000
    prompts = [e.prompt for e in t.train_examples + t.eval_examples]
    assert len(set(prompts)) == len(prompts)  # no chain twice, so held-out chains are never trained on
    assert RunningSumTask(num_eval=50).eval_examples == t.eval_examples
    assert RunningSumTask(num_eval=50, split_seed=9).eval_examples != t.eval_examples
    small = RunningSumTask(min_terms=2, max_terms=3, max_term=2, num_eval=5)
    every = {f"{a}+{b}=" for a in range(3) for b in range(3)} | \
        {f"{a}+{b}+{c}=" for a in range(3) for b in range(3) for c in range(3)}
    assert {e.prompt for e in small.train_examples + small.eval_examples} == every
    assert len(small.train_examples) == 36 - 5


def test_the_term_keys_change_the_chains():
    wide = RunningSumTask(min_terms=2, max_terms=2, max_term=50, num_eval=10, max_new_tokens=4)
    assert all(re.match(r"^\d+\+\d+=$", e.prompt) for e in wide.train_examples)
    assert max(int(x) for e in wide.train_examples for x in e.prompt[:-1].split("+")) == 50
    assert {e.target.count(",") for e in wide.train_examples} == {0}
    long = RunningSumTask(min_terms=7, max_terms=7, num_eval=10, max_new_tokens=24)
    assert {e.prompt.count("+") + 1 for e in long.train_examples} == {7}


def test_terminal_needs_the_whole_chain_and_eos():
    out = terminal(None, ["7,15,16", "7,15,16", "7,15", "7,15,16,", "7,14,16"], targets=["7,15,16"] * 5,
                   finished=[True, False, True, True, True])
    assert out == [1.0, 0.0, 0.0, 0.0, 0.0]


def _rows(completions: list[str | list[str]], finished: list[bool], target: str = "7,15,16") -> list[list[float]]:
    """step_credit on character tokens (a list: tokens as given), EOS appended where finished."""
    toks = [(list(c) if isinstance(c, str) else list(c)) + (["<eos>"] if done else [])
            for c, done in zip(completions, finished)]
    return step_credit(None, None, targets=[target] * len(toks), completion_tokens=toks, finished=finished)


def test_step_credit_hand_computed():
    q = 0.25  # 1 / (m + 1) with m = 3 running sums
    # tokens:     7   ,   1   5   ,   1   6   <eos>
    assert _rows(["7,15,16"], [True]) == [[q, 0, 0, q, 0, 0, q, q]]  # exact: sums to 1
    # the second sum wrong: only its own share is lost; the EOS still ends the answer after 3 fields
    assert _rows(["7,14,16"], [True]) == [[q, 0, 0, 0, 0, 0, q, q]]
    # a sum of the wrong width shifts no credit: fields are compared in their place, not by offset
    assert _rows(["7,5,16"], [True]) == [[q, 0, 0, 0, 0, q, q]]
    # cut by the token budget: the open last field is not credited (a digit could follow), no EOS credit
    assert _rows(["7,15,1"], [False]) == [[q, 0, 0, q, 0, 0]]
    assert _rows(["7,15,16"], [False]) == [[q, 0, 0, q, 0, 0, 0]]
    # stopping early: two correct sums, no EOS credit (2 fields, not 3)
    assert _rows(["7,15"], [True]) == [[q, 0, 0, q, 0]]
    # a trailing comma or an extra field: every sum credited, the EOS not
    assert _rows(["7,15,16,"], [True]) == [[q, 0, 0, q, 0, 0, q, 0, 0]]
    assert _rows(["7,15,16,17"], [True]) == [[q, 0, 0, q, 0, 0, q, 0, 0, 0, 0]]
    # a leading zero is a different text; an empty field in place of a sum is wrong, the EOS counts
    assert _rows(["07,15,16"], [True]) == [[0, 0, 0, 0, q, 0, 0, q, q]]
    assert _rows(["7,,16"], [True]) == [[q, 0, 0, 0, q, q]]
    assert _rows([""], [True]) == [[0.0]] and _rows([""], [False]) == [[]]
    # multi-character tokens (another tokenizer): the credit goes on the token holding the sum's last character
    assert _rows([["7,1", "5,", "16"]], [True]) == [[q, q, q, q]]
    assert _rows([["7,15,16"]], [True]) == [[3 * q, q]]
    # two terms: one running sum, 1/2 for it and 1/2 for the EOS
    assert _rows(["12"], [True], target="12") == [[0, 0.5, 0.5]]
    assert sum(_rows(["7,15,16"], [True])[0]) == pytest.approx(1.0)


def test_the_defaults_validate():
    validate(compose(["task=running_sum"]))
    validate(compose(["task=running_sum", "task.reward._target_=rlexp.tasks.running_sum.step_credit"]))


def test_step_credit_through_the_tokenizer_and_scorer():
    """The rewards land on the response tokens the trainer sees (the scorer's completion_tokens)."""
    task = RunningSumTask(num_eval=10, reward=step_credit)
    tok = build_char_tokenizer(task.alphabet)
    ex = [task._example([3, 4, 8, 1])] * 3
    ids = [tok(text, add_special_tokens=False)["input_ids"] for text in ("7,15,16", "7,14,16", "7,15,16,16")]
    width = max(map(len, ids)) + 1
    resp = torch.tensor([i + [1] + [0] * (width - len(i) - 1) for i in ids])
    mask, finished = _response_mask(resp, 1)
    token_rewards, scores, texts = score(task, tok, ex, resp, mask, finished)
    assert texts == ["7,15,16", "7,14,16", "7,15,16,16"]
    assert scores.tolist() == [1.0, 0.75, 0.75]
    assert token_rewards[0, :8].tolist() == [0.25, 0, 0, 0.25, 0, 0, 0.25, 0.25]


@pytest.mark.parametrize("override, message", [
    ("task.min_terms=1", r"^task\.min_terms=1 is out of range: must be >= 2$"),
    ("task.max_term=0", r"^task\.max_term=0 is out of range: must be >= 1$"),
    ("task.max_terms=3", r"^task: task\.max_terms=3 must be >= task\.min_terms=4$"),
    ("task.max_new_tokens=10", r"^task: task\.max_new_tokens=10 is too small: answers need up to 12 tokens"),
    ("task.num_eval=99999999", r"^task: task\.num_eval=99999999 leaves no training prompts: only 110000 chains"),
    ("+task.num_terms=5", r"^task\.num_terms: Key 'num_terms' not in 'RunningSumTaskConfig'"),
])
def test_bad_settings_are_one_line_naming_the_key(override, message):
    with pytest.raises(ConfigError, match=message) as e:
        validate(compose(["task=running_sum", override]))
    assert "\n" not in str(e.value)


def test_train_two_iterations_end_to_end(mlflow_uri, in_tmp):
    assert main(["train", *RS_FAST, f"tracking.uri={mlflow_uri}", "tracking.experiment=running_sum"]) == 0
    assert main(["train", *RS_FAST, "task.reward._target_=rlexp.tasks.running_sum.step_credit",
                 f"tracking.uri={mlflow_uri}", "tracking.experiment=running_sum_step"]) == 0
    client = MlflowClient(mlflow_uri)
    runs = {}
    for name in ("running_sum", "running_sum_step"):
        run = client.search_runs([client.get_experiment_by_name(name).experiment_id])[0]
        runs[name] = {m: [h.value for h in client.get_metric_history(run.info.run_id, m)]
                      for m in ("train/reward_mean", "eval/reward_mean", "eval/accuracy")}
        assert run.info.status == "FINISHED" and run.data.tags["task"] == "running_sum"
        assert run.data.params["task.min_terms"] == "4" and run.data.params["task.max_terms"] == "5"
        assert len(runs[name]["train/reward_mean"]) == 2 and len(runs[name]["eval/reward_mean"]) == 3
    # the sparse reward (the default) is the accuracy; the step credit is above it: partly right chains earn some
    sparse, step = runs["running_sum"], runs["running_sum_step"]
    assert sparse["eval/reward_mean"] == sparse["eval/accuracy"]
    assert all(r > a for r, a in zip(step["eval/reward_mean"], step["eval/accuracy"])), step
    # benchmarks/lambda_diagnostics.py (docs/sweeps.md's λ table) averages each diagnostic over a run's iterations
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
    from lambda_diagnostics import run_rows, table

    rows = run_rows(client, ["running_sum", "running_sum_step"])
    assert sorted(r["reward"] for r in rows) == ["step_credit", "terminal"]
    run = client.search_runs([client.get_experiment_by_name("running_sum_step").experiment_id])[0]
    mse = [h.value for h in client.get_metric_history(run.info.run_id, "train/adv_mse_vs_mc")]
    row = next(r for r in rows if r["reward"] == "step_credit")
    assert len(mse) == 2 and row["train/adv_mse_vs_mc"] == pytest.approx(sum(mse) / 2)
    assert row["eval_end"] == step["eval/reward_mean"][-1] and (row["gamma"], row["lam"]) == (1.0, 0.95)
    lines = table(rows).splitlines()
    assert len(lines) == 4 and lines[2].startswith("| running_sum (step_credit) | 1 | 0.95 | 1 |")


@pytest.mark.slow
def test_default_ppo_run_raises_eval_reward_by_0_08(in_tmp):
    """`rlexp train task=running_sum`: the end's eval/reward_mean (the terminal reward: exact chains) is at least
    0.08 above the warm start's (step 0): measured +0.120 (0.535 -> 0.655, seed 0) with the task's warm start
    (conf/task/warmstart/running_sum.yaml), +0.000 with the tiny model's weaker default one. Builds this task's
    warm start in the session's cache."""
    from rlexp.train import run

    module = run(compose(["task=running_sum", "tracking=none", "trainer.progress_bar=false"]))
    evals = [h["eval/reward_mean"] for h in module.history if "eval/reward_mean" in h]
    assert module.iteration + 1 == 150
    assert evals[-1] >= evals[0] + 0.08, f"eval/reward_mean {evals}"
