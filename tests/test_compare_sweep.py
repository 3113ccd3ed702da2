"""``rlexp compare`` over a real sweep (the JSON document, the parent run's artifacts, the report in
Chromium), and the fact that makes seeds pair up: runs with the same seed train on the same prompts in the
same order, whatever else their configuration changes.

The sweep: ``rlexp train -m algorithm.clip_eps=0.1,0.3 seed=0,1`` (PPO on the embedded task with the
partial-credit reward, 4 iterations, pass@1 and pass@2 at every evaluation): 2 configurations × the same
2 seeds.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

import rewards_for_tests
from fast_overrides import FAST
from mlflow_server import CHROMIUM
from rlexp.cli import main
from rlexp.compare import main as compare_main
from rlexp.compare import stats
from rlexp.tasks.arithmetic import ArithmeticTask

STEPS = 4
RUN = [o for o in FAST if not o.startswith("trainer.max_steps")] + [f"trainer.max_steps={STEPS}"]
PASS = ["task.eval.pass_k=[1,2]", "task.eval.pass_prompts=8"]
PARTIAL = "task.reward._target_=rlexp.tasks.arithmetic.partial_credit"  # rewards between 0 and 1: scores differ
METRIC = "summary/final_eval_reward"


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    root = tmp_path_factory.mktemp("compare_sweep")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    cwd = os.getcwd()
    os.chdir(root)
    try:
        main(["train", "-m", *RUN, *PASS, PARTIAL, "algorithm.clip_eps=0.1,0.3", "seed=0,1", f"tracking.uri={uri}",
              "tracking.experiment=cmp"])
    finally:
        os.chdir(cwd)
    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("cmp").experiment_id])
    parent = next(r for r in runs if r.data.tags.get("rlexp.role") == "sweep")
    jobs = [r for r in runs if r.data.tags.get("rlexp.role") == "job"]
    return {"uri": uri, "root": root, "client": client, "parent": parent, "jobs": jobs,
            "sweep_id": parent.data.tags["rlexp.sweep_id"]}


def _json(sweep, capsys, *args) -> dict:
    assert compare_main(["--tracking-uri", sweep["uri"], "--sweep", sweep["sweep_id"], "--json", "--no-report",
                         *args]) == 0
    return json.loads(capsys.readouterr().out)  # stdout holds the document and nothing else


def _scores(sweep, metric=METRIC) -> dict[str, dict[str, float]]:
    """{clip_eps: {seed: metric}} read straight from MLflow."""
    out: dict[str, dict[str, float]] = {}
    for r in sweep["jobs"]:
        assert r.info.status == "FINISHED"
        out.setdefault(r.data.params["algorithm.clip_eps"], {})[r.data.params["seed"]] = r.data.metrics[metric]
    return out


def test_json_over_a_real_sweep_has_every_field_and_the_numbers_of_the_runs(sweep, capsys):
    doc = _json(sweep, capsys)
    assert doc["sweep"] == sweep["sweep_id"] and doc["metric"] == METRIC and doc["paired"] is True
    assert doc["differing_keys"] == ["algorithm.clip_eps"] and doc["pair_mode"] == "all pairs"
    scores = _scores(sweep)
    assert len(doc["configurations"]) == 2
    for c in doc["configurations"]:
        for key in ("name", "params", "n", "mean", "mean_ci", "iqm", "iqm_ci", "median", "median_ci", "mean_t_ci",
                    "values", "seeds", "run_ids", "pass_at_k", "profile", "fit"):
            assert key in c, key
        mine = scores[c["params"]["algorithm.clip_eps"]]
        assert c["name"] == f"clip_eps={c['params']['algorithm.clip_eps']}" and c["n"] == 2
        assert sorted(c["seeds"]) == ["0", "1"] and dict(zip(c["seeds"], c["values"])) == mine
        agg = stats.aggregate(c["values"])
        assert c["mean"] == pytest.approx(sum(mine.values()) / 2) and c["iqm"] == pytest.approx(agg["iqm"])
        assert c["mean_ci"] == pytest.approx(agg["mean_ci"]) and c["iqm_ci"] == pytest.approx(agg["iqm_ci"])
        assert c["median"] == pytest.approx(agg["median"])
        assert c["mean_ci"][0] <= c["mean"] <= c["mean_ci"][1]
        assert set(c["pass_at_k"]) == {"eval/pass_at_1", "eval/pass_at_2"}
        for k, agg_k in c["pass_at_k"].items():
            per_run = [r.data.metrics[k] for r in sweep["jobs"]
                       if r.data.params["algorithm.clip_eps"] == c["params"]["algorithm.clip_eps"]]
            assert agg_k["n"] == 2 and agg_k["mean"] == pytest.approx(sum(per_run) / 2)
        fit = c["fit"]  # 4 iterations do not determine a sigmoid: flagged, with the reason
        assert fit["determined"] is False and fit["reason"]
        assert len(c["profile"]["fraction"]) == len(doc["profile_thresholds"])
    (pair,) = doc["pairs"]
    a, b = (next(c for c in doc["configurations"] if c["name"] == pair[k]) for k in ("a", "b"))
    assert a["rank"] == 1 and b["rank"] == 2
    for key in ("a", "b", "prob_improvement", "ci", "paired_difference", "paired_ci", "paired_seeds"):
        assert key in pair, key
    xa = scores[a["params"]["algorithm.clip_eps"]]
    xb = scores[b["params"]["algorithm.clip_eps"]]
    assert pair["prob_improvement"] == pytest.approx(stats.prob_improvement(list(xa.values()), list(xb.values())))
    assert pair["paired_seeds"] == ["0", "1"]
    assert pair["paired_difference"] == pytest.approx((xa["0"] - xb["0"] + xa["1"] - xb["1"]) / 2)
    assert pair["paired_ci"][0] <= pair["paired_difference"] <= pair["paired_ci"][1]
    assert 0.0 <= pair["ci"][0] <= pair["prob_improvement"] <= pair["ci"][1] <= 1.0


def test_pass_at_k_is_a_metric_like_any_other(sweep, capsys):
    doc = _json(sweep, capsys, "--metric", "eval/pass_at_2", "--baseline", "clip_eps=0.1")
    scores = _scores(sweep, "eval/pass_at_2")
    assert doc["metric"] == "eval/pass_at_2" and doc["pair_mode"] == "against the baseline clip_eps=0.1"
    for c in doc["configurations"]:
        assert c["mean"] == pytest.approx(sum(scores[c["params"]["algorithm.clip_eps"]].values()) / 2)
    (pair,) = doc["pairs"]
    assert (pair["a"], pair["b"]) == ("clip_eps=0.3", "clip_eps=0.1")  # each other configuration vs the baseline


def test_the_parent_run_holds_the_same_numbers(sweep, capsys):
    """The sweep wrote its report when it ended; its comparison.json is the --json document."""
    client, parent = sweep["client"], sweep["parent"]
    files = {a.path for a in client.list_artifacts(parent.info.run_id, "report")}
    assert {"report/report.html", "report/comparison.json", "report/comparison.txt"} <= files
    local = Path(client.download_artifacts(parent.info.run_id, "report", str(sweep["root"] / "dl")))
    logged = json.loads((local / "comparison.json").read_text())
    assert logged == _json(sweep, capsys)
    text = (local / "comparison.txt").read_text()
    html = (local / "report.html").read_text()
    for c in logged["configurations"]:  # the terminal's tables and the report show the same numbers
        for value in (c["mean"], c["iqm"], c["median"], *c["mean_ci"], *c["iqm_ci"]):
            assert f"{value:.4f}" in text and f"{value:.4f}" in html, value
    p = logged["pairs"][0]
    for value in (f"{p['prob_improvement']:.3f}", f"{p['paired_difference']:.4f}"):
        assert value in text and value in html
    assert "undetermined (" in text and "undetermined (" in html


def test_same_seed_same_prompts_in_the_same_order(tmp_path, monkeypatch):
    """Two configurations (clip_eps 0.1 and 0.3) with seed 0 train on identical prompt sequences; seed 1 on
    another. Recorded by the reward function itself: the prompts of every rollout it scores, in order."""
    monkeypatch.chdir(tmp_path)
    eval_prompts = {e.prompt for e in ArithmeticTask(num_eval=32).eval_examples}  # FAST: task.num_eval=32
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"

    def trained_on(*overrides) -> list[list[str]]:
        rewards_for_tests.PROMPTS.clear()
        main(["train", f"tracking.uri={uri}", *RUN, "task.reward._target_=rewards_for_tests.records_prompts",
              *overrides])
        calls = rewards_for_tests.PROMPTS
        first_eval = next(i for i, p in enumerate(calls) if set(p) == eval_prompts)  # after any warm start
        return [p for p in calls[first_eval:] if not set(p) <= eval_prompts]

    a = trained_on("algorithm.clip_eps=0.1", "seed=0")
    b = trained_on("algorithm.clip_eps=0.3", "seed=0")
    c = trained_on("algorithm.clip_eps=0.1", "seed=1")
    assert len(a) == STEPS and all(len(p) == 8 for p in a)  # algorithm.prompts_per_step=8, one sample each (PPO)
    assert a == b  # the same prompts, in the same order, at every iteration
    assert all(set(x) != set(y) for x, y in zip(a, c))  # another seed: other prompts
    assert len({tuple(p) for p in a}) == STEPS  # and each iteration its own




@pytest.mark.slow
@pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="Debian's chromium is not installed (apt-get install chromium)")
def test_the_report_shows_the_new_panels_in_chromium(sweep, tmp_path):
    playwright = pytest.importorskip("playwright.sync_api",
                                     reason="playwright is not installed (pip install -e '.[dev]')")
    out = tmp_path / "report"
    assert compare_main(["--tracking-uri", sweep["uri"], "--sweep", sweep["sweep_id"], "--out", str(out)]) == 0
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--headless", "--no-sandbox", "--disable-gpu"])
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.goto((out / "report.html").as_uri())
        widths = page.eval_on_selector_all("img", "els => els.map(e => [e.alt, e.naturalWidth])")
        assert dict(widths).get("performance_profiles.png", 0) > 0 and all(w > 0 for _, w in widths)
        body = page.inner_text("body")
        for text in ("IQM [95% CI]", "Probability of improvement", "a − b (paired)", "pass@2", "undetermined ("):
            assert text in body, text
        page.screenshot(path=str(tmp_path / "report.png"), full_page=True)
        browser.close()
    assert (tmp_path / "report.png").stat().st_size > 10_000
