"""``rlexp compare`` against a real MLflow SQLite store holding a synthetic sweep.

The store (built once per module: creating it costs ~6 s) holds, in experiment ``rlexp``:
- sweep ``sw-main``: a parent run and 16 jobs over clip_eps {0.1, 0.2} × gamma {0.9, 1.0} ×
  lam {0, 0.95} × seed {0, 1}, plus one FAILED job; eval/reward_mean follows the ScaleRL sigmoid of
  perf/total_tokens with known A, B, C_mid per configuration (plus a small per-seed noise);
- sweep ``sw-old``: an older parent with one job (so ``latest`` must pick by start time);
and experiment ``plain`` (one run, no sweep), ``nojobs`` (a sweep parent without jobs).
"""
from __future__ import annotations

import dataclasses
import itertools
import math
import time
import zlib

import numpy as np
import pytest

from rlexp.compare import (CompareError, FitError, RunRecord, differing_keys, failure_summary, fit_runs, fit_sigmoid,
                           group_runs, load_runs, main, rich_table, sigmoid_curve, summarize, write_report)
from rlexp.compare import plots

GRID = list(itertools.product(("0.1", "0.2"), ("0.9", "1.0"), ("0.0", "0.95")))
SEEDS = (0, 1)
MAX_STEPS, EVAL_EVERY, TOKENS_PER_STEP, R0 = 40, 5, 1000.0, 0.2
T_975_1 = 12.706204736174707  # Student's t quantile, 0.975, 1 degree of freedom
ERROR = "RuntimeError: rollout produced NaN logprobs"


def true_params(clip: str, gamma: str, lam: str) -> dict:
    """The sigmoid behind a configuration's eval curve: every configuration gets a distinct A."""
    A = 0.5 + 0.2 * (lam == "0.95") + 0.1 * (gamma == "1.0") + 0.04 * (clip == "0.2")
    return {"A": A, "B": 1.5 + float(lam), "C_mid": 8000.0 * (1 + float(clip)), "r0": R0}


def _log_job(client, exp_id, *, sweep_id, parent_id, clip, gamma, lam, seed, start, failed=False):
    from mlflow.entities import Metric, Param

    rng = np.random.default_rng(zlib.crc32(f"{clip} {gamma} {lam} {seed}".encode()))
    p = true_params(clip, gamma, lam)
    tags = {"algorithm": "ppo", "task": "arithmetic", "model": "tiny",
            "rlexp.overrides": f"algorithm.clip_eps={clip} algorithm.gamma={gamma} algorithm.lam={lam} seed={seed}"}
    if sweep_id:
        tags.update({"mlflow.parentRunId": parent_id, "rlexp.sweep_id": sweep_id, "rlexp.sweep_name": "grid",
                     "rlexp.role": "job"})
    run = client.create_run(exp_id, start_time=start, tags=tags, run_name=f"job-{clip}-{gamma}-{lam}-{seed}")
    rid = run.info.run_id
    params = {"algorithm.name": "ppo", "algorithm.clip_eps": clip, "algorithm.gamma": gamma, "algorithm.lam": lam,
              "algorithm.kl_coef": "0.01", "seed": str(seed), "trainer.max_steps": str(MAX_STEPS),
              "trainer.eval_every": str(EVAL_EVERY), "trainer.progress_bar": "true", "model.name": "tiny",
              "task.name": "arithmetic", "hardware.num_threads": "1", "tracking.experiment": "rlexp",
              "tracking.run_name": f"run-{rid[:8]}", "rollout.temperature": "1.0"}
    last = MAX_STEPS // 2 if failed else MAX_STEPS
    lam_f = float(lam)
    m, final = [], None
    for step in range(0, last + 1):
        tokens = step * TOKENS_PER_STEP
        m += [Metric("perf/total_tokens", tokens, start + step, step),
              Metric("perf/total_seconds", step * 0.5, start + step, step)]
        if step % EVAL_EVERY == 0:
            final = float(sigmoid_curve([tokens], p["A"], p["B"], p["C_mid"], R0)[0]) + \
                (rng.normal(0, 0.003) if step else 0.0)
            m.append(Metric("eval/reward_mean", final, start + step, step))
        if step:
            for key, val in (("train/reward_mean", final), ("train/clipfrac", 0.5 * float(clip)),
                             ("train/approx_kl", 0.01 + 0.001 * step), ("train/entropy", 2.0 - 0.02 * step),
                             ("train/response_length", 4.0), ("train/advantage_var", 1.0 + lam_f),
                             ("train/explained_variance", 0.5 - 0.2 * lam_f),
                             ("train/adv_bias_vs_mc", 0.2 * (1 - lam_f)), ("train/adv_mse_vs_mc", 0.3 * (1 - lam_f))):
                m.append(Metric(key, val + rng.normal(0, 1e-3), start + step, step))
    if not failed:
        m += [Metric("summary/final_eval_reward", final, start + last, last),
              Metric("summary/reward_auc", 0.5, start + last, last),
              Metric("summary/wall_seconds", 20.0, start + last, last)]
    client.log_batch(rid, metrics=m, params=[Param(k, v) for k, v in params.items()])
    if failed:
        client.set_tag(rid, "rlexp.error", ERROR)
    client.set_terminated(rid, "FAILED" if failed else "FINISHED", end_time=start + 100)
    return rid, final


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """The synthetic store; returns a dict with its URI, the parent ids and each config's final rewards."""
    from mlflow import MlflowClient

    root = tmp_path_factory.mktemp("compare_store")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    client = MlflowClient(uri)
    exp = client.create_experiment("rlexp", artifact_location=str(root / "artifacts"))
    t0 = int(time.time() * 1000) - 3_600_000
    old = client.create_run(exp, start_time=t0, tags={"rlexp.role": "sweep", "rlexp.sweep_id": "sw-old",
                                                      "rlexp.sweep_name": "old"})
    _log_job(client, exp, sweep_id="sw-old", parent_id=old.info.run_id, clip="0.3", gamma="1.0", lam="0.95",
             seed=0, start=t0 + 10)
    client.set_terminated(old.info.run_id, "FINISHED")
    parent = client.create_run(exp, start_time=t0 + 1000, tags={"rlexp.role": "sweep", "rlexp.sweep_id": "sw-main",
                                                                "rlexp.sweep_name": "grid"})
    pid = parent.info.run_id
    client.log_param(pid, "sweep.algorithm.clip_eps", "0.1,0.2")
    finals: dict[tuple, list[float]] = {}
    start = t0 + 2000
    for (clip, gamma, lam), seed in itertools.product(GRID, SEEDS):
        start += 200
        _, final = _log_job(client, exp, sweep_id="sw-main", parent_id=pid, clip=clip, gamma=gamma, lam=lam,
                            seed=seed, start=start)
        finals.setdefault((clip, gamma, lam), []).append(final)
    _log_job(client, exp, sweep_id="sw-main", parent_id=pid, clip="0.2", gamma="1.0", lam="0.95", seed=2,
             start=start + 200, failed=True)
    client.set_terminated(pid, "FINISHED")
    plain = client.create_experiment("plain", artifact_location=str(root / "artifacts_plain"))
    _log_job(client, plain, sweep_id=None, parent_id=None, clip="0.2", gamma="1.0", lam="0.95", seed=0, start=t0)
    nojobs = client.create_experiment("nojobs", artifact_location=str(root / "artifacts_nojobs"))
    client.create_run(nojobs, start_time=t0, tags={"rlexp.role": "sweep", "rlexp.sweep_id": "sw-empty"})
    return {"uri": uri, "parent": pid, "old_parent": old.info.run_id, "finals": finals, "root": root}


@pytest.fixture(scope="module")
def loaded(store):
    runs, parent = load_runs(store["uri"], sweep="latest")
    return runs, parent, group_runs(runs)


def _config(group) -> tuple:
    v = group.values
    return v["algorithm.clip_eps"], v["algorithm.gamma"], v["algorithm.lam"]


# ---------------------------------------------------------------------------------------- loading
def test_latest_picks_newest_sweep_and_loads_its_jobs(store, loaded):
    runs, parent, _ = loaded
    assert parent.run_id == store["parent"] and parent.sweep_id == "sw-main" and parent.sweep_name == "grid"
    assert len(runs) == 17 and sum(r.status == "FAILED" for r in runs) == 1
    r = next(r for r in runs if r.status == "FINISHED")
    assert r.params["algorithm.lam"] in ("0.0", "0.95") and "summary/final_eval_reward" in r.summary
    assert [s for s, _ in r.history("eval/reward_mean")] == list(range(0, MAX_STEPS + 1, EVAL_EVERY))
    assert len(r.history("train/clipfrac")) == MAX_STEPS


def test_load_by_sweep_id_and_by_parent_run_id(store):
    runs, parent = load_runs(store["uri"], sweep="sw-old")
    assert parent.run_id == store["old_parent"] and [r.params["algorithm.clip_eps"] for r in runs] == ["0.3"]
    runs, parent = load_runs(store["uri"], experiment="rlexp", sweep=store["parent"])
    assert parent.sweep_id == "sw-main" and len(runs) == 17


def test_experiment_without_sweep_loads_every_job_but_no_parent(store):
    runs, parent = load_runs(store["uri"])  # the default experiment "rlexp"
    assert parent is None and len(runs) == 18
    assert all(r.tags.get("rlexp.role") != "sweep" for r in runs)


@pytest.mark.parametrize("kwargs, message", [
    ({"experiment": "nope"}, "no experiment named 'nope' in the tracking store; experiments there: "),
    ({"experiment": "plain", "sweep": "latest"}, "no sweep found in experiment 'plain'"),
    ({"sweep": "sw-missing"}, "no sweep 'sw-missing' in any experiment"),
    ({"experiment": "nojobs", "sweep": "latest"}, "sweep 'sw-empty' (unnamed, parent run"),
])
def test_load_errors_name_what_was_searched(store, kwargs, message):
    with pytest.raises(CompareError) as e:
        load_runs(store["uri"], **kwargs)
    assert message in str(e.value)
    if "nope" in message:
        assert "nojobs" in str(e.value) and "plain" in str(e.value) and "rlexp" in str(e.value)
    if "sw-empty" in message:
        assert "in experiment 'nojobs') has no jobs" in str(e.value)
    if "sw-missing" in message:
        assert "sw-main" in str(e.value) and "sw-old" in str(e.value)


# ----------------------------------------------------------------------------------- aggregation
def test_groups_are_configurations_with_their_seeds(loaded):
    _, _, groups = loaded
    assert len(groups) == 8
    assert differing_keys(groups) == ["algorithm.clip_eps", "algorithm.gamma", "algorithm.lam"]
    stats = summarize(groups)
    assert all(s.n == 2 for s in stats)
    failed = [s for s in stats if s.n_failed]
    assert len(failed) == 1 and _config(failed[0].group) == ("0.2", "1.0", "0.95")
    assert failed[0].group.failed[0].error == ERROR


def test_mean_and_ci_match_a_hand_computation(store, loaded):
    stats = summarize(loaded[2], "summary/final_eval_reward")
    for s in stats:
        a, b = store["finals"][_config(s.group)]
        assert s.mean == pytest.approx((a + b) / 2, abs=1e-12)
        # s = |a - b| / √2 (ddof 1), CI = t · s / √2
        assert s.ci == pytest.approx(T_975_1 * abs(a - b) / 2, rel=1e-9)


def test_sorted_by_mean_best_first_and_best_row_highlighted(loaded):
    stats = summarize(loaded[2])
    means = [s.mean for s in stats]
    assert means == sorted(means, reverse=True)
    assert _config(stats[0].group) == ("0.2", "1.0", "0.95")  # largest A
    assert stats[0].group.label(differing_keys(loaded[2])) == "clip_eps=0.2 gamma=1.0 lam=0.95"
    table = rich_table(stats, differing_keys(loaded[2]), title="t")
    assert table.rows[0].style == "bold green" and table.rows[1].style is None
    assert [c.header for c in table.columns] == ["#", "clip_eps", "gamma", "lam", "mean [95% CI]", "IQM [95% CI]",
                                                 "median", "n", "failed"]


def test_by_key_groups_exactly_by_it_and_n1_has_no_ci(loaded):
    runs, _, _ = loaded
    groups = group_runs(runs, by=["algorithm.lam"])
    assert len(groups) == 2 and differing_keys(groups) == ["algorithm.lam"]
    assert sorted(s.n for s in summarize(groups)) == [8, 8]
    one = summarize(group_runs(runs[:1], by=["seed"]))
    assert one[0].n == 1 and one[0].ci is None
    with pytest.raises(CompareError, match="'algorithm.lamb' is not a param .* did you mean algorithm.lam"):
        group_runs(runs, by=["algorithm.lamb"])


def test_failed_job_with_partial_params_joins_its_configuration():
    def rec(i, status, params, final=None):
        metrics = {} if final is None else {"summary/final_eval_reward": final}
        return RunRecord(run_id=f"r{i}", name=f"r{i}", status=status, start_time=i, params=params,
                         tags={"rlexp.error": "ConfigError: bad"} if status == "FAILED" else {}, metrics=metrics)

    full = {"algorithm.lam": "0.95", "algorithm.gamma": "1.0", "seed": "0", "tracking.run_name": "a"}
    runs = [rec(0, "FINISHED", full, 0.5), rec(1, "FINISHED", dict(full, **{"algorithm.lam": "0.0"}), 0.4),
            rec(2, "FAILED", {"algorithm.lam": "0.95"}),  # refused before its config was logged
            rec(3, "FAILED", {"algorithm.lam": "-1"})]  # a bad value: a configuration of its own
    groups = group_runs(runs)
    assert differing_keys(groups) == ["algorithm.lam"]
    stats = summarize(groups)
    assert [(s.group.values["algorithm.lam"], s.n, s.n_failed) for s in stats] == [
        ("0.95", 1, 1), ("0.0", 1, 0), ("-1", 0, 1)]
    assert stats[-1].mean is None and failure_summary(stats) == "2 runs failed: ConfigError: bad (×2)."


def test_any_metric_uses_the_last_value_of_its_history(loaded):
    stats = summarize(loaded[2], "eval/reward_mean")  # equals the final evaluation
    best = summarize(loaded[2])
    assert [s.mean for s in stats] == pytest.approx([s.mean for s in best])


# ------------------------------------------------------------------------------------ sigmoid fit
@pytest.mark.parametrize("A, B, C_mid, r0", [(0.6, 1.0, 2e5, 0.2), (0.85, 2.5, 5e6, 0.1),
                                             (0.4, 0.7, 3e4, 0.25), (0.9, 1.5, 1e8, 0.0), (0.3, 3.0, 1e3, 0.5)])
@pytest.mark.parametrize("noise", [0.0, 0.005])
def test_fit_recovers_known_parameters(A, B, C_mid, r0, noise):
    rng = np.random.default_rng(0)
    compute = np.tile(np.logspace(math.log10(C_mid / 30), math.log10(C_mid * 100), 30), 3)  # 3 "seeds"
    reward = sigmoid_curve(compute, A, B, C_mid, r0) + rng.normal(0.0, noise, compute.size)
    fit = fit_sigmoid(np.r_[0.0, compute], np.r_[r0, reward], r0)  # the compute-0 point is ignored
    for key, true in (("A", A), ("B", B), ("C_mid", C_mid)):
        assert fit[key] == pytest.approx(true, rel=0.05), key
        assert math.isfinite(fit[f"{key}_err"])
    assert fit["r0"] == r0 and fit["n"] == compute.size


def test_fit_errors_are_clear():
    with pytest.raises(FitError, match="at least 3 points"):
        fit_sigmoid([0, 10, 20], [0.1, 0.2, 0.3], 0.1)
    with pytest.raises(FitError, match="stays at r0"):
        fit_sigmoid([1, 10, 100, 1000], [0.3] * 4, 0.3)


def test_fit_on_runs_pools_seeds_over_tokens(loaded):
    for g in loaded[2]:
        fit, true = fit_runs(g.finished), true_params(*_config(g))
        assert fit["r0"] == pytest.approx(R0)
        assert fit["A"] == pytest.approx(true["A"], rel=0.05) and fit["C_mid"] == pytest.approx(true["C_mid"], rel=0.05)


# ---------------------------------------------------------------------------------------- report
def test_heatmap_with_empty_cells_still_renders(loaded):
    runs = [r for r in loaded[0]
            if not (r.params["algorithm.clip_eps"] == "0.1" and r.params["algorithm.lam"] == "0.0")]
    fig, note = plots.gamma_lambda_heatmap(runs, "summary/final_eval_reward", ["algorithm.gamma", "algorithm.lam"])
    assert len(fig.axes) == 3  # two clip_eps panels and the colour bar
    assert "—" in [t.get_text() for t in fig.axes[0].texts] and "grey = no run" in note
    same_gamma = [r for r in runs if r.params["algorithm.gamma"] == "1.0"]
    assert plots.gamma_lambda_heatmap(same_gamma, "summary/final_eval_reward", []) is None


def test_report_survives_a_failed_fit(loaded, tmp_path):
    runs = []
    for r in loaded[0]:
        if r.params["algorithm.lam"] == "0.0":  # copies without the step-0 evaluation: R0 unknown
            hist = dict(r.histories, **{"eval/reward_mean": r.history("eval/reward_mean")[1:]})
            runs.append(dataclasses.replace(r, histories=hist))
    html = write_report(runs, group_runs(runs), tmp_path, metric="summary/final_eval_reward").read_text()
    assert html.count("fit failed: no step-0 eval/reward_mean") == 4
    assert (tmp_path / "report.html").exists() and (tmp_path / "eval_reward.png").exists()


@pytest.fixture(scope="module")
def cli_report(store, tmp_path_factory):
    out = tmp_path_factory.mktemp("report")
    rc = main(["--tracking-uri", store["uri"], "--sweep", "latest", "--out", str(out)])
    return rc, out


def test_cli_writes_report_with_embedded_images_and_logs_it(store, cli_report):
    rc, out = cli_report
    assert rc == 0
    html = (out / "report.html").read_text()
    for png in ("eval_reward.png", "eval_reward_wall_time.png", "heatmap_gamma_lam.png", "train_curves.png",
                "sigmoid_fit.png", "lambda_diagnostics.png", "performance_profiles.png"):
        assert (out / png).stat().st_size > 1000, png
        assert f'alt="{png}"' in html
    assert html.count("data:image/png;base64,") == 7
    assert "γ × λ heatmap" in html and "sweep sw-main (grid)" in html
    assert '<tr class="best"><td class="num">1</td><td class="key">0.2</td><td class="key">1.0</td>' \
           '<td class="key">0.95</td>' in html
    assert "1 run failed: " + ERROR in html and "fit failed" not in html
    text = (out / "comparison.txt").read_text()  # the terminal's tables, as logged on the parent run
    assert "1 run failed: " + ERROR in text and "P(a > b)" in text and "determined" in text
    from mlflow import MlflowClient

    logged = {a.path for a in MlflowClient(store["uri"]).list_artifacts(store["parent"], "report")}
    assert {"report/report.html", "report/heatmap_gamma_lam.png", "report/comparison.json",
            "report/comparison.txt"} <= logged


def test_cli_table_by_key_and_failed_line(store, capsys):
    assert main(["--tracking-uri", store["uri"], "--sweep", "sw-main", "--by", "algorithm.lam", "--no-report"]) == 0
    out = capsys.readouterr().out
    assert "sweep sw-main (grid)" in out and "1 run failed: " + ERROR in out and "report:" not in out
    table = out[:out.index("└")]  # the first table: the configurations
    rows = [[c.strip() for c in line.split("│")[1:-1]] for line in table.splitlines() if line.startswith("│")]
    assert [r[:2] for r in rows if r[0]] == [["1", "0.95"], ["2", "0.0"]]  # λ=0.95 is better, first


@pytest.mark.parametrize("argv, message", [
    (["--experiment", "nope"], "no experiment named 'nope'"),
    (["--experiment", "plain", "--sweep", "latest"], "no sweep found in experiment 'plain'"),
    (["--sweep", "latest", "--metric", "eval/reward_men"], "did you mean eval/reward_mean"),
    (["--sweep", "latest", "--by", "gama"], "--by key 'gama' is not a param"),
    (["--bogus"], "unrecognized arguments: --bogus"),
])
def test_cli_errors_are_one_line_and_exit_2(store, capsys, argv, message):
    assert main(["--tracking-uri", store["uri"], "--no-report", *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("rlexp compare: error: ") and message in err and err.count("\n") == 1


def test_cli_without_a_store_says_how_to_point_at_one(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert main(["--sweep", "latest"]) == 2
    err = capsys.readouterr().err
    assert "mlflow.db does not exist" in err and "--tracking-uri" in err and "MLFLOW_TRACKING_URI" in err
    assert main(["--tracking-uri", f"sqlite:///{tmp_path}/missing.db"]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_cli_experiment_report_goes_to_default_dir_and_is_not_logged(store, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["--tracking-uri", store["uri"], "--experiment", "plain", "--metric", "summary/reward_auc"]) == 0
    out = capsys.readouterr().out
    assert "experiment plain — summary/reward_auc" in out and "logged on" not in out
    html = (tmp_path / "rlexp-report" / "plain" / "report.html").read_text()
    assert "all runs" in html and "heatmap" not in html and "fit failed" not in html


# ------------------------------------------------------------------ uncertainty, pairs, undetermined fits
def test_more_than_six_configurations_pair_the_best_with_each_other_unless_a_baseline_is_given(store, capsys):
    import json

    argv = ["--tracking-uri", store["uri"], "--sweep", "sw-main", "--no-report", "--json"]
    assert main(argv) == 0
    doc = json.loads(capsys.readouterr().out)
    best = doc["configurations"][0]["name"]
    assert best == "clip_eps=0.2 gamma=1.0 lam=0.95" and doc["paired"] is True  # the failed seed-2 job is left out
    assert doc["pair_mode"].startswith("the best against each other (8 configurations")
    assert [p["a"] for p in doc["pairs"]] == [best] * 7
    assert [p["b"] for p in doc["pairs"]] == [c["name"] for c in doc["configurations"][1:]]
    for p in doc["pairs"]:  # the best beats every other on both seeds
        assert p["prob_improvement"] == 1.0 and p["paired_wins"] == 2 and p["paired_difference"] > 0
    assert main(argv + ["--baseline", "lam=0.0 clip_eps=0.1 gamma=0.9"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert {p["b"] for p in doc["pairs"]} == {"clip_eps=0.1 gamma=0.9 lam=0.0"} and len(doc["pairs"]) == 7
    assert main(argv + ["--baseline", "algorithm.lam=0.95,gamma=1.0,clip_eps=0.2"]) == 0  # full keys, commas
    assert {p["b"] for p in json.loads(capsys.readouterr().out)["pairs"]} == {best}


@pytest.mark.parametrize("baseline, message", [
    ("lam=0.95", "--baseline 'lam=0.95' matches 4 configurations; configurations: clip_eps=0.2 gamma=1.0"),
    ("lam=0.5", "--baseline 'lam=0.5' matches no configuration"),
    ("seed=0", "'seed=0' is not key=value of a key that differs between the configurations (clip_eps, gamma, lam)"),
])
def test_a_baseline_that_names_no_single_configuration_is_one_line(store, capsys, baseline, message):
    assert main(["--tracking-uri", store["uri"], "--sweep", "sw-main", "--no-report", "--baseline", baseline]) == 2
    err = capsys.readouterr().err
    assert err.startswith("rlexp compare: error: ") and message in err and err.count("\n") == 1


def test_reps_and_bootstrap_seed_change_the_intervals_only(store, capsys):
    import json

    def doc(*extra):
        assert main(["--tracking-uri", store["uri"], "--sweep", "sw-main", "--no-report", "--json",
                     "--by", "algorithm.lam", *extra]) == 0
        return json.loads(capsys.readouterr().out)
    base, again, seeded, fewer = doc(), doc(), doc("--bootstrap-seed", "7"), doc("--reps", "200")
    assert base == again and base["estimators"]["reps"] == 10_000 and fewer["estimators"]["reps"] == 200
    for other in (seeded, fewer):
        a, b = base["configurations"][0], other["configurations"][0]
        assert a["mean"] == b["mean"] and a["iqm"] == b["iqm"] and a["mean_ci"] != b["mean_ci"]
    assert main(["--tracking-uri", store["uri"], "--no-report", "--reps", "0"]) == 2
    assert "--reps: expected a whole number ≥ 1, got '0'" in capsys.readouterr().err


def test_fits_the_data_do_not_determine_are_flagged(loaded, tmp_path):
    from rlexp.compare.fit import MIN_PAST_BEND, judge

    for g in loaded[2]:  # 40 iterations past C_mid at ~9 iterations: determined, with the spread over seeds
        fit = fit_runs(g.finished, per_seed=True)
        assert fit["determined"] and fit["reason"] is None and fit["past_bend"] >= MIN_PAST_BEND
        seeds = fit["per_seed"]
        assert len(seeds["A"]) == 2 and seeds["determined"] == [True, True] and seeds["A_sd"] < 0.05
        assert seeds["A_sd"] == pytest.approx(abs(seeds["A"][0] - seeds["A"][1]) / math.sqrt(2))
    short = []  # the same runs cut to 15 iterations (3 evaluations): the curve has barely bent over
    for r in loaded[0]:
        hist = {k: [(s, v) for s, v in h if s <= 15] for k, h in r.histories.items()}
        short.append(dataclasses.replace(r, histories=hist))
    groups = group_runs(short)
    fits = [fit_runs(g.finished) for g in groups if g.finished]
    assert fits and not any(f["determined"] for f in fits)
    assert all(f["past_bend"] < MIN_PAST_BEND and "past C_mid (needs 3: run longer)" in f["reason"] for f in fits)
    html = write_report(short, groups, tmp_path, metric="eval/reward_mean").read_text()
    assert html.count("undetermined (") == len(fits)
    fit = {"A": 1.385, "A_err": 944.6, "B": 50.0, "B_err": 3.0, "C_mid": 1e4, "C_mid_err": 10.0, "at_bound": ["B"]}
    ok, reason = judge(fit, past_bend=1)
    assert not ok and reason == ("B = 50 at its bound (0.01..50); A ± 944.6 exceeds |A| = 1.385; "
                                 "1 evaluation past C_mid (needs 3: run longer)")
    assert judge(dict(fit, A_err=0.01, at_bound=[]), past_bend=3) == (True, None)


def test_the_sigmoid_plot_labels_an_undetermined_fit_without_its_numbers(loaded):
    groups = loaded[2][:2]
    differing = differing_keys(loaded[2])
    from rlexp.compare.summary import fit_groups

    fits, points = fit_groups(groups, differing)
    first = groups[0].label(differing)
    fits[first] = dict(fits[first], determined=False, reason="B at its bound")
    fig = plots.sigmoid_fits(groups, differing, fits, points)
    labels = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert labels[0] == f"{first}: undetermined" and labels[1].startswith(f"{groups[1].label(differing)}: A=")
