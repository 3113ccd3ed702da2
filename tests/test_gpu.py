"""The GPU paths (hardware=gpu, bf16 autocast), run where CUDA is present and skipped elsewhere.

These cannot run on the CPU machines of CI; run them on a GPU machine with `pytest -m gpu`."""
from __future__ import annotations

import math

import pytest
import torch

from fast_overrides import FAST
from rlexp.train import compose, run

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]


@pytest.mark.parametrize("algorithm", ["ppo", "grpo"])
def test_bf16_mixed_training_on_one_gpu(algorithm, in_tmp):
    module = run(compose(FAST + ["tracking=none", "hardware=gpu", f"algorithm={algorithm}",
                                 "algorithm.prompts_per_step=8", "algorithm.minibatch_size=8"]))
    assert next(module.actor.parameters()).device.type == "cuda"
    logged = [h for h in module.history if "train/policy_loss" in h]
    assert logged and all(math.isfinite(h["train/policy_loss"]) for h in logged)
    assert math.isfinite(module.last_eval["eval/reward_mean"])


def test_fp32_logits_under_bf16_autocast():
    """ScaleRL's FP32 logits: the LM head runs in float32 even inside a bf16 autocast region."""
    from rlexp.models import build_char_tokenizer, build_tiny_model, response_logits
    tok = build_char_tokenizer("0123456789+=")
    model = build_tiny_model(tok, hidden_size=32, intermediate_size=64, num_layers=1, num_heads=2, seed=0).cuda()
    ids = torch.randint(2, len(tok), (4, 6), device="cuda")
    with torch.autocast("cuda", dtype=torch.bfloat16):
        logits = response_logits(model, ids, torch.ones_like(ids), ids, torch.ones(4, 6, device="cuda"), fp32=True)
    assert logits.dtype == torch.float32
