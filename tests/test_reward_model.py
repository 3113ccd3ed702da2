"""A learned reward model as the task's reward function (used by the TRL PPO peer benchmark)."""
from __future__ import annotations

import pytest
import torch
from transformers import LlamaConfig, LlamaForSequenceClassification

from fast_overrides import FAST
from rlexp.models import ModelLoadError, build_char_tokenizer
from rlexp.tasks.reward_model import RewardModel
from rlexp.train import compose, run


def _save_rm(path, num_labels=1):
    tok = build_char_tokenizer("0123456789+=")
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                      num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=64,
                      num_labels=num_labels, pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
    torch.manual_seed(0)
    model = LlamaForSequenceClassification(cfg)
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return model, tok


def test_scores_are_the_models_logit_at_the_last_token(tmp_path):
    model, tok = _save_rm(tmp_path)
    rm = RewardModel(str(tmp_path), batch_size=2)
    prompts, completions, finished = ["07+45=", "01+01=", "99+99="], ["52", "2", "1980"], [True, False, True]
    scores = rm(prompts, completions, finished=finished, targets=["52", "2", "198"])
    model.eval()
    for p, c, f, s in zip(prompts, completions, finished, scores):
        ids = tok(p + c, add_special_tokens=False)["input_ids"] + ([tok.eos_token_id] if f else [])
        with torch.no_grad():
            want = model(input_ids=torch.tensor([ids])).logits[0, 0].item()
        assert s == pytest.approx(want, abs=1e-5)
    # the EOS is read: an ended completion scores differently from the same text cut off
    assert rm(["07+45="], ["52"], finished=[False])[0] != pytest.approx(scores[0], abs=1e-6)


def test_bad_reward_model_directories_are_refused(tmp_path):
    with pytest.raises(ModelLoadError, match="task.reward.path=.*no such directory"):
        RewardModel(str(tmp_path / "missing"))
    _save_rm(tmp_path / "two", num_labels=2)
    with pytest.raises(ModelLoadError, match="num_labels=1"):
        RewardModel(str(tmp_path / "two"))


def test_ppo_trains_against_a_reward_model(tmp_path, in_tmp):
    _save_rm(tmp_path / "rm")
    cfg = compose(FAST + ["tracking=none", "trainer.max_steps=1", "task.reward._target_=rlexp.tasks.reward_model.RewardModel",
                          "task.reward._partial_=false", f"+task.reward.path={tmp_path / 'rm'}"])
    module = run(cfg)
    logged = next(h for h in module.history if "train/reward_mean" in h)
    assert logged["train/reward_std"] > 0  # real, varying scores, not the verifier's 0/1
    assert isinstance(module.task.reward, RewardModel)
