"""The benchmark scripts' measuring pieces (benchmarks/): they must measure what they say they do.
Speed itself is never asserted here (shared, noisy machines): only that the instruments are right."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

BENCH = Path(__file__).resolve().parent.parent / "benchmarks"
sys.path.insert(0, str(BENCH))

from common import GenerateCounter, iteration_seconds, prepare_weights  # noqa: E402

WARM = ["model.warmstart.max_steps=60", "model.warmstart.eval_every=60"]  # the FAST warm start


def test_iteration_seconds_leave_out_the_first_and_last_iteration():
    # iteration i runs from starts[i] to starts[i+1]; the first (warm-up) is dropped and the last (final
    # eval inside it) has no next start: 5 iterations give 3 samples
    assert iteration_seconds([0.0, 5.0, 6.0, 8.0, 20.0]) == [1.0, 2.0, 12.0]


def test_generate_counter_counts_tokens_up_to_and_including_eos():
    from rlexp.models import build_char_tokenizer, build_tiny_model
    tok = build_char_tokenizer("0123456789+=")
    model = build_tiny_model(tok, hidden_size=16, intermediate_size=32, num_layers=1, num_heads=2, seed=0)
    counter = GenerateCounter(tok.eos_token_id, tok.pad_token_id)
    prompts = tok(["01+02=", "07+45="], return_tensors="pt", add_special_tokens=False)
    with counter.installed():
        torch.manual_seed(0)
        out = model.generate(**prompts, do_sample=True, max_new_tokens=6, pad_token_id=tok.pad_token_id,
                             eos_token_id=tok.eos_token_id)
    gen = out[:, 6:].tolist()
    want = sum(r.index(tok.eos_token_id) + 1 if tok.eos_token_id in r else len(r) for r in gen)
    assert counter.calls and counter.calls[0][1] == want
    assert counter.tokens_between(0.0, float("inf")) == want
    assert counter.tokens_between(0.0, counter.calls[0][0]) == 0
    assert type(model).generate.__name__ == "generate" and counter.installed  # uninstalled after the block


def test_peak_memory_of_a_subprocess_is_its_own():
    """ru_maxrss would report the parent's peak in a child (Linux keeps it over fork+exec)."""
    ballast = bytearray(600 * 1024 * 1024)  # the parent's peak is now > 600 MiB
    ballast[::4096] = b"x" * len(ballast[::4096])
    code = f"import sys; sys.path.insert(0, {str(BENCH)!r}); from common import peak_rss_mb; print(peak_rss_mb())"
    child = float(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout)
    assert 0 < child < 300
    del ballast


def test_floor_and_rlexp_sides_time_real_iterations(tmp_path, in_tmp):
    import floor
    from peer_trl import run_side
    weights = prepare_weights(tmp_path, 0, WARM)
    assert (weights["reward_model"] / "config.json").is_file()
    assert len(floor.floor_round("grpo", weights, 4, 0)) == 2
    counter = GenerateCounter(1, 0)
    for side in ("rlexp_grpo", "rlexp_ppo"):
        r = run_side(side, weights, 4, 0, 1, counter)
        assert len(r["seconds"]) == 2 and all(s > 0 for s in r["seconds"])
        assert r["tokens"] > 0 and r["window"] > 0


def test_trl_sides_run_the_same_shape(tmp_path, in_tmp):
    pytest.importorskip("trl", reason="the peer benchmark's extra: pip install -e '.[bench]'")
    from peer_trl import run_side
    weights = prepare_weights(tmp_path, 0, WARM)
    counter = GenerateCounter(1, 0)
    for side in ("trl_grpo", "trl_ppo"):
        r = run_side(side, weights, 4, 0, 1, counter)
        assert len(r["seconds"]) == 2 and r["tokens"] > 0
