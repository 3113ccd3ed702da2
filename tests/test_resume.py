"""Checkpoints and resume: a run killed with SIGKILL (or stopped with Ctrl-C) and resumed logs exactly
the metrics of a run that was never interrupted, into the same MLflow run. Real processes, real signals."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from mlflow.tracking import MlflowClient

from fast_overrides import FAST
from rlexp.cli import main
from rlexp.modules.checkpoint import read_rlexp_state

STEPS = 8
ARGS = [o for o in FAST if not o.startswith(("trainer.max_steps", "trainer.eval_every"))] + [
    f"trainer.max_steps={STEPS}", "trainer.eval_every=2", "checkpoint.every_n_steps=2",
    "task.reward._target_=rlexp.tasks.arithmetic.partial_credit"]


def _history(db: Path) -> dict[str, set]:
    """Every train/ and eval/ metric of the store's single run: name -> {(step, value)}."""
    client = MlflowClient(f"sqlite:///{db}")
    runs = client.search_runs([client.get_experiment_by_name("rlexp").experiment_id])
    assert len(runs) == 1, [r.info.run_id for r in runs]
    run = runs[0]
    out = {k: {(m.step, m.value) for m in client.get_metric_history(run.info.run_id, k)}
           for k in run.data.metrics if k.startswith(("train/", "eval/"))}
    summary = {k: v for k, v in run.data.metrics.items() if k.startswith("summary/")}
    return {"status": run.info.status, "tags": run.data.tags, "summary": summary, **out}


def _final_line(run_dir: Path) -> str:
    """The run's last report of its evaluation curve (``eval/reward_mean A (step 0, ...) -> B (step N)``)."""
    lines = [ln.split("] - ", 1)[1] for f in run_dir.glob("*.log") for ln in f.read_text().splitlines()
             if "] - eval/reward_mean " in ln]
    assert len(lines) == 1, lines
    return lines[0]


def _points(db: Path, key: str) -> list[tuple[int, float]]:
    client = MlflowClient(f"sqlite:///{db}")
    run = client.search_runs([client.get_experiment_by_name("rlexp").experiment_id])[0]
    return [(m.step, m.value) for m in client.get_metric_history(run.info.run_id, key)]


def _steps_logged_twice(db: Path) -> dict[str, list[int]]:
    """Metrics of the store's single run that hold more than one value at some step: name -> those steps."""
    client = MlflowClient(f"sqlite:///{db}")
    run = client.search_runs([client.get_experiment_by_name("rlexp").experiment_id])[0]
    out = {}
    for k in run.data.metrics:
        steps = [m.step for m in client.get_metric_history(run.info.run_id, k)]
        if len(steps) != len(set(steps)):
            out[k] = sorted({s for s in steps if steps.count(s) > 1})
    return out


def _start(cwd: Path, extra=()):
    return subprocess.Popen([sys.executable, "-m", "rlexp", "train", *ARGS, "hydra.run.dir=run", *extra], cwd=cwd,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)


def _wait_for_checkpoint(proc, ckpt: Path, min_iteration: int, timeout: float = 300) -> int:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if ckpt.is_file():
            try:
                it = read_rlexp_state(ckpt)["iteration"]
            except Exception:  # noqa: BLE001 - not yet complete
                it = -1
            if it >= min_iteration:
                return it
        assert proc.poll() is None, proc.communicate()[0][-3000:]
        time.sleep(0.02)
    raise AssertionError("no checkpoint appeared")


def _wait_for_steps_past_checkpoint(proc, db: Path, ckpt: Path, min_iteration: int, timeout: float = 300) -> int:
    """Wait until the run has logged an iteration after its checkpoint (>= min_iteration); returns that step."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        assert proc.poll() is None, proc.communicate()[0][-3000:]
        try:
            k = read_rlexp_state(ckpt)["iteration"]
            client = MlflowClient(f"sqlite:///{db}")
            run = client.search_runs([client.get_experiment_by_name("rlexp").experiment_id])[0]
            logged = max(m.step for m in client.get_metric_history(run.info.run_id, "train/reward_mean"))
        except Exception:  # noqa: BLE001 - no checkpoint / store / metric yet
            k = logged = -1
        if k >= min_iteration and logged > k:
            return logged
        time.sleep(0.02)
    raise AssertionError("the run logged no iteration past its checkpoint")


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    """The reference: the same run, never interrupted (in-process, through the same entry point)."""
    d = tmp_path_factory.mktemp("uninterrupted")
    old = os.getcwd()
    os.chdir(d)
    try:
        assert main(["train", *ARGS, "hydra.run.dir=run"]) == 0
    finally:
        os.chdir(old)
    return {**_history(d / "mlflow.db"), "final_line": _final_line(d / "run")}


def _resume(cwd: Path, ckpt: Path):
    old = os.getcwd()
    os.chdir(cwd)
    try:
        assert main(["train", *ARGS, "hydra.run.dir=run2", f"resume={ckpt}"]) == 0
    finally:
        os.chdir(old)


def _assert_same_metrics(got: dict, want: dict):
    keys = {k for k in want if "/" in k}
    assert keys == {k for k in got if "/" in k}
    for k in keys:
        assert got[k] == want[k], k


@pytest.mark.slow
def test_sigkill_then_resume_gives_exactly_the_uninterrupted_run(tmp_path, uninterrupted):
    proc = _start(tmp_path)
    ckpt = tmp_path / "run" / "checkpoints" / "last.ckpt"
    _wait_for_steps_past_checkpoint(proc, tmp_path / "mlflow.db", ckpt, 2)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    k = read_rlexp_state(ckpt)["iteration"]
    assert proc.returncode == -signal.SIGKILL and k < STEPS
    killed = _history(tmp_path / "mlflow.db")
    assert killed["status"] == "RUNNING"  # a SIGKILLed process cannot mark its run
    # it logged iterations after its checkpoint, which the resumed run computes again
    assert max(s for s, _ in killed["train/reward_mean"]) > k
    _resume(tmp_path, tmp_path / "run" / "checkpoints" / "last.ckpt")
    resumed = _history(tmp_path / "mlflow.db")  # still exactly one run: the same one, continued
    assert resumed["status"] == "FINISHED" and resumed["tags"]["rlexp.resumed_from"].endswith("last.ckpt")
    _assert_same_metrics(resumed, uninterrupted)
    assert max(s for s, _ in resumed["train/reward_mean"]) == STEPS
    assert _steps_logged_twice(tmp_path / "mlflow.db") == {}  # exactly one value per metric and step
    # the summaries are those of the whole run, the evaluations before the kill included
    got, want = resumed["summary"], uninterrupted["summary"]
    assert {k: got[k] for k in want if k != "summary/wall_seconds"} == \
        {k: want[k] for k in want if k != "summary/wall_seconds"} and set(got) == set(want)
    # and its wall time covers every iteration's, those before the kill too
    assert got["summary/wall_seconds"] >= max(v for s, v in _points(tmp_path / "mlflow.db", "perf/total_seconds"))
    assert _final_line(tmp_path / "run2") == uninterrupted["final_line"]  # step 0 (warm start) -> step 8


@pytest.mark.slow
@pytest.mark.parametrize("sig, status, name", [(signal.SIGINT, 1, "Ctrl-C"), (signal.SIGTERM, 143, "SIGTERM")])
def test_ctrl_c_ends_the_run_killed_with_a_checkpoint_and_resume_finishes_it(tmp_path, uninterrupted, sig, status,
                                                                             name):
    """Ctrl-C, and SIGTERM (SLURM, `docker stop`, `timeout`) alike; SIGTERM's exit status is 128 + 15."""
    proc = _start(tmp_path)
    ckpt = tmp_path / "run" / "checkpoints" / "last.ckpt"
    _wait_for_checkpoint(proc, ckpt, 2)
    os.killpg(proc.pid, sig)
    out = proc.communicate(timeout=120)[0]
    assert proc.returncode == status, out[-3000:]
    assert f"{name}: stopping after this iteration" in out and "continue with resume=" in out
    k = read_rlexp_state(ckpt)["iteration"]
    stopped = _history(tmp_path / "mlflow.db")
    assert stopped["status"] == "KILLED" and 2 <= k < STEPS
    assert stopped["tags"]["rlexp.error"] == f"KeyboardInterrupt: interrupted ({name})"
    # the checkpoint is the state after iteration k, which the run logged last
    assert max(s for s, _ in stopped["train/reward_mean"]) == k
    _resume(tmp_path, ckpt)
    _assert_same_metrics(_history(tmp_path / "mlflow.db"), uninterrupted)


def test_checkpoints_are_data_only_and_resume_refuses_what_it_cannot_continue(tmp_path, in_tmp, capsys):
    assert main(["train", *ARGS, "trainer.max_steps=2", "hydra.run.dir=run", "tracking=none"]) == 0
    ckpt = in_tmp / "run" / "checkpoints" / "last.ckpt"
    state = torch.load(ckpt, weights_only=True)["rlexp_state"]  # loads without unpickling code
    assert state["iteration"] == 2 and state["pool"] == {"removed": []} and "rng" in state
    with pytest.raises(SystemExit) as e:  # a finished run cannot be resumed: it says what to do instead
        main(["train", *ARGS, "trainer.max_steps=2", "tracking=none", f"resume={ckpt}"])
    assert e.value.code == 2 and "finished all its 2 iterations" in capsys.readouterr().err
    # a resume that would silently change the update is refused, naming what differs
    assert main(["train", *ARGS, "trainer.max_steps=4", "checkpoint.keep_all=true", "hydra.run.dir=run4",
                 "tracking=none"]) == 0
    early = in_tmp / "run4" / "checkpoints" / "iter-000002.ckpt"
    with pytest.raises(SystemExit) as e:
        main(["train", *ARGS, "trainer.max_steps=4", "tracking=none", "algorithm.actor_lr=0.001", f"resume={early}"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "differs from the checkpointed run's" in err and "algorithm.actor_lr: 3e-05 -> 0.001" in err
    bogus = tmp_path / "bogus.ckpt"
    torch.save({"state_dict": {}}, bogus)
    with pytest.raises(SystemExit):
        main(["train", *ARGS, "tracking=none", f"resume={bogus}"])
    assert "not a checkpoint of an rlexp online run" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["train", *ARGS, "tracking=none", f"resume={tmp_path / 'missing.ckpt'}"])
    assert "no such checkpoint file" in capsys.readouterr().err


def _record(db: Path) -> dict:
    """Everything of the store's single run that a resume could damage: status, tags, every metric point."""
    client = MlflowClient(f"sqlite:///{db}")
    run = client.search_runs([client.get_experiment_by_name("rlexp").experiment_id])[0]
    points = {k: [(m.step, m.value) for m in client.get_metric_history(run.info.run_id, k)] for k in run.data.metrics}
    return {"status": run.info.status, "end": run.info.end_time, "tags": run.data.tags, "points": points}


def test_a_finished_run_is_never_reopened_and_a_damaged_checkpoint_never_touches_mlflow(tmp_path, in_tmp, capsys,
                                                                                         monkeypatch):
    args = [*ARGS, "trainer.max_steps=4", "checkpoint.keep_all=true"]
    assert main(["train", *args, "hydra.run.dir=run"]) == 0
    db, early = in_tmp / "mlflow.db", in_tmp / "run" / "checkpoints" / "iter-000002.ckpt"
    before = _record(db)
    assert before["status"] == "FINISHED"

    def no_models(*a, **k):
        raise AssertionError("a model was built")
    monkeypatch.setattr("rlexp.warmstart.prepare_model_dir", no_models)
    damaged = tmp_path / "damaged.ckpt"  # one tensor's bytes overwritten (torch.load reads it without a word)
    data = bytearray(early.read_bytes())
    data[len(data) // 2:len(data) // 2 + 64] = b"\xff" * 64
    damaged.write_bytes(bytes(data))
    truncated = tmp_path / "truncated.ckpt"
    truncated.write_bytes(early.read_bytes()[: early.stat().st_size // 2])
    run_id = read_rlexp_state(early)["mlflow_run_id"]
    finished = f"its MLflow run {run_id} has FINISHED"
    for ckpt, what in [(early, f"{finished} since this checkpoint was written"),
                       (early, f"model=hf model.name_or_path={in_tmp / 'run' / 'policy'}"),
                       (damaged, "does not match its CRC-32"), (truncated, "not a whole checkpoint")]:
        with pytest.raises(SystemExit) as e:
            main(["train", *args, "hydra.run.dir=again", f"resume={ckpt}"])
        err = capsys.readouterr().err.strip()
        assert e.value.code == 2 and len(err.splitlines()) == 1 and f"resume={ckpt}" in err and what in err, err
        assert _record(db) == before  # status, end time, tags and every metric point as they were


def _run_in(d: Path, extra=()):
    old = os.getcwd()
    os.chdir(d)
    try:
        assert main(["train", *ARGS, "hydra.run.dir=run", *extra]) == 0
    finally:
        os.chdir(old)
    return _history(d / "mlflow.db")


@pytest.mark.slow
def test_the_same_seed_gives_the_same_run_and_another_seed_another(tmp_path, uninterrupted):
    """Determinism on CPU, through the CLI's entry function: every train/ and eval/ metric at every step."""
    (tmp_path / "same").mkdir(), (tmp_path / "other").mkdir()
    _assert_same_metrics(_run_in(tmp_path / "same"), uninterrupted)
    other = _run_in(tmp_path / "other", ["seed=1"])
    assert other["train/reward_mean"] != uninterrupted["train/reward_mean"]


def test_checkpoint_knobs_decide_where_and_how_often(tmp_path, in_tmp):
    """every_n_steps: which iterations get a checkpoint (the last always does); keep_all: the numbered
    copies; dir: where they go."""
    def written(extra, where):
        assert main(["train", *ARGS, "trainer.max_steps=3", "tracking=none", "trainer.save_policy=false", *extra]) == 0
        return sorted(p.name for p in where.iterdir())
    every1 = written(["checkpoint.every_n_steps=1", "checkpoint.keep_all=true", "hydra.run.dir=a"], in_tmp / "a" / "checkpoints")
    assert every1 == ["iter-000001.ckpt", "iter-000002.ckpt", "iter-000003.ckpt", "last.ckpt"]
    every2 = written(["checkpoint.every_n_steps=2", "checkpoint.keep_all=true", "hydra.run.dir=b"], in_tmp / "b" / "checkpoints")
    assert every2 == ["iter-000002.ckpt", "iter-000003.ckpt", "last.ckpt"]
    assert written(["checkpoint.every_n_steps=2", "hydra.run.dir=c"], in_tmp / "c" / "checkpoints") == ["last.ckpt"]
    elsewhere = tmp_path / "elsewhere"
    assert written([f"checkpoint.dir={elsewhere}", "hydra.run.dir=d"], elsewhere) == ["last.ckpt"]
    assert not (in_tmp / "d" / "checkpoints").exists()
