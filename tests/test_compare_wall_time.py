"""The report's reward-against-wall-time panel, on a real MLflow SQLite store: two configurations (off-policy
lag 0 and 2) × two seeds that log ``perf/total_seconds`` at different rates, and one store whose runs never
logged it (no panel)."""
from __future__ import annotations

import time

import pytest

from rlexp.compare import differing_keys, group_runs, load_runs, write_report
from rlexp.compare import plots

EVAL_STEPS = (0, 5, 10)
SECONDS_PER_STEP = {"0": 2.0, "2": 1.0}  # lag 2 is twice as fast per iteration here
SEED_SLOWDOWN = {0: 1.0, 1: 1.5}


def _reward(lag: str, seed: int, step: int) -> float:
    return 0.2 + 0.01 * step * (1 + int(lag)) + 0.001 * seed


def _store(root, *, seconds: bool) -> str:
    from mlflow import MlflowClient
    from mlflow.entities import Metric, Param

    uri = f"sqlite:///{root / 'mlflow.db'}"
    client = MlflowClient(uri)
    exp = client.create_experiment("rlexp", artifact_location=str(root / "artifacts"))
    t0 = int(time.time() * 1000) - 600_000
    parent = client.create_run(exp, start_time=t0, tags={"rlexp.role": "sweep", "rlexp.sweep_id": "sw-lag",
                                                         "rlexp.sweep_name": "off_policy_lag"})
    pid = parent.info.run_id
    for i, (lag, seed) in enumerate((lag, seed) for lag in SECONDS_PER_STEP for seed in SEED_SLOWDOWN):
        start = t0 + 1000 * (i + 1)
        run = client.create_run(exp, start_time=start, run_name=f"lag{lag}-s{seed}",
                                tags={"mlflow.parentRunId": pid, "rlexp.sweep_id": "sw-lag", "rlexp.role": "job",
                                      "rlexp.sweep_name": "off_policy_lag"})
        m = []
        for step in range(1, 11):  # perf/* logged after every iteration (steps 1..10)
            m.append(Metric("perf/total_tokens", 100.0 * step, start + step, step))
            if seconds and step != 5:  # step 5 missing: its evaluation takes the seconds logged at step 4
                m.append(Metric("perf/total_seconds", SECONDS_PER_STEP[lag] * SEED_SLOWDOWN[seed] * step,
                                start + step, step))
        m += [Metric("eval/reward_mean", _reward(lag, seed, s), start + s, s) for s in EVAL_STEPS]
        m.append(Metric("summary/final_eval_reward", _reward(lag, seed, 10), start + 10, 10))
        params = {"algorithm.name": "scalerl", "rollout.off_policy_lag": lag, "seed": str(seed)}
        client.log_batch(run.info.run_id, metrics=m, params=[Param(k, v) for k, v in params.items()])
        client.set_terminated(run.info.run_id, "FINISHED", end_time=start + 100)
    client.set_terminated(pid, "FINISHED")
    return uri


@pytest.fixture(scope="module")
def loaded(tmp_path_factory):
    runs, _ = load_runs(_store(tmp_path_factory.mktemp("wall"), seconds=True), sweep="latest")
    return runs, group_runs(runs)


def test_an_evaluation_is_placed_at_the_seconds_of_its_step_and_step_0_at_0(loaded):
    runs, _ = loaded
    run = next(r for r in runs if r.params["rollout.off_policy_lag"] == "0" and r.params["seed"] == "1")
    assert plots.wall_time_points(run) == [(0, 0.0, _reward("0", 1, 0)), (5, 3.0 * 4, _reward("0", 1, 5)),
                                           (10, 3.0 * 10, _reward("0", 1, 10))]


def test_the_panel_draws_per_configuration_the_mean_over_seeds_at_their_mean_seconds(loaded):
    runs, groups = loaded
    differing = differing_keys(groups)
    assert differing == ["rollout.off_policy_lag"]
    fig = plots.wall_time_curves(groups, differing)
    ax = fig.axes[0]
    assert ax.get_xlabel() == "wall time: training seconds (perf/total_seconds)"
    lines = {line.get_label(): line for line in ax.get_lines()}
    assert set(lines) == {f"{g.label(differing)} (n=2)" for g in groups}
    for g in groups:
        lag = g.values["rollout.off_policy_lag"]
        line = lines[f"{g.label(differing)} (n=2)"]
        per_step = SECONDS_PER_STEP[lag] * 1.25  # the mean of the two seeds' rates
        assert list(line.get_xdata()) == pytest.approx([0.0, per_step * 4, per_step * 10])
        assert list(line.get_ydata()) == pytest.approx([(_reward(lag, 0, s) + _reward(lag, 1, s)) / 2
                                                        for s in EVAL_STEPS])


def test_the_report_shows_the_panel_when_seconds_are_logged_and_not_otherwise(loaded, tmp_path_factory):
    runs, groups = loaded
    out = tmp_path_factory.mktemp("report")
    html = write_report(runs, groups, out, metric="summary/final_eval_reward").read_text()
    assert (out / "eval_reward_wall_time.png").stat().st_size > 1000
    assert 'alt="eval_reward_wall_time.png"' in html and "Reward against wall time" in html
    assert html.index('alt="eval_reward.png"') < html.index('alt="eval_reward_wall_time.png"')

    bare, _ = load_runs(_store(tmp_path_factory.mktemp("bare"), seconds=False), sweep="latest")
    out = tmp_path_factory.mktemp("report_bare")
    html = write_report(bare, group_runs(bare), out, metric="summary/final_eval_reward").read_text()
    assert plots.wall_time_curves(group_runs(bare), ["rollout.off_policy_lag"]) is None
    assert not (out / "eval_reward_wall_time.png").exists() and "Reward against wall time" not in html
    assert 'alt="eval_reward.png"' in html
