"""benchmarks/smollm2_grpo.py's pure pieces: the side order, the medians, the ratios and the table (no timing
asserted, no model run: the sides themselves need SmolLM2 and take minutes)."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))

import smollm2_grpo as bench  # noqa: E402


def _run(steps, rss=100.0):
    return {"iterations": [{"step_s": s, "generate_s": g, "tokens": n} for s, g, n in steps], "peak_rss_mb": rss}


def test_side_order_reverses_every_other_round():
    assert bench.side_order(["a", "b", "c"], 0) == ["a", "b", "c"]
    assert bench.side_order(["a", "b", "c"], 1) == ["c", "b", "a"]
    assert bench.side_order(["a", "b", "c"], 2) == ["a", "b", "c"]


def test_summarize_leaves_out_the_warmup_and_takes_medians():
    runs = [_run([(100.0, 90.0, 10), (10.0, 4.0, 40), (12.0, 6.0, 60)], rss=300.0),
            _run([(99.0, 1.0, 1), (14.0, 8.0, 40)], rss=500.0)]
    s = bench.summarize(runs, warmup=1)
    assert s["timed_iterations"] == 3
    assert s["seconds_per_iteration"] == 12.0
    assert s["generate_s"] == 6.0
    assert s["update_s"] == 6.0  # the iteration minus generation, per iteration: 6, 6, 6
    assert s["generate_tokens_per_s"] == 10.0  # per iteration 10, 10, 5
    assert s["tokens_per_iteration"] == 40
    assert s["peak_rss_mb"] == 500.0  # the largest
    assert s["generate_share"] == 0.5
    assert bench.summarize([_run([(1.0, 0.5, 1)])], warmup=1) == {"timed_iterations": 0}


def test_ratios_are_the_issues_targets():
    summary = {"rlexp_hf_fp32": {"seconds_per_iteration": 60.0, "generate_tokens_per_s": 30.0},
               "rlexp_vllm_fp32": {"seconds_per_iteration": 30.0, "generate_tokens_per_s": 90.0},
               "rlexp_vllm_bf16": {"seconds_per_iteration": 20.0, "generate_tokens_per_s": 100.0},
               "trl_fp32": {"seconds_per_iteration": 50.0}, "trl_bf16": {"seconds_per_iteration": 80.0}}
    r = bench.ratios(summary)
    assert r["vllm_over_hf_generate_tokens_per_s_fp32"] == 3.0
    assert r["vllm_over_hf_generate_tokens_per_s_bf16"] is None  # rlexp_hf_bf16 not measured
    assert r["trl_fp32_over_rlexp_vllm_bf16_seconds_per_iteration"] == 2.5
    assert r["fastest_trl_over_rlexp_vllm_bf16"] == 2.5  # TRL's faster side (fp32 here)
    assert r["trl_fp32_over_bf16_seconds_per_iteration"] == pytest.approx(0.62)
    assert r["rlexp_hf_fp32_over_bf16_seconds_per_iteration"] is None


def test_markdown_table_has_a_row_per_side_and_the_failures():
    summary = {"rlexp_hf_fp32": bench.summarize([_run([(9.0, 9.0, 9), (60.0, 40.0, 2000)], rss=2048.4)])}
    table = bench.markdown_table(summary, {"trl_bf16": "RuntimeError: no bf16"})
    lines = table.splitlines()
    assert len(lines) == 4
    assert lines[2] == "| rlexp_hf_fp32 | 60.0 | 40.0 | 20.0 | 67% | 50.0 | 2000 | 2048 | 1 | — |"
    assert lines[3].startswith("| trl_bf16 | failed: RuntimeError: no bf16 |")


def test_cpu_seconds_are_summarized_where_every_iteration_has_them():
    run = _run([(9.0, 9.0, 9), (60.0, 40.0, 2000), (50.0, 30.0, 2000)])
    assert "cpu_seconds_per_iteration" not in bench.summarize([run])
    for i, c in zip(run["iterations"], (1.0, 20.0, 30.0)):
        i["cpu_s"] = c
    s = bench.summarize([run])
    assert s["cpu_seconds_per_iteration"] == 25.0
    assert bench.markdown_table({"trl_fp32": s}).splitlines()[2].endswith("| 2 | 25.0 |")


def test_side_lines_reads_the_per_side_lines_of_a_saved_stdout():
    text = ('{"side": "trl_fp32", "iterations": [], "peak_rss_mb": 1, "round": 0}\nnoise\n'
            '{"benchmark": "smollm2_grpo", "summary": {}}\n')
    assert [d["side"] for d in bench.side_lines(text)] == ["trl_fp32"]
