"""``rlexp compare`` on param values as MLflow keeps them: strings, spelled as they were logged.

A real MLflow SQLite store holds, in experiment ``values``, runs whose params name one value in
several spellings (``lam=1``, ``1.0``, ``1.00``, ``1e0``; ``True``/``true``) next to strings that only
look alike (``v1``, ``v1.0``).
"""
from __future__ import annotations

import time

import pytest

from rlexp.compare import canonical, differing_keys, group_runs, load_runs, main, summarize, unify_values
from rlexp.compare import plots, stats

METRIC = "summary/final_eval_reward"
# (gamma, lam, lora, task, seed, final reward): the first four are one configuration spelled four ways
RUNS = [("0.9", "1", "True", "arith", 0, 0.50), ("0.9", "1.0", "true", "arith", 1, 0.60),
        ("0.90", "1.00", "True", "arith", 2, 0.70), ("9e-1", "1e0", "true", "arith", 3, 0.80),
        ("1", "0.95", "False", "v1", 0, 0.30), ("1.0", "0.950", "false", "v1.0", 1, 0.40)]


def _store(root) -> str:
    from mlflow import MlflowClient
    from mlflow.entities import Metric, Param

    uri = f"sqlite:///{root / 'mlflow.db'}"
    client = MlflowClient(uri)
    exp = client.create_experiment("values", artifact_location=str(root / "artifacts"))
    t0 = int(time.time() * 1000) - 60_000
    for i, (gamma, lam, lora, task, seed, final) in enumerate(RUNS):
        run = client.create_run(exp, start_time=t0 + 100 * i, run_name=f"run{i}")
        params = {"algorithm.gamma": gamma, "algorithm.lam": lam, "model.lora.enabled": lora, "task.name": task,
                  "seed": str(seed)}
        client.log_batch(run.info.run_id, params=[Param(k, v) for k, v in params.items()],
                         metrics=[Metric(METRIC, final, t0 + 100 * i, 10)])
        client.set_terminated(run.info.run_id, "FINISHED")
    return uri


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return _store(tmp_path_factory.mktemp("compare_values"))


def test_canonical_merges_spellings_of_one_number_or_boolean_only():
    assert len({canonical(v) for v in ("1", "1.0", "1.00", "1e0", "+1", "10e-1")}) == 1
    assert canonical("-0.0") == canonical("0") and canonical("NaN") == canonical("nan")
    assert canonical("True") == canonical("true") == canonical("TRUE") != canonical("false")
    assert canonical("1") != canonical("true") and canonical("0.95") != canonical("0.9500001")
    # integers keep every digit: no rounding through float (or a 28-digit decimal context)
    assert canonical("12345678901234567890123") != canonical("12345678901234567890124")
    assert canonical("1.0000000000000000000000000000001") != canonical("1")
    for a, b in (("v1", "v1.0"), ("Arith", "arith"), ("1_000", "1000"), ("0x10", "16"), (" 1", "1")):
        assert canonical(a) != canonical(b), (a, b)


def test_one_value_spelled_several_ways_is_one_configuration(store):
    runs, _ = load_runs(store, experiment="values")
    assert [r.params["algorithm.lam"] for r in runs] == [r[1] for r in RUNS]  # loaded as logged
    groups = group_runs(runs)
    assert differing_keys(groups) == ["algorithm.gamma", "algorithm.lam", "model.lora.enabled", "task.name"]
    stats = summarize(groups, METRIC)
    # shown as the oldest run spelled them; v1 and v1.0 are strings, not numbers: two configurations
    assert [(s.group.label(differing_keys(groups)), s.n) for s in stats] == [
        ("gamma=0.9 lam=1 model.lora.enabled=True task.name=arith", 4),
        ("gamma=1 lam=0.95 model.lora.enabled=False task.name=v1.0", 1),
        ("gamma=1 lam=0.95 model.lora.enabled=False task.name=v1", 1)]
    assert stats[0].mean == pytest.approx(0.65)
    by_lam = summarize(group_runs(runs, by=["algorithm.lam"]), METRIC)
    assert [(s.group.values["algorithm.lam"], s.n) for s in by_lam] == [("1", 4), ("0.95", 2)]
    assert [r.params["algorithm.lam"] for r in runs] == [r[1] for r in RUNS]  # the records are not modified


def test_cli_table_and_heatmap_show_each_value_once(store, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")  # one line per row
    assert main(["--tracking-uri", store, "--experiment", "values", "--no-report", "--metric", METRIC]) == 0
    out = capsys.readouterr().out
    rows = [line for line in out[:out.index("└")].splitlines() if line.startswith("│")]  # the first table
    assert len(rows) == 3, out
    # 0.5, 0.6, 0.7, 0.8: mean 0.65, IQM (the middle two) 0.65, median 0.65; intervals: the bootstrap's
    ci = stats.aggregate([0.5, 0.6, 0.7, 0.8])
    assert ci["mean_ci"][0] < 0.65 < ci["mean_ci"][1]
    assert [c.strip() for c in rows[0].split("│")[1:-1]] == [
        "1", "0.9", "1", "True", "arith", f"0.6500 [{ci['mean_ci'][0]:.4f}, {ci['mean_ci'][1]:.4f}]",
        f"0.6500 [{ci['iqm_ci'][0]:.4f}, {ci['iqm_ci'][1]:.4f}]", "0.6500", "4"]
    runs, _ = load_runs(store, experiment="values")
    fig, _ = plots.gamma_lambda_heatmap(unify_values(runs), METRIC, [])
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["0.95", "1"]  # λ: not 0.95, 0.950, 1, 1.0, ...
    assert [t.get_text() for t in ax.get_yticklabels()] == ["0.9", "1"]
