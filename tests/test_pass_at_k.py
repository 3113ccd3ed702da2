"""pass@k evaluation (`task.eval`): the unbiased estimator against hand-computed values and an enumeration of
subsets, the sampling behind it with a real tiny model (how many prompts and samples, the rollout's temperature,
its own seed), and `rlexp train` runs with it on and off (the training is the same) and refused settings."""
from __future__ import annotations

import itertools
import math
from fractions import Fraction

import pytest
import torch
from mlflow.tracking import MlflowClient
from omegaconf import OmegaConf

from fast_overrides import FAST
from rlexp.cli import main
from rlexp.core import mean_pass_at_k, pass_at_k
from rlexp.models.tiny import build_tiny_model
from rlexp.models.tokenizer import build_char_tokenizer
from rlexp.modules.record import RunRecorder
from rlexp.rollout import evaluate
from rlexp.tasks.arithmetic import ArithmeticTask


# ---- the estimator ------------------------------------------------------------------------------------

@pytest.mark.parametrize("n, c, k, expected", [
    (4, 1, 1, 0.25),            # c / n
    (4, 0, 3, 0.0),             # nothing correct
    (4, 4, 2, 1.0),             # everything correct
    (4, 2, 2, 1 - 1 / 6),       # 1 - C(2,2)/C(4,2)
    (4, 2, 3, 1.0),             # n - c < k: every draw of 3 holds a correct one
    (10, 3, 2, 1 - 21 / 45),    # 1 - C(7,2)/C(10,2)
    (5, 1, 5, 1.0),
    (8, 1, 4, 0.5),             # 1 - C(7,4)/C(8,4) = 1 - 35/70
])
def test_pass_at_k_hand_computed(n, c, k, expected):
    assert pass_at_k(n, c, k) == pytest.approx(expected, abs=1e-12)


def test_pass_at_k_is_the_share_of_k_subsets_holding_a_correct_completion():
    """Brute force: the fraction of the C(n, k) ways to pick k of the n samples that contain a correct one."""
    for n in range(1, 8):
        for c in range(n + 1):
            samples = [True] * c + [False] * (n - c)
            for k in range(1, n + 1):
                subsets = list(itertools.combinations(samples, k))
                share = sum(any(s) for s in subsets) / len(subsets)
                assert pass_at_k(n, c, k) == pytest.approx(share, abs=1e-12), (n, c, k)


def test_pass_at_k_is_stable_where_binomials_overflow_a_float():
    for n, c, k in [(2000, 10, 1000), (1000, 1, 1), (1500, 700, 64), (3000, 2990, 5)]:
        exact = 1 - Fraction(math.comb(n - c, k), math.comb(n, k))
        assert pass_at_k(n, c, k) == pytest.approx(float(exact), rel=1e-9, abs=1e-12)
    with pytest.raises(OverflowError):  # the naive ratio in floats fails where the product does not
        float(math.comb(2000, 1000))


def test_pass_at_k_refuses_impossible_counts_and_mean_averages_over_prompts():
    with pytest.raises(ValueError, match="k=5 must be in"):
        pass_at_k(4, 1, 5)
    with pytest.raises(ValueError, match="c=5 correct completions"):
        pass_at_k(4, 5, 1)
    assert mean_pass_at_k([0, 1, 4], 4, [1, 2]) == pytest.approx({1: 5 / 12, 2: (0 + 0.5 + 1) / 3})
    assert all(math.isnan(v) for v in mean_pass_at_k([], 4, [1]).values())


# ---- the sampling, with a real tiny model ---------------------------------------------------------------

class FirstDigitEven(ArithmeticTask):
    """Correct = the completion starts with an even digit: a random model gets a share of them right."""

    def is_correct(self, example, completion, finished):
        return completion[:1] in "02468" and completion[:1] != ""


class Recorder(RunRecorder):
    """The pass@k evaluation of the run contract on a plain object (one worker, CPU)."""
    device = torch.device("cpu")

    def __init__(self, task, temperature=1.0, seed=0):
        self.task, self.seed, self.max_new_tokens = task, seed, 4
        self.tokenizer = build_char_tokenizer(ArithmeticTask.alphabet)
        self.policy_model = build_tiny_model(self.tokenizer, hidden_size=32, intermediate_size=64, num_layers=1,
                                             num_heads=2, seed=0).eval()
        g = torch.Generator().manual_seed(2)  # large random weights: varied completions (the init's are all '=')
        with torch.no_grad():
            for p in self.policy_model.parameters():
                p.copy_(torch.randn(p.shape, generator=g) * 0.5)
        self.rollout_cfg = OmegaConf.create({"temperature": temperature, "top_p": 1.0})


def recording_task(calls: list, cls=FirstDigitEven, **eval_cfg):
    def reward(prompts, completions, *, targets, finished, **kw):
        calls.extend(zip(prompts, completions))
        return [0.0] * len(completions)
    return cls(max_operand=9, num_eval=10, reward=reward, eval=eval_cfg)


def test_pass_samples_and_pass_prompts_set_what_is_sampled_and_the_estimate_follows_the_counts():
    calls = []
    task = recording_task(calls, pass_k=[1, 2, 3], pass_samples=5, pass_prompts=4)
    out = Recorder(task).pass_at_k_metrics(step=0)
    prompts = [e.prompt for e in task.eval_examples[:4]]
    assert [p for p, _ in calls] == [p for p in prompts for _ in range(5)]  # first 4 prompts, 5 samples each
    counts = [sum(task.is_correct(None, text, True) for _, text in calls[i * 5:(i + 1) * 5]) for i in range(4)]
    assert 0 < sum(counts) < 20  # the estimate below is not trivially 0 or 1
    for k in (1, 2, 3):
        expected = sum(1 - math.comb(5 - c, k) / math.comb(5, k) for c in counts) / 4
        assert out[f"eval/pass_at_{k}"] == pytest.approx(expected, abs=1e-12)
    assert out["eval/pass_at_1"] == pytest.approx(sum(counts) / 20)  # pass@1: the sampled accuracy
    assert out["eval/pass_at_1"] <= out["eval/pass_at_2"] <= out["eval/pass_at_3"]
    assert out["eval/sampled_reward_mean"] == 0.0

    calls.clear()  # the defaults: n = the largest k, every held-out prompt
    task = recording_task(calls, pass_k=[2, 1])
    assert Recorder(task).pass_at_k_metrics(step=0).keys() == {"eval/pass_at_1", "eval/pass_at_2",
                                                               "eval/sampled_reward_mean"}
    assert (task.pass_k, task.pass_samples, task.pass_prompts) == ([1, 2], 2, None)
    assert [p for p, _ in calls] == [e.prompt for e in task.eval_examples for _ in range(2)]
    assert Recorder(recording_task([])).pass_at_k_metrics(step=0) == {}  # pass_k empty: no sampling


def test_sampling_is_seeded_by_run_seed_and_step_and_leaves_the_global_rng_alone():
    calls = []
    rec = Recorder(recording_task(calls, pass_k=[1, 4]))
    torch.manual_seed(123)
    state = torch.get_rng_state()
    first = rec.pass_at_k_metrics(step=25)
    assert torch.equal(torch.get_rng_state(), state)  # the training streams continue as if it had not run
    drawn, calls[:] = list(calls), []
    torch.manual_seed(7)  # whatever the global state, the same (seed, step) draws the same completions
    assert rec.pass_at_k_metrics(step=25) == first and calls == drawn
    calls.clear()
    rec.pass_at_k_metrics(step=50)
    other_step, calls[:] = list(calls), []
    rec.seed = 1
    rec.pass_at_k_metrics(step=25)
    assert other_step != drawn and calls != drawn


def test_it_samples_at_the_rollout_temperature():
    """Near T=0 every sample is the greedy completion; at T=3 they spread out."""
    calls = []
    rec = Recorder(recording_task(calls, cls=ArithmeticTask, pass_k=[1], pass_samples=3), temperature=1e-4)
    rec.pass_at_k_metrics(step=0)
    cold, calls[:] = [text for _, text in calls], []
    greedy = [s["completion"] for s in evaluate(rec.policy_model, rec.tokenizer, rec.task, rec.task.eval_examples,
                                                max_new_tokens=4, num_samples=10).samples]
    assert len(set(greedy)) > 1 and cold == [text for text in greedy for _ in range(3)]
    calls.clear()
    rec.rollout_cfg = OmegaConf.create({"temperature": 3.0, "top_p": 1.0})
    rec.pass_at_k_metrics(step=0)
    assert [text for _, text in calls] != cold


# ---- rlexp train ----------------------------------------------------------------------------------------

#: operands up to 19 and a longer warm start: a policy that gets some answers right, so pass@k is not all zeros
EASY = ["task.max_operand=19", "model.warmstart.max_steps=150"]


def _histories(client, run_id, keys):
    return {k: [(m.step, m.value) for m in client.get_metric_history(run_id, k)] for k in keys}


def test_train_logs_pass_at_k_at_every_eval_and_trains_exactly_as_without_it(mlflow_uri, in_tmp):
    runs = {}
    for name, extra in [("passk_on", ["task.eval.pass_k=[1,4]", "task.eval.pass_samples=4"]), ("passk_off", [])]:
        assert main(["train", *FAST, *EASY, *extra, f"tracking.uri={mlflow_uri}", f"tracking.experiment={name}"]) == 0
        client = MlflowClient(mlflow_uri)
        runs[name] = client.search_runs([client.get_experiment_by_name(name).experiment_id])[0]
    on, off = runs["passk_on"], runs["passk_off"]
    h = _histories(client, on.info.run_id, ["eval/pass_at_1", "eval/pass_at_4", "eval/sampled_reward_mean"])
    assert [s for s, _ in h["eval/pass_at_1"]] == [s for s, _ in h["eval/pass_at_4"]] == [0, 1, 2]
    p1, p4 = [v for _, v in h["eval/pass_at_1"]], [v for _, v in h["eval/pass_at_4"]]
    assert all(0.0 <= a <= b <= 1.0 for a, b in zip(p1, p4)) and any(a < b for a, b in zip(p1, p4)) and max(p1) > 0
    # exact_match scores 1 exactly where the task judges a completion correct: pass@1 = the sampled accuracy
    assert p1 == pytest.approx([v for _, v in h["eval/sampled_reward_mean"]], abs=1e-9)
    assert on.data.params["task.eval.pass_k"] == "[1, 4]"
    assert not any(k.startswith(("eval/pass_at", "eval/sampled")) for k in off.data.metrics)
    same = sorted(k for k in off.data.metrics if not k.startswith(("perf/", "summary/wall")))
    assert len([k for k in same if k.startswith("train/")]) > 20
    assert _histories(client, on.info.run_id, same) == _histories(client, off.info.run_id, same)


@pytest.mark.parametrize("overrides, message", [
    (["task.eval.pass_k=[1,4]", "task.eval.pass_samples=2"],
     "task: task.eval.pass_samples=2 must be >= the largest task.eval.pass_k (4)"),
    (["task.eval.pass_k=[0,4]"], "task.eval.pass_k[0]=0 is out of range: must be >= 1"),
    (["task.eval.pass_k=[1]", "task.eval.pass_prompts=0"], "task.eval.pass_prompts=0 is out of range: must be >= 1"),
    (["task.eval.pass_k=four"], "task.eval.pass_k"),
])
def test_bad_pass_at_k_settings_are_refused_with_one_line(overrides, message, in_tmp, capsys):
    with pytest.raises(SystemExit) as e:
        main(["train", *FAST, "tracking=none", *overrides])
    lines = capsys.readouterr().err.strip().splitlines()
    assert e.value.code == 2 and message in lines[-1], lines
