"""benchmarks/pipeline.py's pure pieces: the sides, the medians, the ratios, the bound, the targets and the table
(no timing asserted, no side run: each is a subprocess of a whole training run)."""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))

import pipeline as bench  # noqa: E402


def _row(s, generate=None, update=None, wait=None):
    return {"seconds_per_iteration": s, "iterations_per_second": round(1 / s, 3), "generate_s": generate,
            "wait_s": generate if wait is None else wait, "update_s": update}


def test_sides_cover_sync_at_one_and_two_threads_and_every_lag():
    sides = bench.make_sides(["grpo", "ppo", "peer", "smollm2"], [1, 2, 4])
    assert [n for n in sides if n.startswith("grpo")] == ["grpo_sync_t1", "grpo_sync_t2", "grpo_lag1", "grpo_lag2",
                                                         "grpo_lag4"]
    assert sides["ppo_lag4"] == bench.Side("ppo", "rlexp", "ppo", 4, 1)
    assert [n for n in sides if n.startswith("peer")] == ["peer_trl_t1", "peer_trl_t2", "peer_sync_t1", "peer_sync_t2",
                                                         "peer_lag1"]
    assert sides["peer_trl_t2"].tool == "trl" and sides["peer_trl_t2"].threads == 2
    assert [n for n in sides if n.startswith("smollm2")] == ["smollm2_sync_t1", "smollm2_sync_t2", "smollm2_lag1"]


def test_lagged_sides_use_one_trainer_thread_beside_the_generator():
    sides = bench.make_sides(["grpo"], [1])
    assert bench.threads_label(sides["grpo_sync_t2"]) == "2"
    assert bench.threads_label(sides["grpo_lag1"]) == "1 + 1"
    assert bench.threads_label(bench.Side("grpo", "rlexp", "grpo", 1, 2)) == "1 + 1"  # num_threads=2 too


def test_summarize_pools_the_runs_and_takes_medians():
    runs = [{"seconds": [1.0, 3.0], "generate": [0.4, 0.6], "wait": [0.1, 0.3], "update": [0.5, 0.7]},
            {"seconds": [2.0], "generate": [0.5], "wait": [0.2], "update": [0.6]}]
    s = bench.summarize(runs)
    assert s == {"timed_iterations": 3, "seconds_per_iteration": 2.0, "iterations_per_second": 0.5,
                 "generate_s": 0.5, "wait_s": 0.2, "update_s": 0.6}
    assert bench.summarize([{"seconds": [4.0]}])["wait_s"] is None  # TRL: no split
    assert bench.summarize([]) == {"timed_iterations": 0}


def test_speedup_is_iterations_per_second_over_the_base():
    assert bench.speedup(_row(0.5), _row(1.0)) == 2.0
    assert bench.speedup(None, _row(1.0)) is None and bench.speedup(_row(1.0), {"timed_iterations": 0}) is None


def test_ideal_is_the_sum_over_the_larger_phase_and_bound_names_the_larger_phase():
    assert bench.ideal(_row(1.0, generate=0.25, update=0.75)) == 1.33
    assert bench.ideal(_row(1.0, generate=0.5, update=0.5)) == 2.0
    assert bench.ideal(_row(1.0)) is None
    assert bench.bound(_row(1.0, generate=0.9, update=0.7, wait=0.2)) == "generation"
    assert bench.bound(_row(1.0, generate=0.3, update=0.99, wait=0.0)) == "update"
    assert bench.bound({"timed_iterations": 0}) is None


def test_ratios_take_the_fastest_sync_side_and_trls_faster_setting_as_base():
    sides = bench.make_sides(["grpo", "peer"], [1, 2])
    summary = {"grpo_sync_t1": _row(1.0, generate=0.4, update=0.6), "grpo_sync_t2": _row(0.8),
               "grpo_lag1": _row(0.64, 0.4, 0.64, wait=0.0), "grpo_lag2": _row(0.5, 0.4, 0.5, wait=0.0),
               "peer_trl_t1": _row(0.2), "peer_trl_t2": _row(0.3), "peer_sync_t1": _row(0.2), "peer_sync_t2": _row(0.25),
               "peer_lag1": _row(0.1, 0.1, 0.05, wait=0.05)}
    r = bench.ratios(summary, sides)
    assert r["grpo_base"] == "grpo_sync_t2" and r["peer_base"] == "peer_trl_t1"
    assert r["grpo_lag1_vs_base"] == 1.25 and r["grpo_lag1_vs_sync_t1"] == 1.56
    assert r["grpo_ideal_vs_sync_t1"] == 1.67
    assert r["grpo_lag1_bound"] == "update" and r["peer_lag1_bound"] == "generation"
    assert r["targets"]["grpo_lag_vs_sync"] == {"side": "grpo_lag2", "base": "grpo_sync_t2", "value": 1.6,
                                                 "target": 1.5, "met": True}
    assert r["targets"]["peer_rlexp_lag_vs_trl"]["value"] == 2.0
    table = bench.markdown_table(summary, sides, r)
    assert table.count("\n") == 2 + len(sides) - 1
    assert "| grpo_sync_t2 | 0 | 2 | 0.800 | 1.25 | – | – | – | base |" in table
    assert "| grpo_lag2 | 2 | 1 + 1 | 0.500 | 2.00 | 0.400 | 0.000 | 0.500 | 1.60 |" in table


def test_a_side_that_failed_leaves_its_ratios_empty():
    sides = bench.make_sides(["grpo"], [1])
    r = bench.ratios({"grpo_sync_t1": _row(1.0)}, sides)
    assert r["grpo_lag1_vs_base"] is None and r["targets"]["grpo_lag_vs_sync"]["met"] is None
    assert list(r["targets"]) == ["grpo_lag_vs_sync"]  # no peer group, no TRL target


def test_the_sides_run_rlexp_with_the_lag_and_without_writing_the_policy():
    sides = bench.make_sides(["grpo", "smollm2"], [2])
    over = bench.rlexp_overrides(sides["grpo_lag2"], 8, 0, None)
    assert "algorithm=grpo" in over and "rollout.off_policy_lag=2" in over and "hardware.num_threads=1" in over
    assert "trainer.save_policy=false" in over and "trainer.eval_every=8" in over
    smol = bench.rlexp_overrides(sides["smollm2_lag1"], 4, 0, None)
    assert "model=smollm2" in smol and "model.lora.enabled=true" in smol and "rollout.max_new_tokens=16" in smol
