"""The off-policy pipeline (``rollout.off_policy_lag = k``): the generator process, the exact lag, reproducible
runs, the decoupled objective's weights, a generator that dies, resume with batches in flight, DDP.

The generator is a real forked process everywhere; the runs are real Lightning fits of the tiny model."""
from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import lightning as L
import pytest
import torch
from mlflow.tracking import MlflowClient

from fast_overrides import FAST
from rlexp import core
from rlexp.cli import main
from rlexp.models import response_logits
from rlexp.rollout.pipeline import GeneratorDied, OffPolicyGenerator, needed_version, trainer_threads
from rlexp.train import compose, run

LAG = 2
BASE = [o for o in FAST if not o.startswith(("trainer.max_steps", "trainer.eval_every", "algorithm.minibatch_size"))] + [
    "algorithm=grpo", f"rollout.off_policy_lag={LAG}", "trainer.eval_every=3", "algorithm.minibatch_size=16",
    "task.reward._target_=rlexp.tasks.arithmetic.partial_credit"]  # a reward with signal from the first iteration


# ---------------------------------------------------------------------------------------------- the process
def _weights_value(box):  # produce: what weights the generator holds when it samples batch j
    return lambda j: (j, float(box["w"]))


def _drive(gen: OffPolicyGenerator, steps: int) -> list:
    """The trainer's side of the protocol: take batch i, 'update', send version i + 1."""
    got = []
    for i in range(steps):
        got.append(gen.get(i))
        gen.send(i + 1, float(i + 1))
    return got


@pytest.mark.parametrize("lag", [1, 2, 4])
def test_the_batch_of_iteration_i_is_sampled_with_the_weights_of_iteration_i_minus_k_exactly(lag):
    box = {"w": 0.0}
    gen = OffPolicyGenerator(_weights_value(box), lambda v: box.__setitem__("w", v), lag=lag, start=0, first=0,
                             stop=10)
    gen.start()
    try:
        got = _drive(gen, 10)
    finally:
        gen.close()
    assert [p.iteration for p in got] == list(range(10))
    assert [p.version for p in got] == [max(0, i - lag) for i in range(10)]
    # what the child sampled with is the version it reports: the weights of iteration i - k
    assert [p.result for p in got] == [(i, float(max(0, i - lag))) for i in range(10)]
    assert [needed_version(i, lag, 0) for i in range(10)] == [p.version for p in got]


def test_a_resumed_generator_starts_from_the_checkpointed_version_and_the_buffered_batches():
    box = {"w": 5.0}  # the trainer resumed at iteration 5: version 5 is what the fork holds
    gen = OffPolicyGenerator(_weights_value(box), lambda v: box.__setitem__("w", v), lag=2, start=5, first=7, stop=10)
    from rlexp.rollout.pipeline import Produced
    gen.put_back(Produced(5, 3, (5, 3.0)))
    gen.put_back(Produced(6, 4, (6, 4.0)))
    gen.start()
    try:
        got = [gen.get(5)]
        gen.send(6, 6.0)
        got.append(gen.get(6))
        gen.send(7, 7.0)
        got += [gen.get(7), gen.get(8)]
        gen.send(8, 8.0)
        got.append(gen.get(9))
    finally:
        gen.close()
    assert [(p.iteration, p.version) for p in got] == [(5, 3), (6, 4), (7, 5), (8, 6), (9, 7)]
    assert [p.result[1] for p in got] == [3.0, 4.0, 5.0, 6.0, 7.0]


def _raises_at_3(j):
    if j == 3:
        raise ValueError("bad prompt row")
    return j


def test_an_exception_in_the_generator_is_raised_in_the_trainer_naming_where():
    gen = OffPolicyGenerator(_raises_at_3, lambda v: None, lag=1, start=0, first=0, stop=10)
    gen.start()
    try:
        with pytest.raises(ValueError, match=r"^rollout generator \(iteration 3\): bad prompt row$"):
            _drive(gen, 10)
    finally:
        gen.close()
    assert gen.process is None


def _slow(j):
    time.sleep(30)
    return j


def test_a_killed_generator_stops_the_trainer_at_once_naming_it():
    gen = OffPolicyGenerator(_slow, lambda v: None, lag=1, start=0, first=0, stop=4)
    gen.start()
    pid = gen.pid
    try:
        os.kill(pid, signal.SIGKILL)
        t0 = time.monotonic()
        with pytest.raises(GeneratorDied) as e:
            gen.get(0)
        assert time.monotonic() - t0 < 10  # never a wait for a dead process
    finally:
        gen.close()
    msg = str(e.value)
    assert f"pid {pid}" in msg and "killed by SIGKILL" in msg and "batch of iteration 0" in msg and "\n" not in msg


def test_the_generator_dies_with_its_trainer(tmp_path):
    """A trainer killed with SIGKILL leaves no generator behind waiting for weights."""
    script = textwrap.dedent("""
        import os, signal, sys, time
        from rlexp.rollout.pipeline import OffPolicyGenerator
        gen = OffPolicyGenerator(lambda j: j, lambda v: None, lag=1, start=0, first=0, stop=100)
        gen.start()
        gen.get(0)
        print(gen.pid, flush=True)
        os.kill(os.getpid(), signal.SIGKILL)
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    child = int(out.stdout.split()[0])
    assert _ends_soon([child])


def _alive(pid: int) -> bool:
    """Whether process ``pid`` runs (a zombie waiting for its reaper has ended)."""
    try:
        return not Path(f"/proc/{pid}/stat").read_text().rsplit(") ", 1)[-1].startswith("Z")
    except OSError:
        return False


def _ends_soon(pids: list[int], seconds: float = 10) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and any(_alive(p) for p in pids):
        time.sleep(0.05)
    return not any(_alive(p) for p in pids)


def test_threads_split_between_trainer_and_generator():
    assert [trainer_threads(n) for n in (1, 2, 4, 16)] == [1, 1, 3, 15]


def test_the_lag_is_refused_where_it_cannot_run():
    from rlexp.config import ConfigError
    from rlexp.config.validate import validate

    with pytest.raises(ConfigError, match=r"rollout.off_policy_lag=2: only online algorithms"):
        validate(compose(["algorithm=dpo", "rollout.off_policy_lag=2"]))
    with pytest.raises(ConfigError, match=r"rollout.off_policy_lag=1 runs its generator as a forked process"):
        validate(compose(["hardware=gpu", "rollout.off_policy_lag=1"]))
    with pytest.raises(ConfigError, match=r"rollout.off_policy_lag"):
        validate(compose(["rollout.off_policy_lag=-1"]))
    assert compose(["algorithm=scalerl"]).rollout.off_policy_lag == 2  # the recipe's
    assert compose(["algorithm=scalerl", "rollout.off_policy_lag=0"]).rollout.off_policy_lag == 0
    assert compose([]).rollout.off_policy_lag == 0


# ---------------------------------------------------------------------------------------------- runs
class Snapshots(L.Callback):
    """The actor's weights when each iteration starts (version i), and the batch each iteration trains."""

    def __init__(self):
        self.weights, self.batches, self.lags = {}, {}, {}

    def on_train_start(self, trainer, module):
        self.module, take = module, module.next_rollout

        def recording():
            out = take()
            self.batches[module.iteration], self.lags[module.iteration] = out[0], module.policy_lag
            return out
        module.next_rollout = recording

    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        self.weights[int(batch)] = {k: v.detach().clone() for k, v in module.actor.state_dict().items()}


def _sampler_gap(module, weights, batch) -> float:
    """The largest |log-prob of the batch's tokens under ``weights`` − the sampler's recorded one|."""
    actor = module.actor
    saved = {k: v.detach().clone() for k, v in actor.state_dict().items()}
    actor.load_state_dict(weights)
    try:
        with torch.no_grad():
            logits = response_logits(actor, **batch.tensors(), temperature=module.temperature)
            lp = core.logprobs_from_logits(logits, batch.response_ids)
    finally:
        actor.load_state_dict(saved)
    return float(((lp - batch.rollout_logprobs).abs() * batch.mask).max())


@pytest.mark.slow
def test_each_trained_batch_was_sampled_by_the_policy_of_iteration_i_minus_k(in_tmp):
    snaps = Snapshots()
    steps = 6
    module = run(compose([*BASE, f"trainer.max_steps={steps}", "tracking=none", "algorithm.actor_lr=0.01"]),
                 callbacks=[snaps])
    assert [snaps.lags[i] for i in range(steps)] == [min(i, LAG) for i in range(steps)]
    assert [h["train/policy_lag"] for h in module.history if "train/policy_lag" in h] == \
        [float(min(i, LAG)) for i in range(steps)]
    for i in range(steps):
        v = max(0, i - LAG)
        assert _sampler_gap(module, snaps.weights[v], snaps.batches[i]) < 1e-4, i  # sampled by version i - k
        if v + 1 <= i:  # ... and not by the next one (the large learning rate moves the policy visibly)
            assert _sampler_gap(module, snaps.weights[v + 1], snaps.batches[i]) > 1e-3, i


def _metrics(db: Path) -> dict:
    client = MlflowClient(f"sqlite:///{db}")
    run_ = client.search_runs([client.get_experiment_by_name("rlexp").experiment_id])[0]
    return {k: [(m.step, m.value) for m in client.get_metric_history(run_.info.run_id, k)]
            for k in run_.data.metrics if k.startswith(("train/", "eval/"))}


@pytest.mark.slow
def test_the_same_seed_gives_the_same_run_whatever_the_timing(tmp_path, monkeypatch):
    got = []
    for name, extra in (("a", []), ("b", ["algorithm.ppo_epochs=1"])):  # the same config, spelled twice
        d = tmp_path / name
        d.mkdir()
        monkeypatch.chdir(d)
        assert main(["train", *BASE, "trainer.max_steps=5", "hydra.run.dir=run", *extra]) == 0
        got.append(_metrics(d / "mlflow.db"))
    a, b = got
    assert a["train/policy_lag"][-1] == (5, float(LAG))
    assert a.keys() == b.keys() and a == b


@pytest.mark.slow
def test_the_decoupled_objective_weighs_tokens_by_the_proximal_over_the_sampler_policy(in_tmp):
    """With a lag the ratio is taken against the trainer's own log-probs before the update (π_prox) and each
    token is weighted by min(π_prox/π_sampler, C): the logged IS weights equal that, recomputed by hand."""
    snaps = Snapshots()
    steps = 5
    module = run(compose([*BASE, f"trainer.max_steps={steps}", "tracking=none", "algorithm.actor_lr=0.01",
                          "algorithm.rollout_correction=tis", "algorithm.rollout_is_cap=1.01",
                          "algorithm.minibatch_size=64"]), callbacks=[snaps])  # one minibatch: whole-batch means
    hist = [h for h in module.history if "train/rollout_is_weight_mean" in h]
    for i in range(LAG + 1, steps):
        batch, prox = snaps.batches[i], snaps.weights[i]
        actor = module.actor
        saved = {k: v.detach().clone() for k, v in actor.state_dict().items()}
        actor.load_state_dict(prox)
        with torch.no_grad():
            lp_prox = core.logprobs_from_logits(response_logits(actor, **batch.tensors(),
                                                                temperature=module.temperature), batch.response_ids)
        actor.load_state_dict(saved)
        m = batch.mask
        w = torch.clamp(torch.exp(lp_prox - batch.rollout_logprobs), max=1.01)
        mean_by_hand = float((w * m).sum() / m.sum())
        clip_by_hand = float(((torch.exp(lp_prox - batch.rollout_logprobs) > 1.01).float() * m).sum() / m.sum())
        assert math.isclose(hist[i]["train/rollout_is_weight_mean"], mean_by_hand, rel_tol=1e-4, abs_tol=1e-5), i
        assert math.isclose(hist[i]["train/rollout_is_clipfrac"], clip_by_hand, abs_tol=1e-4), i
        assert clip_by_hand > 0  # the lag made the sampler differ from π_prox


# ---------------------------------------------------------------------------------------------- kills, resume, DDP
RESUME_ARGS = [*BASE, "trainer.max_steps=8", "trainer.eval_every=2", "checkpoint.every_n_steps=2"]


def _children(pid: int) -> list[int]:
    return [int(c) for t in Path(f"/proc/{pid}/task").iterdir()
            for c in (t / "children").read_text().split()] if Path(f"/proc/{pid}/task").exists() else []


@pytest.fixture(scope="module")
def uninterrupted_lagged(tmp_path_factory):
    """The reference of the resume tests: the lagged run, never interrupted (in-process)."""
    from test_resume import _history

    ref = tmp_path_factory.mktemp("uninterrupted_lagged")
    old = os.getcwd()
    os.chdir(ref)
    try:
        assert main(["train", *RESUME_ARGS, "hydra.run.dir=run"]) == 0
    finally:
        os.chdir(old)
    return _history(ref / "mlflow.db")


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGINT], ids=["sigkill", "ctrl-c"])
def test_kill_or_ctrl_c_with_batches_in_flight_then_resume_gives_exactly_the_uninterrupted_run(
        tmp_path, uninterrupted_lagged, sig):
    """The checkpoint after iteration i holds the k batches sampled with weights it no longer has (i-k+1 .. i):
    a run killed with SIGKILL (trainer and generator at once), or stopped with Ctrl-C (at an iteration boundary,
    its generator closed), and resumed trains on exactly them."""
    from test_resume import (_assert_same_metrics, _history, _steps_logged_twice, _wait_for_checkpoint,
                             _wait_for_steps_past_checkpoint)

    from rlexp.modules.checkpoint import read_rlexp_state

    want = uninterrupted_lagged
    work = tmp_path / "killed"
    work.mkdir()
    proc = subprocess.Popen([sys.executable, "-m", "rlexp", "train", *RESUME_ARGS, "hydra.run.dir=run"], cwd=work,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    ckpt = work / "run" / "checkpoints" / "last.ckpt"
    if sig == signal.SIGKILL:
        _wait_for_steps_past_checkpoint(proc, work / "mlflow.db", ckpt, 2)
    else:
        _wait_for_checkpoint(proc, ckpt, 2)
    children = _children(proc.pid)
    os.killpg(proc.pid, sig)
    out = proc.communicate(timeout=120)[0]
    assert proc.returncode == (-sig if sig == signal.SIGKILL else 1), out[-3000:]
    assert len(children) == 1 and _ends_soon(children)  # no generator is left behind
    state = read_rlexp_state(ckpt)
    k = state["iteration"]
    assert 2 <= k < 8
    # the batches in flight: iterations k .. k+LAG-1, sampled with versions k-LAG .. k-1 (those of the policy of
    # the iteration LAG before each)
    assert [(j, v) for j, v, _ in state["pipeline"]] == [(j, j - LAG) for j in range(k, min(k + LAG, 8))]
    os.chdir(work)
    try:
        assert main(["train", *RESUME_ARGS, "hydra.run.dir=run2", f"resume={ckpt}"]) == 0
    finally:
        os.chdir(tmp_path)
    got = _history(work / "mlflow.db")
    assert got["status"] == "FINISHED"
    _assert_same_metrics(got, want)
    assert _steps_logged_twice(work / "mlflow.db") == {}


@pytest.mark.slow
def test_a_generator_killed_mid_run_stops_it_in_one_line_keeping_what_was_recorded(tmp_path):
    from test_resume import _history

    from rlexp.modules.checkpoint import read_rlexp_state

    args = [*BASE, "rollout.off_policy_lag=1", "trainer.max_steps=40", "checkpoint.every_n_steps=1",
            "hydra.run.dir=run"]
    proc = subprocess.Popen([sys.executable, "-m", "rlexp", "train", *args], cwd=tmp_path, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    ckpt = tmp_path / "run" / "checkpoints" / "last.ckpt"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()
        try:
            if read_rlexp_state(ckpt)["iteration"] >= 2:
                break
        except Exception:  # noqa: BLE001 — no checkpoint yet
            pass
        time.sleep(0.05)
    (generator,) = _children(proc.pid)  # the trainer's one child process: its generator
    os.kill(generator, signal.SIGKILL)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 1, err[-3000:]
    last = err.strip().splitlines()[-1]
    assert last.startswith(f"rlexp: error: rollout generator (pid {generator}) was killed by SIGKILL before it "
                           "produced the batch of iteration"), err[-3000:]
    assert "Traceback" not in err
    run_ = _history(tmp_path / "mlflow.db")
    assert run_["status"] == "FAILED"
    done = read_rlexp_state(ckpt)["iteration"]  # the checkpoint is whole and every iteration up to it is logged
    assert done >= 2 and {s for s, _ in run_["train/reward_mean"]} >= set(range(1, done + 1))


@pytest.mark.slow
def test_ddp_with_two_processes_each_with_its_own_generator(tmp_path):
    over = [o for o in FAST if not o.startswith(("algorithm.", "trainer.max_steps"))]
    res = subprocess.run([sys.executable, "-m", "rlexp", "train", "hardware=ddp_cpu", "algorithm=grpo",
                          "algorithm.prompts_per_step=4", "algorithm.num_generations=4", "algorithm.minibatch_size=8",
                          "rollout.off_policy_lag=1", "trainer.max_steps=3", "hydra.run.dir=run", *over],
                         cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-4000:]
    assert "GLOBAL_RANK: 1, MEMBER: 2/2" in res.stderr
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    (r,) = client.search_runs([client.get_experiment_by_name("rlexp").experiment_id])
    assert r.info.status == "FINISHED"
    assert [(m.step, m.value) for m in client.get_metric_history(r.info.run_id, "train/policy_lag")] == \
        [(1, 0.0), (2, 1.0), (3, 1.0)]


@pytest.mark.slow
def test_the_vllm_engine_in_the_generator_samples_with_the_weights_of_iteration_i_minus_k(in_tmp):
    """rollout.engine=vllm with a lag: the generator process builds its own engine and reloads it with each
    version it receives (.ci/run runs this in the vLLM venv; elsewhere it is skipped)."""
    from rlexp.config.engines import VLLM_INSTALL, vllm_installed

    if not vllm_installed():
        pytest.skip(f"needs vLLM: {VLLM_INSTALL}")
    snaps, steps = Snapshots(), 4
    run(compose([*BASE, "rollout.off_policy_lag=1", "rollout.engine=vllm", f"trainer.max_steps={steps}",
                 "tracking=none", "algorithm.actor_lr=0.01"]), callbacks=[snaps])
    assert [snaps.lags[i] for i in range(steps)] == [0, 1, 1, 1]
    for i in range(1, steps):
        assert _sampler_gap(snaps.module, snaps.weights[i - 1], snaps.batches[i]) < 1e-3, i
        assert _sampler_gap(snaps.module, snaps.weights[i], snaps.batches[i]) > 1e-2, i


@pytest.mark.slow
@pytest.mark.parametrize("recipe", [
    ["algorithm=ppo", "algorithm.prompts_per_step=16", "algorithm.kl_coef=0.05"],  # critic + KL in the reward
    ["algorithm=dapo", "algorithm.max_gen_batches=3"],  # dynamic sampling and overlong shaping, in the generator
    ["algorithm=grpo", "algorithm.kl_coef=0.04", "algorithm.kl_placement=in_loss"],  # KL to the reference in the loss
], ids=["ppo", "dapo", "grpo-kl"])
def test_critics_kl_and_dynamic_sampling_keep_working_with_a_lag(recipe, in_tmp):
    module = run(compose([*BASE, *recipe, "rollout.off_policy_lag=1", "trainer.max_steps=4", "tracking=none"]))
    hist = [h for h in module.history if "train/policy_lag" in h]
    assert [h["train/policy_lag"] for h in hist] == [0.0, 1.0, 1.0, 1.0]
    assert all(math.isfinite(h["train/policy_loss"]) and h["train/grad_norm"] > 0 for h in hist)
    # the phases: the generator's own generation time, and the trainer's wait for its batch
    assert all(h["perf/generate_seconds"] > 0 and 0 <= h["perf/wait_seconds"] < h["perf/step_seconds"] for h in hist)
    if "algorithm=ppo" in recipe:  # values recomputed by the current critic, which trains
        assert all(math.isfinite(h["train/value_loss"]) for h in hist) and "train/kl" in hist[-1]
    if "algorithm=dapo" in recipe:
        assert all(1 <= h["train/gen_batches_drawn"] <= 3 for h in hist)
    if "algorithm.kl_placement=in_loss" in recipe:
        assert all(math.isfinite(h["train/kl_loss"]) for h in hist)


def test_a_reward_that_raises_in_the_generator_stops_the_run_in_one_line(in_tmp, capsys):
    """The generator scores; its RewardError reaches the trainer as itself, with where it happened."""
    with pytest.raises(SystemExit) as e:
        main(["train", *BASE, "trainer.max_steps=3", "tracking=none", "rollout.off_policy_lag=1",
              "task.reward._target_=rewards_for_tests.fails_in_another_process"])
    err = capsys.readouterr().err.strip().splitlines()
    assert e.value.code == 1 and err[-1].startswith(
        "rlexp: error: rollout generator (iteration 0): reward function rewards_for_tests.fails_in_another_process "
        "raised RuntimeError: scored outside the trainer"), err[-3:]


@pytest.mark.slow
def test_a_lora_policy_sends_its_adapters_and_the_generator_samples_with_them(in_tmp):
    snaps, steps = Snapshots(), 4
    run(compose([*BASE, "rollout.off_policy_lag=1", "model.lora.enabled=true", f"trainer.max_steps={steps}",
                 "tracking=none", "algorithm.actor_lr=0.05"]), callbacks=[snaps])
    for i in range(1, steps):
        assert _sampler_gap(snaps.module, snaps.weights[i - 1], snaps.batches[i]) < 1e-4, i
    assert _sampler_gap(snaps.module, snaps.weights[0], snaps.batches[steps - 1]) > 1e-3  # the adapters moved
