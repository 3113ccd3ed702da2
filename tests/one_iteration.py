"""One RL iteration of a composed run on a *fixed* rollout batch, through a real Lightning Trainer
(shared by the data-parallel and micro-batching equivalence tests and their worker processes)."""
from __future__ import annotations

import lightning as L
from hydra.utils import instantiate

from fast_overrides import FAST
from rlexp.modules import iteration_loader
from rlexp.train import build_module, compose
from rlexp.warmstart import prepare_model_dir


def build(overrides: list[str]):
    cfg = compose(FAST + ["tracking=none", "trainer.max_steps=1"] + overrides)
    task = instantiate(cfg.task)
    model_dir, _ = prepare_model_dir(cfg.model, task, cfg.hardware)
    L.seed_everything(0, verbose=False)
    return cfg, build_module(cfg, task, model_dir)[0]


def one_iteration(overrides: list[str], batch):
    """The module after one iteration whose rollout is ``batch`` (this worker's share of it)."""
    cfg, module = build(overrides)
    module.collect_rollout = lambda: (batch, 1, None)
    module.grads = {}  # name -> the gradient each optimizer step applied (after DDP averaged it), per step
    inner = module._optimizer_step

    def recording(opt, params, name, bad):
        module.grads.setdefault(name, []).append(
            [p.grad.detach().clone() if p.grad is not None else None for p in params])
        return inner(opt, params, name, bad)
    module._optimizer_step = recording
    hw = cfg.hardware
    trainer = L.Trainer(max_epochs=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, accelerator=hw.accelerator, devices=hw.devices,
                        strategy=hw.strategy, use_distributed_sampler=False)
    trainer.fit(module, train_dataloaders=iteration_loader(1))
    return module
