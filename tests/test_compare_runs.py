"""``rlexp compare --runs ID,ID,…`` (chosen runs, no sweep or planned experiment) and tables that
stay readable in an 80-column terminal, against a real MLflow SQLite store.

The store holds, in experiments ``a`` and ``b``, runs that differ in λ and the model (``a``: two seeds
of one configuration, a decoy that is never chosen, a sweep's parent run), and, in experiments
``wrap`` and ``wide``, runs that differ in 5 and 9 params with long values.
"""
from __future__ import annotations

import io
import time

import pytest

from rlexp.compare import CompareError, differing_keys, group_runs, load_runs, main, summarize, terminal_table

METRIC = "summary/final_eval_reward"
BASE = {"algorithm.name": "ppo", "algorithm.gamma": "1.0", "task.name": "arithmetic", "trainer.max_steps": "40"}
# experiment ``wide``: two configurations that differ in 9 params, values up to 38 characters
WIDE = [
    {"algorithm.loss_agg": "seq-mean-token-sum-norm", "algorithm.advantage": "grpo", "algorithm.lam": "0.95",
     "algorithm.clip_eps_high": "0.28", "model.name_or_path": "/models/Qwen2.5-0.5B-Instruct-local-copy",
     "task.name": "arithmetic_with_long_prompts", "rollout.temperature": "1.0", "rollout.max_new_tokens": "256",
     "task.reward._target_": "my_rewards.exact_match_with_partial"},
    {"algorithm.loss_agg": "token-mean", "algorithm.advantage": "gae", "algorithm.lam": "1.0",
     "algorithm.clip_eps_high": "0.2", "model.name_or_path": "/models/SmolLM2-135M-Instruct-local-copy",
     "task.name": "arithmetic", "rollout.temperature": "0.7", "rollout.max_new_tokens": "64",
     "task.reward._target_": "rlexp.tasks.arithmetic.reward"},
]
# experiment ``wrap``: a list value too long for one line per row at 80 columns, not for wrapping it
# between words (which leaves every column at least as wide as its longest word: 78 columns in all)
WRAP = [{"model.lora.target_modules": "['q_proj', 'k_proj', 'v_proj', 'o_proj', 'gate_proj', 'up_proj']",
         "algorithm.lam": "0.95", "model.name_or_path": "/models/qwen-0.5b"},
        {"model.lora.target_modules": "['q_proj', 'v_proj']", "algorithm.lam": "1.0",
         "model.name_or_path": "/models/smollm-135m"}]


def _run(client, exp, params, final, start, *, tags=None, name=None) -> str:
    from mlflow.entities import Metric, Param

    run = client.create_run(exp, start_time=start, tags=tags or {}, run_name=name)
    client.log_batch(run.info.run_id, params=[Param(k, v) for k, v in params.items()],
                     metrics=[] if final is None else [Metric(METRIC, final, start, 10)])
    client.set_terminated(run.info.run_id, "FINISHED")
    return run.info.run_id


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    from mlflow import MlflowClient

    root = tmp_path_factory.mktemp("compare_runs")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    client = MlflowClient(uri)
    a, b, wrap, wide = (client.create_experiment(n, artifact_location=str(root / n))
                        for n in ("a", "b", "wrap", "wide"))
    t = int(time.time() * 1000) - 60_000
    ids = {
        "lam95_s0": _run(client, a, dict(BASE, **{"algorithm.lam": "0.95", "model.name": "tiny", "seed": "0"}), 0.6, t),
        "lam95_s1": _run(client, a, dict(BASE, **{"algorithm.lam": "0.95", "model.name": "tiny", "seed": "1"}), 0.8,
                         t + 1),
        "decoy": _run(client, a, dict(BASE, **{"algorithm.lam": "0.5", "model.name": "tiny", "seed": "0"}), 0.9, t + 2,
                      name="decoy-run"),
        "lam0_b": _run(client, b, dict(BASE, **{"algorithm.lam": "0", "model.name": "small", "seed": "0"}), 0.3, t + 3),
        "parent": _run(client, a, {"sweep.algorithm.lam": "0,0.95"}, None, t + 4,
                       tags={"rlexp.role": "sweep", "rlexp.sweep_id": "sw-1"}),
    }
    for i, params in enumerate(WIDE):
        _run(client, wide, dict(params, seed="0"), 0.5 + 0.1 * i, t + 10 + i)
    for i, params in enumerate(WRAP):
        _run(client, wrap, dict(params, seed="0"), 0.5 + 0.1 * i, t + 20 + i)
    return {"uri": uri, "ids": ids, "root": root}


def _rows(out: str) -> list[list[str]]:
    return [[c.strip() for c in line.split("│")[1:-1]] for line in out.splitlines() if line.startswith("│")]


def _columns(out: str) -> list[str]:
    """Each table column's text read top to bottom, without whitespace: a value wrapped or folded over
    several lines of its column reads whole again."""
    cols: dict[int, str] = {}
    for row in _rows(out):
        for j, cell in enumerate(row):
            cols[j] = cols.get(j, "") + "".join(cell.split())
    return list(cols.values())


def test_runs_compares_exactly_the_chosen_runs_across_experiments(store, capsys, tmp_path, monkeypatch):
    ids = store["ids"]
    chosen = [ids["lam0_b"], ids["lam95_s1"], ids["lam95_s0"], ids["lam95_s0"]]  # any order, a repeat
    runs, parent = load_runs(store["uri"], run_ids=list(dict.fromkeys(chosen)))
    assert parent is None and [r.run_id for r in runs] == [ids["lam95_s0"], ids["lam95_s1"], ids["lam0_b"]]
    stats = summarize(group_runs(runs), METRIC)
    assert [(s.group.values["algorithm.lam"], s.group.values["model.name"], s.n) for s in stats] == [
        ("0.95", "tiny", 2), ("0", "small", 1)]  # the seeds of one configuration pool; the decoy is not there

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("COLUMNS", "80")
    assert main(["--tracking-uri", store["uri"], "--runs", ",".join(chosen), "--metric", METRIC]) == 0
    out = capsys.readouterr().out
    assert f"3 chosen runs — {METRIC}" in out and "decoy" not in out
    first, pairs = out.split("└", 1)  # the configurations, then the pairs (P(improvement))
    # 0.6 and 0.8: mean = IQM = median = 0.7, and the bootstrap interval of 2 values is [min, max]
    assert _columns(first) == ["12", "0.950", "tinysmall", "0.7000[0.6000,0.8000]0.3000",
                               "0.7000[0.6000,0.8000]0.3000", "0.70000.3000", "21"]
    assert _rows(pairs) == [["#1", "#2", "1.000", "—", "—", "—", "—"]]  # unpaired: lam=0 ran seed 0 only
    report = tmp_path / "rlexp-report" / f"runs-3-{ids['lam0_b'][:8]}" / "report.html"
    assert "3 runs in 2 configurations; configurations differ in: algorithm.lam, model.name" in report.read_text()


@pytest.mark.parametrize("runs, message", [
    ("{lam95_s0},nope123", "--runs: no run with id 'nope123' in the tracking store sqlite:///"),
    ("{lam95_s0},decoy-run", "'decoy-run' is the name of run {decoy}: --runs takes run ids"),
    ("{lam95_s0},{parent}", "--runs: run {parent} is the parent run of sweep 'sw-1', not a training run; "
                            "compare its jobs with --sweep sw-1"),
    (" , ,", "--runs ' , ,' names no run: expected comma-separated MLflow run ids"),
])
def test_runs_errors_are_one_line_naming_the_id(store, capsys, runs, message):
    runs, message = runs.format(**store["ids"]), message.format(**store["ids"])
    assert main(["--tracking-uri", store["uri"], "--no-report", "--runs", runs]) == 2
    err = capsys.readouterr().err
    assert err.startswith("rlexp compare: error: ") and message in err and err.count("\n") == 1


@pytest.mark.parametrize("other", [["--sweep", "latest"], ["--experiment", "a"]])
def test_runs_is_not_combined_with_a_sweep_or_an_experiment(store, capsys, other):
    assert main(["--tracking-uri", store["uri"], "--no-report", "--runs", store["ids"]["lam95_s0"], *other]) == 2
    err = capsys.readouterr().err
    assert "--runs chooses the runs itself: it cannot be combined with --sweep or --experiment" in err
    with pytest.raises(CompareError, match="cannot be combined"):
        load_runs(store["uri"], run_ids=[store["ids"]["lam95_s0"]], experiment="a")


def _check_80_columns(out: str, params: list[dict], width: int = 80) -> None:
    from rich.cells import cell_len

    lines = out.splitlines()
    assert max(cell_len(line) for line in lines) <= width, "\n".join(l for l in lines if cell_len(l) > width)
    assert "…" not in out, out
    columns = _columns(out)
    for p in params:  # every differing key and value is shown, whole: wrapped between words at most
        for key, value in p.items():
            assert all(word in out for word in value.split()), (value, out)
            assert any("".join(value.split()) in c for c in columns), (value, out)
            assert key.removeprefix("algorithm.") in out, (key, out)


@pytest.mark.parametrize("experiment, params, width, layout", [
    ("wrap", WRAP, 110, "wrapped"), ("wrap", WRAP, 80, "one row per key"), ("wide", WIDE, 80, "one row per key")])
def test_a_wide_table_fits_80_columns_without_cutting_a_value(store, capsys, monkeypatch, experiment, params, width,
                                                              layout):
    monkeypatch.setenv("COLUMNS", str(width))
    assert main(["--tracking-uri", store["uri"], "--experiment", experiment, "--no-report", "--metric", METRIC]) == 0
    out = capsys.readouterr().out
    _check_80_columns(out, params, width)
    rows = _rows(out[:out.index("└")])  # the configurations' table (the pairs' table follows)
    if layout == "wrapped":  # one table, a row on several lines, cells broken between words only
        assert all(len(r) == len(params[0]) + 5 for r in rows) and len(rows) > 2
        assert WRAP[0]["model.lora.target_modules"] not in out  # (it is wrapped)
    else:  # a block per configuration, best first: one row per key (its rank on the first)
        assert all(len(r) == 3 for r in rows)
        assert [r[0] for r in rows if r[0]] == ["#1", "#2"]
        assert ["mean [95% CI]", "0.6000"] in [r[1:] for r in rows] and ["n", "1"] in [r[1:] for r in rows]
        assert ["model.name_or_path", params[-1]["model.name_or_path"]] in [r[1:] for r in rows]


def test_terminal_table_keeps_every_value_at_any_width(store):
    from rich.console import Console

    runs, _ = load_runs(store["uri"], experiment="wide")
    groups = group_runs(runs)
    stats = summarize(groups, METRIC)
    for width in (40, 60, 80, 100, 200, 400):
        console = Console(width=width, record=True, file=io.StringIO())
        console.print(terminal_table(stats, differing_keys(groups), title="t", width=width))
        text = console.export_text()
        assert max(len(line) for line in text.splitlines()) <= width and "…" not in text, (width, text)
        columns = _columns(text)
        for p in WIDE:
            for value in p.values():
                assert any("".join(value.split()) in c for c in columns), (width, value, text)
            for key in p:  # a column header (its own line), or a row of the per-key blocks
                short = key.removeprefix("algorithm.")
                assert short in text or any(short in c for c in columns), (width, key, text)
