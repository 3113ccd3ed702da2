"""The embedded tokenizer/model, loading through the HF path, and forward-pass alignment."""
from __future__ import annotations

import torch

from rlexp.core import logprobs_from_logits
from rlexp.models import (
    ValueModel, build_char_tokenizer, build_tiny_model, load_causal_lm, load_tokenizer, response_logits,
    response_logprobs, response_values,
)
from rlexp.rollout import collate_supervised


def _tiny(tmp_path=None):
    tok = build_char_tokenizer("0123456789+=")
    model = build_tiny_model(tok, hidden_size=32, intermediate_size=64, num_layers=1, num_heads=2, seed=0)
    if tmp_path is not None:
        model.save_pretrained(tmp_path)
        tok.save_pretrained(tmp_path)
    return tok, model


def test_char_tokenizer_roundtrip_and_specials(tmp_path):
    tok, _ = _tiny(tmp_path)
    ids = tok("07+45=")["input_ids"]
    assert len(ids) == 6 and tok.decode(ids) == "07+45="
    loaded = load_tokenizer(tmp_path)
    assert loaded("07+45=")["input_ids"] == ids
    assert loaded.pad_token_id == 0 and loaded.eos_token_id == 1 and loaded.padding_side == "left"


def test_tiny_model_is_seeded_and_loads_back_identically(tmp_path):
    tok, model = _tiny(tmp_path)
    _, again = _tiny()
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), again.state_dict().values()))
    loaded = load_causal_lm(tmp_path)
    ids = torch.tensor([tok("12+34=")["input_ids"]])
    torch.testing.assert_close(loaded(ids).logits, model(ids).logits)


def test_fp32_head_path_matches_model_logits():
    tok, model = _tiny()
    p, pm, r, m = collate_supervised(tok, ["12+34=", "99+01="], ["46", "100"])
    fast = response_logits(model, p, pm, r, m, fp32=True)
    plain = response_logits(model, p, pm, r, m, fp32=False)
    torch.testing.assert_close(fast, plain)
    # logits that score response token t come from position P-1+t of the full sequence
    full = model(torch.cat([p, r], 1)).logits
    torch.testing.assert_close(fast, full[:, p.shape[1] - 1:p.shape[1] - 1 + r.shape[1]])


def test_left_padding_does_not_change_logprobs():
    """A prompt padded on the left (position ids over real tokens) scores its response the same."""
    tok = build_char_tokenizer("abcdefgh0123456789+=")
    model = build_tiny_model(tok, hidden_size=32, intermediate_size=64, num_layers=2, num_heads=2, seed=1)
    p, pm, r, m = collate_supervised(tok, ["ab", "abcdefgh"], ["12", "3"])
    assert pm[0].tolist()[:6] == [0] * 6  # the short prompt is left-padded
    lp, _ = response_logprobs(model, p, pm, r, m)
    p1, pm1, r1, m1 = collate_supervised(tok, ["ab"], ["12"])
    lp1, _ = response_logprobs(model, p1, pm1, r1, m1)
    torch.testing.assert_close(lp[0, :3], lp1[0, :3], atol=1e-5, rtol=1e-5)


def test_value_model_copies_the_actor_trunk_and_aligns_with_logprobs():
    tok, model = _tiny()
    critic = ValueModel.from_causal_lm(model)
    assert torch.equal(critic.trunk.embed_tokens.weight, model.model.embed_tokens.weight)
    assert critic.trunk.embed_tokens.weight.data_ptr() != model.model.embed_tokens.weight.data_ptr()
    p, pm, r, m = collate_supervised(tok, ["12+34="], ["46"])
    v = response_values(critic, p, pm, r, m)
    assert v.shape == r.shape and torch.count_nonzero(v) == 0  # zero-initialised head
    fresh = ValueModel.from_causal_lm(model, reinit=True, seed=3)
    assert not torch.equal(fresh.trunk.embed_tokens.weight, model.model.embed_tokens.weight)


def test_logprobs_from_the_model_sum_to_the_sequence_likelihood():
    tok, model = _tiny()
    p, pm, r, m = collate_supervised(tok, ["12+34="], ["46"])
    lp, ent = response_logprobs(model, p, pm, r, m, with_entropy=True)
    full = torch.log_softmax(model(torch.cat([p, r], 1)).logits, -1)
    ref = sum(full[0, p.shape[1] - 1 + t, r[0, t]] for t in range(r.shape[1]))
    torch.testing.assert_close(lp.sum(), ref)
    assert ent.shape == lp.shape and (ent > 0).all()
    assert torch.allclose(logprobs_from_logits(response_logits(model, p, pm, r, m), r), lp)
