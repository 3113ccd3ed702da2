"""task=reasoning_gym: real reasoning-gym generators, disjoint seeded splits, the library's own score as the
reward, the start-up errors, and a run through `rlexp train`."""
from __future__ import annotations

import sys

import pytest

pytest.importorskip("reasoning_gym", reason="pip install -e '.[reasoning]'")

from fast_overrides import FAST  # noqa: E402
from reasoning_gym import create_dataset  # noqa: E402

from rlexp.tasks import call_reward  # noqa: E402
from rlexp.tasks.reasoning_gym import ReasoningGymTask, eval_seed, score_answer  # noqa: E402

SMALL = {"min_terms": 2, "max_terms": 2, "min_digits": 1, "max_digits": 1}  # chain_sum: 200 distinct questions


@pytest.mark.parametrize("dataset, config", [("basic_arithmetic", {"max_terms": 3, "max_digits": 2}),
                                             ("chain_sum", {"max_terms": 3}),
                                             ("countdown", {"max_numbers": 4})])
def test_real_generators_give_prompts_targets_and_their_own_score(dataset, config):
    task = ReasoningGymTask(dataset=dataset, config=config, size=12, num_eval=6)
    assert len(task.train_examples) == 12 and len(task.eval_examples) == 6
    ref = create_dataset(dataset, seed=task.seed, size=12, **config)
    assert [e.prompt for e in task.train_examples[:3]] == [ref[i]["question"] for i in range(3)]
    assert [e.target for e in task.train_examples[:3]] == [ref[i]["answer"] for i in range(3)]
    for e in task.eval_examples:  # each generator's own answer scores 1 under its own score_answer
        assert task.score(e.prompt, e.target) == 1.0 and task.is_correct(e, e.target, True)
        assert task.entries[e.prompt]["metadata"]["source_dataset"] == dataset


def test_splits_are_disjoint_by_skipping_eval_questions_in_the_training_stream():
    task = ReasoningGymTask(dataset="chain_sum", config=SMALL, size=300, num_eval=50)
    evals, train = [e.prompt for e in task.eval_examples], [e.prompt for e in task.train_examples]
    assert len(evals) == len(set(evals)) == 50 and len(train) == 300
    assert not set(evals) & set(train)
    assert len(set(train)) < len(train)  # repeats are kept: the pool samples the generator's distribution
    stream = create_dataset("chain_sum", seed=task.seed, size=400, **SMALL)
    raw = [stream[i]["question"] for i in range(400)]
    assert set(raw) & set(evals)  # without the skip, the generator would have trained on eval questions
    assert train == [q for q in raw if q not in set(evals)][:300]
    # the evaluation split does not depend on `size`
    assert [e.prompt for e in ReasoningGymTask(dataset="chain_sum", config=SMALL, size=40, num_eval=50)
            .eval_examples] == evals


def test_a_seed_fixes_both_splits():
    a = ReasoningGymTask(config={"max_terms": 3}, seed=7, size=50, num_eval=20)
    b = ReasoningGymTask(config={"max_terms": 3}, seed=7, size=50, num_eval=20)
    c = ReasoningGymTask(config={"max_terms": 3}, seed=8, size=50, num_eval=20)
    assert a.train_examples == b.train_examples and a.eval_examples == b.eval_examples
    assert a.train_examples != c.train_examples and a.eval_examples != c.eval_examples
    assert eval_seed(7) == eval_seed(7) != eval_seed(8) and abs(eval_seed(7) - 7) > 10_000


def test_config_reaches_the_generator():
    two = ReasoningGymTask(config={"min_terms": 2, "max_terms": 2}, size=30, num_eval=10)
    four = ReasoningGymTask(config={"min_terms": 4, "max_terms": 4}, size=30, num_eval=10)
    assert {two.entries[e.prompt]["metadata"]["num_terms"] for e in two.train_examples} == {2}
    assert {four.entries[e.prompt]["metadata"]["num_terms"] for e in four.train_examples} == {4}


def test_the_library_score_is_the_reward_and_accuracy_is_a_score_of_one():
    task = ReasoningGymTask(config={"max_terms": 3, "max_digits": 2}, size=20, num_eval=5)
    e = task.eval_examples[0]
    wrong = str(int(e.target) + 1)
    completions = [e.target, f"<answer>{e.target}</answer>", f"So <answer>{wrong}</answer> no, <answer> {e.target} "
                   f"</answer>", f"<answer>{wrong}</answer>", "no idea", f"The answer is {e.target}"]
    rows = call_reward(task.reward, [e.prompt] * 6, completions, targets=[e.target] * 6,
                       completion_ids=[[1]] * 6, completion_tokens=[["x"]] * 6, finished=[True] * 6)
    scores = [r[-1] for r in rows]
    assert task.reward is score_answer
    assert scores[:5] == [1.0, 1.0, 1.0, 0.0, 0.0]
    assert 0.0 < scores[5] < 1.0  # chain_sum's own partial credit for an answer inside text
    assert [task.is_correct(e, c, False) for c in completions] == [True, True, True, False, False, False]


def test_system_prompt_goes_before_every_question_or_in_the_system_turn():
    from reasoning_gym.utils import SYSTEM_PROMPTS
    plain = ReasoningGymTask(size=10, num_eval=5)
    mine = ReasoningGymTask(size=10, num_eval=5, system_prompt="Answer in <answer> tags.")
    named = ReasoningGymTask(size=10, num_eval=5, system_prompt="direct")
    chat = ReasoningGymTask(size=10, num_eval=5, system_prompt="direct", chat_template=True)
    assert plain.system_turn is mine.system_turn is None and plain.chat_template is False
    assert chat.system_turn == SYSTEM_PROMPTS["direct"] and chat.chat_template is True
    assert chat.extra_text() == [SYSTEM_PROMPTS["direct"]] and mine.extra_text() == []
    for a, b, c, d in zip(plain.eval_examples, mine.eval_examples, named.eval_examples, chat.eval_examples):
        assert b.prompt == f"Answer in <answer> tags.\n\n{a.prompt}" and b.target == a.target
        assert c.prompt == f"{SYSTEM_PROMPTS['direct']}\n\n{a.prompt}"
        assert d == a  # the system prompt is a turn of the chat template
        assert mine.score(b.prompt, f"<answer>{a.target}</answer>") == 1.0


def test_a_prompt_no_task_generated_is_a_named_error():
    with pytest.raises(KeyError, match="not generated by a task=reasoning_gym"):
        score_answer(["What is the airspeed of an unladen swallow?"], ["42"], targets=["42"])


def test_the_reward_is_plug_replaceable():
    from hydra.utils import instantiate

    from rlexp.tasks.rewards import numeric_match
    from rlexp.train import compose
    cfg = compose(["task=reasoning_gym", "task.size=10", "task.num_eval=5",
                   "task.reward._target_=rlexp.tasks.rewards.numeric_match"])
    task = instantiate(cfg.task)
    assert task.reward.func is numeric_match
    e = task.eval_examples[0]
    assert task.reward([e.prompt], [f"it is {e.target}"], targets=[e.target], finished=[True]) == [1.0]


def test_the_library_score_is_a_weighted_reward_component():
    from rlexp.tasks.combine import instantiate_task
    from rlexp.train import compose
    cfg = compose(["task=reasoning_gym", "task.size=10", "task.num_eval=5",
                   "task.rewards=[{_target_:rlexp.tasks.reasoning_gym.score_answer,weight:2.0},"
                   "{_target_:rlexp.tasks.rewards.format,weight:0.5}]"])
    task = instantiate_task(cfg.task)
    e = task.eval_examples[0]
    rows = call_reward(task.reward, [e.prompt] * 2, [e.target, "no idea"], targets=[e.target] * 2,
                       completion_ids=[[1, 2]] * 2, completion_tokens=[["a", "b"]] * 2, finished=[True] * 2)
    assert rows == [[0.0, 2.0], [0.0, 0.0]]


def _refusal(overrides, capsys):
    from rlexp.cli import main
    with pytest.raises(SystemExit) as e:
        main(["train", "tracking=none", "task=reasoning_gym", *overrides])
    lines = capsys.readouterr().err.strip().splitlines()
    return e.value.code, lines


@pytest.mark.parametrize("overrides, fragment", [
    (["task.dataset=chain_summ"], "task.dataset='chain_summ' is not a reasoning-gym generator: did you mean "
                                  "chain_sum"),
    (["+task.config.max_term=3"], "task.config.max_term: chain_sum's config (ChainSumConfig) has no such key; its "
                                  "keys: min_terms, max_terms"),
    (["+task.config.min_terms=5", "+task.config.max_terms=2"], "task.config.max_terms=2: chain_sum refuses its "
                                                               "config: max_terms must be >= min_terms"),
    (["+task.config.max_terms=three"], "task.config.max_terms='three': expected an integer"),
    (["+task.config.seed=3"], "task.config.seed: set task.seed instead"),
    (["+task.config.max_terms=2", "+task.config.max_digits=1", "task.num_eval=300"],
     "task.num_eval=300: chain_sum with task.config="),
])
def test_bad_generator_settings_stop_the_run_with_one_line(overrides, fragment, in_tmp, capsys):
    code, lines = _refusal(overrides, capsys)
    assert code == 2 and len(lines) == 1, lines
    assert lines[0].startswith("rlexp: config error: task: ") and fragment in lines[0], lines[0]


def test_a_missing_library_is_one_line_with_the_install_command(in_tmp, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "reasoning_gym", None)  # `import reasoning_gym` now raises ImportError
    code, lines = _refusal([], capsys)
    assert code == 2 and len(lines) == 1, lines
    assert "task=reasoning_gym needs the reasoning-gym library" in lines[0]
    assert "pip install -e '.[reasoning]'" in lines[0]


def test_rlexp_train_runs_on_a_reasoning_gym_task_with_the_embedded_model(in_tmp, mlflow_uri):
    """model=tiny, its character alphabet built from the generated questions, warm start included."""
    from mlflow.tracking import MlflowClient

    from rlexp.cli import main
    fast = [o for o in FAST if not o.startswith("task.")]
    assert main(["train", *fast, "task=reasoning_gym", "task.size=64", "task.num_eval=16", "task.max_new_tokens=6",
                 "+task.config.max_terms=2", "+task.config.max_digits=1", "model.warmstart.batch_size=8",
                 f"tracking.uri={mlflow_uri}", "tracking.experiment=reasoning_gym"]) == 0
    client = MlflowClient(mlflow_uri)
    run = client.search_runs([client.get_experiment_by_name("reasoning_gym").experiment_id])[0]
    assert run.info.status == "FINISHED" and run.data.tags["warmstart.built"] == "True"
    assert run.data.params["task.dataset"] == "chain_sum" and run.data.params["task.config.max_terms"] == "2"
    assert [m.step for m in client.get_metric_history(run.info.run_id, "eval/reward_mean")] == [0, 1, 2]
    assert len(client.get_metric_history(run.info.run_id, "train/reward_mean")) == 2
