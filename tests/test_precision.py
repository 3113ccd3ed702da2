"""``hardware.precision`` on a CPU: bf16-mixed autocasts the training passes (scoring and update), not the sampler;
FP32 logits stay FP32; a CPU without bf16 instructions is refused in one line; bf16-true runs, warned about.

The runs are real (`rlexp.train.run`, what ``rlexp train`` calls, 2 PPO iterations on the tiny model with actor,
critic and reference); forward hooks on each model's first attention projection record the dtype it computed in
and which step of the iteration called it. Only the CPU without bf16 is mocked (this machine has bf16).
"""
from __future__ import annotations

import logging
import math
from collections import defaultdict

import lightning as L
import pytest
import torch

from fast_overrides import FAST
from rlexp.config import precision
from rlexp.config.validate import check_machine
from rlexp.train import compose, run

PHASES = ("_generate", "make_experience", "update", "run_eval")  # rollout, scoring, update, evaluation


class DtypeProbe(L.Callback):
    """Records ``(model, phase) -> {dtype of the first q_proj's output}`` over the whole fit."""

    def __init__(self):
        self.seen: dict[tuple[str, str], set[torch.dtype]] = defaultdict(set)
        self.phase = "outside"

    def on_fit_start(self, trainer, pl_module):
        for name in PHASES:
            self._label(pl_module, name)
        models = {"actor": pl_module.actor, "reference": pl_module.reference, "critic": pl_module.critic}
        for label, model in models.items():
            proj = next(m for n, m in model.named_modules() if n.endswith("layers.0.self_attn.q_proj"))
            proj.register_forward_hook(lambda mod, inp, out, label=label: self.seen[label, self.phase].add(out.dtype))

    def _label(self, module, name):
        method = getattr(module, name)

        def labelled(*args, **kwargs):
            outer, self.phase = self.phase, name
            try:
                return method(*args, **kwargs)
            finally:
                self.phase = outer
        setattr(module, name, labelled)


def _train(overrides, callbacks=()):
    return run(compose([*FAST, "tracking=none", *overrides]), callbacks=list(callbacks))


def _finite_train_metrics(module) -> dict[str, float]:
    rows = [h for h in module.history if "train/policy_loss" in h]
    assert len(rows) == 2
    bad = {k: v for h in rows for k, v in h.items() if k.startswith("train/") and not math.isfinite(v)}
    assert not bad, bad
    return rows


@pytest.mark.skipif(precision.cpu_bf16_support() is None, reason="this CPU has no bf16 instructions")
def test_bf16_mixed_autocasts_scoring_and_update_not_the_sampler(in_tmp, caplog):
    probe = DtypeProbe()
    with caplog.at_level(logging.INFO, logger="rlexp"):
        module = _train(["hardware.precision=bf16-mixed"], [probe])
    bf16, fp32 = {torch.bfloat16}, {torch.float32}
    seen = dict(probe.seen)
    # rollouts and evaluations (also those inside training_step) sample at the weights' dtype
    assert seen["actor", "_generate"] == fp32 and seen["actor", "run_eval"] == fp32
    # π_old, π_ref and the values (no-grad scoring passes), and the update's forwards: in bf16
    assert seen["actor", "make_experience"] == bf16
    assert seen["reference", "make_experience"] == bf16
    assert seen["critic", "make_experience"] == bf16
    assert seen["actor", "update"] == bf16 and seen["critic", "update"] == bf16
    assert {p for _, p in seen} <= set(PHASES)  # no forward outside the four
    assert all(p.dtype == torch.float32 for p in module.actor.parameters())  # float32 master weights
    rows = _finite_train_metrics(module)
    # the bf16 trainer against the float32 sampler (both float32: ~1e-14 on this model)
    assert all(r["train/rollout_mismatch_kl"] > 1e-9 for r in rows), [r["train/rollout_mismatch_kl"] for r in rows]
    line = next(r.getMessage() for r in caplog.records if r.getMessage().startswith("hardware: "))
    assert "precision bf16-mixed" in line and f"CPU bf16: {precision.cpu_bf16_support()}" in line, line


def test_fp32_logits_stay_fp32_under_autocast():
    """``model.fp32_logits``: the LM head's matmul in float32 under bf16 autocast; without it, bf16 logits."""
    from rlexp.models import build_char_tokenizer, build_tiny_model, response_logits

    tok = build_char_tokenizer("0123456789+=")
    model = build_tiny_model(tok, hidden_size=32, intermediate_size=64, num_layers=1, num_heads=2, seed=0)
    ids = torch.tensor([[3, 4, 12, 5]])
    args = (ids[:, :2], torch.ones(1, 2), ids[:, 2:], torch.ones(1, 2))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        kept = response_logits(model, *args, fp32=True)
        low = response_logits(model, *args, fp32=False)
    assert kept.dtype == torch.float32 and low.dtype == torch.bfloat16
    exact = response_logits(model, *args, fp32=True)  # no autocast at all
    assert 0 < (kept - exact).abs().max() < 0.05  # the trunk ran in bf16, the head did not


@pytest.mark.parametrize("setting", ["bf16-mixed", "bf16-true"])
def test_a_cpu_without_bf16_is_refused_in_one_line(setting, monkeypatch, in_tmp, capsys):
    from rlexp.cli import main

    monkeypatch.setattr(precision, "cpu_bf16_support", lambda: None)  # what this machine cannot be
    with pytest.raises(SystemExit) as e:
        main(["train", *FAST, "tracking=none", f"hardware.precision={setting}"])
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert e.value.code == 2
    assert line.startswith(f"rlexp: config error: hardware.precision={setting}: this CPU has no bf16 instructions"), line
    assert line.endswith("use hardware.precision=32-true"), line
    check_machine(compose(["hardware.precision=32-true"]))  # float32 passes on that CPU
    monkeypatch.setattr(precision, "cpu_bf16_support", lambda: "avx512_bf16")
    check_machine(compose([f"hardware.precision={setting}"]))  # and bf16 on one with the instructions


def test_the_detected_bf16_instructions_are_those_of_proc_cpuinfo():
    flags = precision._cpuinfo_flags()
    if not flags:
        pytest.skip("no /proc/cpuinfo")
    expected = "amx_bf16" if "amx_bf16" in flags else "avx512_bf16" if "avx512_bf16" in flags else None
    if expected is None and "bf16" in flags:
        expected = "bf16"  # ARM's Features
    assert precision.cpu_bf16_support() == expected


def test_the_startup_line_recommends_bf16_mixed_for_a_real_model(monkeypatch):
    monkeypatch.setattr(precision, "cpu_bf16_support", lambda: "avx512_bf16")
    fp32 = compose(["hardware.precision=32-true"]).hardware
    line = precision.startup_line(fp32, "smollm2", cuda=False)
    assert line.startswith("hardware: cpu × 1, precision 32-true") and "CPU bf16: avx512_bf16" in line, line
    assert "hardware.precision=bf16-mixed" in line
    assert "bf16-mixed" not in precision.startup_line(fp32, "tiny", cuda=False)  # too small to gain
    mixed = compose(["hardware.precision=bf16-mixed"]).hardware
    assert "hardware.precision=bf16-mixed:" not in precision.startup_line(mixed, "smollm2", cuda=False)
    monkeypatch.setattr(precision, "cpu_bf16_support", lambda: None)
    assert precision.startup_line(fp32, "smollm2", cuda=False).endswith("CPU bf16: none")


@pytest.mark.skipif(precision.cpu_bf16_support() is None, reason="this CPU has no bf16 instructions")
def test_bf16_true_trains_bf16_weights_and_says_what_it_costs(in_tmp, caplog):
    with caplog.at_level(logging.INFO, logger="rlexp"):
        module = _train(["hardware.precision=bf16-true"])
    assert all(p.dtype == torch.bfloat16 for p in module.actor.parameters())
    _finite_train_metrics(module)
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any(w.startswith("hardware.precision=bf16-true keeps the weights and AdamW's state in bf16") for w in warned)


def test_the_warm_start_of_another_precision_is_another_cache_entry(tmp_path):
    from rlexp.tasks import ArithmeticTask
    from rlexp.warmstart import made_of

    model, task = compose([]).model, ArithmeticTask(max_operand=9, num_eval=10)
    fp32 = made_of(tmp_path, model, task)
    assert "precision" not in fp32 and made_of(tmp_path, model, task, "32-true") == fp32  # the keys cached so far
    assert made_of(tmp_path, model, task, "bf16-mixed") == {**fp32, "precision": "bf16-mixed"}
