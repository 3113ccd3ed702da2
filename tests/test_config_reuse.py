"""One home per block (issue 14 item 4): the LoRA, warm-start and micro-batch keys are written in one file
each and composed into every model / hardware option by Hydra defaults, at the same keys as before."""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from omegaconf import OmegaConf

from rlexp.train import CONF_DIR, compose

CONF = Path(CONF_DIR)
MODELS = sorted(p.stem for p in (CONF / "model").glob("*.yaml"))
HARDWARE = sorted(p.stem for p in (CONF / "hardware").glob("*.yaml"))
# (the shared file, the key path of its block in the composed config, a key that only its block has)
BLOCKS = (("model/lora/default.yaml", "model.lora", "target_modules"),
          ("model/warmstart/default.yaml", "model.warmstart", "target_accuracy"),
          ("hardware/micro_batch/default.yaml", "hardware", "micro_batch_size"))


def _keys(node) -> set[str]:
    if isinstance(node, dict):
        return set(node) | {k for v in node.values() for k in _keys(v)}
    return set()


@pytest.mark.parametrize("shared,_path,key", BLOCKS)
def test_each_block_is_written_in_one_file(shared, _path, key):
    holders = sorted(p.relative_to(CONF).as_posix() for p in CONF.rglob("*.yaml")
                     if p.parent.name != "sweeps" and key in _keys(yaml.safe_load(p.read_text()) or {}))
    # a task's own warm-start values (task/warmstart/<task>.yaml) override the block's, as a model file's do
    assert [h for h in holders if not h.startswith("task/warmstart/")] == [shared]


def test_every_option_composes_the_shared_blocks_at_the_same_keys():
    lora = OmegaConf.load(CONF / "model/lora/default.yaml")
    micro = OmegaConf.load(CONF / "hardware/micro_batch/default.yaml")
    assert MODELS == ["hf", "smollm2", "tiny"] and len(HARDWARE) == 6
    for model in MODELS:
        cfg = compose([f"model={model}"])
        assert cfg.model.lora == lora and cfg.model.name == model
    for hardware in HARDWARE:
        cfg = compose([f"hardware={hardware}"])
        assert cfg.hardware.micro_batch_size == micro.micro_batch_size and cfg.hardware.name == hardware
    cfg = compose(["model=hf", "model.lora.r=4", "model.warmstart.max_steps=7", "hardware=ddp",
                   "hardware.micro_batch_size=2"])  # the overrides of the tests and the README still work
    assert (cfg.model.lora.r, cfg.model.warmstart.max_steps, cfg.hardware.micro_batch_size) == (4, 7, 2)


def test_each_model_keeps_its_warm_start_values():
    """The values each model file had before the warm-start block moved to one file."""
    expected = {"tiny": dict(enabled=True, lr=1e-3, warmup_steps=100, batch_size=64, max_steps=4000),
                "hf": dict(enabled=False, lr=1e-4, warmup_steps=20, batch_size=16, max_steps=200),
                "smollm2": dict(enabled=False, lr=1e-5, warmup_steps=20, batch_size=16, max_steps=200)}
    for model, values in expected.items():
        warmstart = OmegaConf.to_container(compose([f"model={model}"]).model.warmstart)
        assert warmstart == {**values, "eval_every": 25, "target_accuracy": 0.25}, model
