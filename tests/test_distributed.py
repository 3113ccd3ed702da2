"""Data parallelism and micro-batching change nothing but the speed: the same loss and the same update
as one process with the whole batch. DDP runs for real: 2 CPU processes over gloo (hardware=ddp_cpu)."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from one_iteration import build, one_iteration

HERE = Path(__file__).resolve().parent
GRPO = ["algorithm=grpo", "algorithm.prompts_per_step=4", "algorithm.num_generations=4", "algorithm.minibatch_size=16",
        "algorithm.kl_coef=0.1", "algorithm.actor_lr=1e-3", "task.reward._target_=rlexp.tasks.arithmetic.partial_credit"]
CASES = {
    # two epochs over one minibatch: the old log-probs come from a separate pass, the second epoch is off-policy
    "grpo-token-mean": GRPO + ["algorithm.loss_agg=token-mean", "algorithm.ppo_epochs=2"],
    "grpo-seq-mean-token-mean": GRPO + ["algorithm.loss_agg=seq-mean-token-mean", "algorithm.ppo_epochs=2"],
    # one epoch: the single-pass path (old log-probs from the update's own forward); ScaleRL's pruning after
    # the update (pass_reward 0: every prompt is solved, on whichever worker its group was)
    "grpo-prompt-mean": GRPO + ["algorithm.loss_agg=prompt-mean", "algorithm.ppo_epochs=1",
                                "algorithm.no_positive_resampling=true", "algorithm.pass_reward=0.0"],
    # actor + critic, GAE, advantages whitened over the whole batch, KL in the reward
    "ppo-token-mean": ["algorithm.prompts_per_step=8", "algorithm.minibatch_size=8", "algorithm.ppo_epochs=2",
                       "algorithm.actor_lr=1e-3", "algorithm.critic_lr=1e-3", "algorithm.kl_coef=0.1",
                       "task.reward._target_=rlexp.tasks.arithmetic.partial_credit"],
}
# the losses each case logs, hence compares (GRPO: KL in the loss, no critic; PPO: critic, KL in the reward)
_GRPO_METRICS = ("train/policy_loss", "train/kl_loss", "train/grad_norm")
COMPARED_METRICS = {
    "grpo-token-mean": _GRPO_METRICS, "grpo-seq-mean-token-mean": _GRPO_METRICS, "grpo-prompt-mean": _GRPO_METRICS,
    "ppo-token-mean": ("train/policy_loss", "train/value_loss", "train/grad_norm", "train/critic_grad_norm"),
}


def _fixed_batch(overrides):
    """A rollout batch sampled once from the run's own policy (so that both sides train on the same data)."""
    from rlexp.rollout import generate_rollout
    cfg, module = build(overrides)
    torch.manual_seed(123)
    examples, idx = module.sample_prompts(0)
    return generate_rollout(module.actor, module.tokenizer, module.task, examples,
                            num_generations=cfg.algorithm.num_generations, max_new_tokens=6, prompt_index=idx)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _assert_same_update(got: dict, want_module, want_metrics: dict, case: str):
    """Same gradients at every optimizer step (the first to 1e-5), hence the same parameters, and the
    same losses.

    The parameters are compared to 1e-4 only: Adam's first step is ``lr·g/(|g|+ε)``, which turns a 1e-7
    difference in a near-zero gradient entry into a visible one (and is blind to the gradient's scale,
    which is why the gradients themselves are compared)."""
    optimized = {"train/policy_loss"} | {"train/value_loss"} & set(COMPARED_METRICS[case])  # actor (+ critic)
    assert set(want_module.grads) == set(got["grads"]) == optimized, (case, sorted(want_module.grads))
    for name, steps in want_module.grads.items():
        assert len(got["grads"][name]) == len(steps), (case, name)
        for k, (mine, theirs) in enumerate(zip(got["grads"][name], steps)):
            for i, (a, b) in enumerate(zip(mine, theirs)):
                if b is None:
                    assert a is None or not a.any(), (case, name, k, i)
                else:
                    tol = 1e-5 if k == 0 else 1e-4  # later steps start from parameters equal to 1e-4 only
                    torch.testing.assert_close(a, b, rtol=tol, atol=tol, msg=lambda m, c=case, n=name, k=k, i=i: f"{c}: {n} step {k} tensor {i}: {m}")
    for name, p in want_module.named_parameters():
        if p.requires_grad:
            torch.testing.assert_close(got["params"][name], p.detach(), rtol=0, atol=1e-4, msg=lambda m, c=case, n=name: f"{c}: {n}: {m}")
    for key in COMPARED_METRICS[case]:
        assert key in want_metrics and key in got["metrics"], (case, key, "not logged")
        assert got["metrics"][key] == pytest.approx(want_metrics[key], rel=1e-5, abs=1e-6), (case, key)


@pytest.mark.slow
def test_two_cpu_processes_make_the_update_of_one_process_with_the_whole_batch(tmp_path):
    batches, out = tmp_path / "batches", tmp_path / "out"
    batches.mkdir(), out.mkdir()
    single = {}
    for name, overrides in CASES.items():
        batch = _fixed_batch(overrides)
        torch.save(batch, batches / f"{name}.pt")
        module = one_iteration(overrides, batch)
        single[name] = (module, next(h for h in module.history if "train/policy_loss" in h))
    (tmp_path / "cases.json").write_text(json.dumps(CASES))
    env = {**os.environ, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(_free_port()), "WORLD_SIZE": "2",
           "NODE_RANK": "0", "PYTHONPATH": str(HERE)}
    procs = [subprocess.Popen([sys.executable, str(HERE / "ddp_worker.py"), str(tmp_path / "cases.json"), str(batches),
                               str(out)], env={**env, "LOCAL_RANK": str(r)}, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True) for r in range(2)]
    logs = [p.communicate(timeout=600)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), "\n".join(log[-3000:] for log in logs)
    for name, (module, metrics) in single.items():
        _assert_same_update(torch.load(out / f"{name}.pt", weights_only=False), module, metrics, name)
        # no-positive-resampling: every worker removes every worker's solved prompts, so the pools stay equal
        removed = [json.loads((out / f"{name}.removed{r}.json").read_text()) for r in range(2)]
        assert removed == [sorted(module.pool.removed)] * 2, (name, removed)
    assert len(single["grpo-prompt-mean"][0].pool.removed) == 4  # the 4 prompts, 2 on each worker


@pytest.mark.parametrize("case", ["grpo-token-mean", "grpo-prompt-mean", "ppo-token-mean"])
def test_micro_batches_accumulate_to_the_whole_minibatch_update(case):
    """Gradient accumulation inside one process (hardware.micro_batch_size) changes nothing but memory."""
    overrides = CASES[case]
    batch = _fixed_batch(overrides)
    whole = one_iteration(overrides, batch)
    micro = one_iteration(overrides + ["hardware.micro_batch_size=4"], batch)
    assert micro.micro_batch_size == 4 and len(micro._micro_slices(batch.size)) > 1
    metrics = next(h for h in whole.history if "train/policy_loss" in h)
    got = {"params": dict(micro.named_parameters()), "grads": micro.grads,
           "metrics": next(h for h in micro.history if "train/policy_loss" in h)}
    _assert_same_update(got, whole, metrics, case)


# ---------------------------------------------------------------------------------------------- config
@pytest.mark.parametrize("hardware", ["cpu", "gpu", "ddp", "ddp_cpu", "fsdp", "multinode"])
def test_every_hardware_option_composes_and_validates(hardware):
    from rlexp.config import validate
    from rlexp.train import compose
    cfg = compose([f"hardware={hardware}", "algorithm.prompts_per_step=64", "algorithm.minibatch_size=32"])
    validate(cfg)
    assert cfg.hardware.name == hardware and "micro_batch_size" in cfg.hardware


@pytest.mark.parametrize("overrides, message", [
    (["hardware=ddp_cpu", "algorithm.prompts_per_step=63", "algorithm.minibatch_size=63"],
     "algorithm.prompts_per_step=63 must be a multiple of the number of workers"),
    (["hardware=ddp_cpu", "hardware.devices=4", "algorithm.minibatch_size=2"],
     "algorithm.minibatch_size=2 must be a multiple of the number of workers"),
    (["hardware=ddp_cpu", "algorithm=scalerl", "algorithm.minibatch_size=8"],
     "leaves 4 completions per worker"),
    (["hardware.micro_batch_size=5"], "hardware.micro_batch_size=5 must divide the per-worker minibatch"),
    (["hardware.micro_batch_size=0"], "hardware.micro_batch_size"),
    (["tracking=server"], "tracking=server needs the server's URL"),
])
def test_distribution_settings_that_cannot_work_are_refused_at_start_up(overrides, message, monkeypatch):
    from rlexp.config import ConfigError, validate
    from rlexp.train import compose
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)").replace("+", r"\+")):
        validate(compose(overrides))


def test_slurm_launcher_takes_its_resources_from_the_hardware_group():
    """`hydra/launcher=slurm` (Hydra's submitit plugin): nodes and tasks follow the hardware group."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from omegaconf import OmegaConf
    conf = HERE.parent / "conf"
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(conf), version_base=None):
        cfg = hydra_compose("config", overrides=["hardware=multinode", "hardware.num_nodes=4",
                                                 "hydra/launcher=slurm", "hydra.launcher.partition=gpu"],
                            return_hydra_config=True)
        launcher = OmegaConf.to_container(cfg.hydra.launcher, resolve=False)
        assert cfg.hydra.launcher._target_.endswith("SlurmLauncher")
        assert cfg.hydra.launcher.nodes == 4 and cfg.hydra.launcher.tasks_per_node == 8
        assert cfg.hydra.launcher.gpus_per_node == 8 and cfg.hydra.launcher.partition == "gpu"
        assert launcher["nodes"] == "${hardware.num_nodes}"
    GlobalHydra.instance().clear()


# ---------------------------------------------------------------------------------------------- the CLI
@pytest.mark.slow
def test_a_real_ddp_cpu_run_through_the_cli_logs_one_mlflow_run(tmp_path):
    """`rlexp train hardware=ddp_cpu`: Lightning starts the second worker by re-running the command;
    only the first worker talks to MLflow, so there is exactly one run, with every iteration's metrics,
    and the trained policy is saved once, loadable with plain transformers."""
    from fast_overrides import FAST
    from mlflow.tracking import MlflowClient
    from transformers import AutoModelForCausalLM
    over = [o for o in FAST if not o.startswith("algorithm.")]
    res = subprocess.run([sys.executable, "-m", "rlexp", "train", "hardware=ddp_cpu", "algorithm=grpo",
                          "algorithm.prompts_per_step=4", "algorithm.num_generations=4", "algorithm.minibatch_size=8",
                          "hydra.run.dir=run", *over], cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-4000:]
    assert "GLOBAL_RANK: 1, MEMBER: 2/2" in res.stderr  # two real worker processes
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("rlexp").experiment_id])
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    assert [m.step for m in client.get_metric_history(runs[0].info.run_id, "train/reward_mean")] == [1, 2]
    assert [m.step for m in client.get_metric_history(runs[0].info.run_id, "eval/reward_mean")] == [0, 1, 2]
    policy = AutoModelForCausalLM.from_pretrained(tmp_path / "run" / "policy")
    assert (tmp_path / "run" / "policy" / "model.safetensors").is_file() and policy.config.hidden_size == 128
