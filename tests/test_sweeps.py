"""Sweeps: sweep files, MLflow parent/child runs, failing jobs, Optuna and parallel jobs."""
from __future__ import annotations

from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from fast_overrides import FAST
from rlexp.cli import SWEEPS_DIR, main
from rlexp.train import compose

SMALL = [o for o in FAST if not o.startswith("trainer.max_steps")] + ["trainer.max_steps=2", "trainer.eval_every=2"]


def _sweep_runs(uri, experiment):
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(experiment)
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    parents = [r for r in runs if r.data.tags.get("rlexp.role") == "sweep"]
    children = [r for r in runs if r.data.tags.get("rlexp.role") == "job"]
    return client, parents, children


@pytest.mark.parametrize("name", sorted(p.stem for p in SWEEPS_DIR.glob("*.yaml")))
def test_every_sweep_file_composes_and_shows_its_command(name):
    text = (SWEEPS_DIR / f"{name}.yaml").read_text()
    assert f"rlexp sweep {name}" in "\n".join(text.splitlines()[:8])
    cfg = compose([f"+sweeps={name}"])
    assert cfg.sweep.name == name


def test_ppo_gae_sweep_makes_one_parent_and_nested_children(mlflow_uri, in_tmp):
    main(["sweep", "ppo_gae", *SMALL, "algorithm.clip_eps=0.1,0.2", "algorithm.gamma=1.0", "algorithm.lam=0,0.95",
          "seed=0", f"tracking.uri={mlflow_uri}", "tracking.experiment=sweep-gae"])
    client, parents, children = _sweep_runs(mlflow_uri, "sweep-gae")
    assert len(parents) == 1 and len(children) == 4
    parent = parents[0]
    assert parent.info.status == "FINISHED" and parent.data.tags["rlexp.sweep_name"] == "ppo_gae"
    assert parent.data.params["sweep.algorithm.clip_eps"] == "0.1,0.2"
    assert parent.data.params["sweep.algorithm.lam"] == "0,0.95"
    assert parent.data.metrics["sweep/jobs"] == 4 and parent.data.metrics["sweep/failed_jobs"] == 0
    sweep_id = parent.data.tags["rlexp.sweep_id"]
    grid = set()
    for child in children:
        assert child.info.status == "FINISHED"
        assert child.data.tags["mlflow.parentRunId"] == parent.info.run_id
        assert child.data.tags["rlexp.sweep_id"] == sweep_id and child.data.tags["rlexp.sweep_name"] == "ppo_gae"
        p = child.data.params
        grid.add((p["algorithm.clip_eps"], p["algorithm.gamma"], p["algorithm.lam"]))
        for name in ("summary/final_eval_reward", "summary/reward_auc", "summary/wall_seconds"):
            assert name in child.data.metrics
    assert grid == {(e, "1.0", lam) for e in ("0.1", "0.2") for lam in ("0", "0.95")}
    # `rlexp compare` over the real sweep: one row per configuration (4), n = 1 each
    from rlexp.compare.cli import main as compare_main

    assert compare_main(["--sweep", sweep_id, "--tracking-uri", mlflow_uri, "--experiment", "sweep-gae",
                         "--out", str(in_tmp / "report")]) == 0
    from rlexp.compare import load_runs, group_runs

    runs, parent_record = load_runs(mlflow_uri, experiment="sweep-gae", sweep=sweep_id)
    assert parent_record is not None and len(runs) == 4 and len(group_runs(runs)) == 4
    assert (in_tmp / "report" / "report.html").exists()
    assert "RLEXP_PARENT_RUN_ID" not in __import__("os").environ  # the sweep cleaned up after itself


def test_a_failing_job_is_recorded_and_the_others_go_on(mlflow_uri, in_tmp):
    main(["train", "-m", *SMALL, "algorithm.lam=0.5,7", f"tracking.uri={mlflow_uri}", "tracking.experiment=sweep-fail"])
    _, parents, children = _sweep_runs(mlflow_uri, "sweep-fail")
    assert len(parents) == 1 and parents[0].data.tags["rlexp.sweep_name"] == "multirun"
    status = {c.data.params.get("algorithm.lam"): c.info.status for c in children}
    assert status == {"0.5": "FINISHED", "7": "FAILED"}  # a refused job keeps its params as given
    failed = next(c for c in children if c.info.status == "FAILED")
    assert "algorithm.lam=7.0 is out of range" in failed.data.tags["rlexp.error"]
    assert parents[0].info.status == "FINISHED" and parents[0].data.metrics["sweep/failed_jobs"] == 1


def test_a_sweep_whose_every_job_fails_is_failed(mlflow_uri, in_tmp):
    main(["train", "-m", *SMALL, "algorithm.gamma=3,4", f"tracking.uri={mlflow_uri}", "tracking.experiment=sweep-allfail"])
    _, parents, children = _sweep_runs(mlflow_uri, "sweep-allfail")
    assert len(children) == 2 and all(c.info.status == "FAILED" for c in children)
    assert parents[0].info.status == "FAILED"


def test_optuna_sweep_runs_trials_as_nested_runs(mlflow_uri, in_tmp):
    main(["sweep", "ppo_optuna", *SMALL, "hydra.sweeper.n_trials=2", f"tracking.uri={mlflow_uri}",
          "tracking.experiment=sweep-optuna"])
    _, parents, children = _sweep_runs(mlflow_uri, "sweep-optuna")
    assert len(parents) == 1 and len(children) == 2
    values = {c.data.params["algorithm.clip_eps"] for c in children}
    assert len(values) == 2 and all(0.05 <= float(v) <= 0.4 for v in values)


@pytest.mark.slow
def test_parallel_jobs_share_the_sqlite_store_safely(mlflow_uri, in_tmp):
    """joblib runs jobs in 2 worker processes writing to one SQLite store at once."""
    main(["train", "-m", *SMALL, "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", "seed=0,1,2,3",
          f"tracking.uri={mlflow_uri}", "tracking.experiment=sweep-joblib"])
    _, parents, children = _sweep_runs(mlflow_uri, "sweep-joblib")
    assert len(parents) == 1 and len(children) == 4
    assert all(c.info.status == "FINISHED" and "eval/reward_mean" in c.data.metrics for c in children)
    assert {c.data.params["seed"] for c in children} == {"0", "1", "2", "3"}
    assert len({c.data.tags["mlflow.parentRunId"] for c in children}) == 1


# ---------------------------------------------------------------- a sweep that stops early, and its resume
def test_a_typo_in_a_swept_key_fails_the_parent_and_a_resume_is_checked(mlflow_uri, in_tmp, capsys):
    """Hydra refuses the typo before any job: the parent is FAILED (not RUNNING forever with 0 jobs), with
    the error; a resume must name a known sweep and repeat its definition."""
    import os

    common = [*SMALL, f"tracking.uri={mlflow_uri}", "tracking.experiment=sweep-typo"]
    with pytest.raises(SystemExit) as e:
        main(["train", "-m", *common, "algorithm.gama=0.9,0.95"])
    assert e.value.code == 2
    client, parents, children = _sweep_runs(mlflow_uri, "sweep-typo")
    assert len(parents) == 1 and not children
    assert parents[0].info.status == "FAILED" and "algorithm.gama" in parents[0].data.tags["rlexp.error"]
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert line.startswith("rlexp: sweep ") and "0 of 2 configurations finished" in line and "FAILED" in line, line
    assert "RLEXP_PARENT_RUN_ID" not in os.environ
    sweep_id = parents[0].data.tags["rlexp.sweep_id"]
    for args, fragment in [
        (["train", "-m", *common, "algorithm.gama=0.9,0.95", "--resume", "nope-123"], "--resume nope-123: no sweep"),
        (["train", "-m", *common, "algorithm.gamma=0.9,0.95", "--resume", sweep_id],
         "the sweep is defined differently now (algorithm.gama: 0.9,0.95 -> (not set); algorithm.gamma: (not set)"),
        (["train", *common, "--resume", sweep_id], "--resume SWEEP_ID resumes a sweep"),
    ]:
        with pytest.raises(SystemExit) as e:
            main(args)
        line = capsys.readouterr().err.strip().splitlines()[-1]
        assert e.value.code == 2 and line.startswith("rlexp: config error: ") and fragment in line, line
    assert client.get_run(parents[0].info.run_id).info.status == "FAILED"  # a refused resume changes nothing


STOP_GRID = [*SMALL[:-2], "trainer.max_steps=30", "trainer.eval_every=30", "algorithm.clip_eps=0.2",
             "algorithm.gamma=1.0", "algorithm.lam=0,0.5,0.95", "seed=0"]


def _start_sweep(cwd, experiment):
    """`rlexp sweep ppo_gae` over 3 values of λ in a subprocess; its output lines are collected as they come."""
    import subprocess
    import sys
    import threading

    proc = subprocess.Popen([sys.executable, "-m", "rlexp", "sweep", "ppo_gae", *STOP_GRID,
                             f"tracking.experiment={experiment}"], cwd=cwd, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    proc.lines = []
    threading.Thread(target=lambda: proc.lines.extend(iter(proc.stdout.readline, "")), daemon=True).start()
    return proc


def _wait_for_jobs(proc, uri, experiment, running: bool, timeout: float = 300):
    """Wait until the sweep's first job has FINISHED (its run's last line is printed) and, with ``running``,
    the second one's run has started."""
    import time

    deadline = time.time() + timeout
    while time.time() < deadline:
        assert proc.poll() is None, "".join(proc.lines)[-3000:]
        if any("[rlexp][INFO] - MLflow run " in line for line in proc.lines):  # job 0 has reported its run
            if not running:
                return
            _, _, children = _sweep_runs(uri, experiment)
            if "RUNNING" in [c.info.status for c in children]:
                return
        time.sleep(0.05)
    raise AssertionError("the sweep's first job did not finish")


def _configs(children):
    return {c.data.params["algorithm.lam"]: c.info.status for c in children}


@pytest.mark.slow
@pytest.mark.parametrize("sig, status", [("SIGTERM", 143), ("SIGINT", 1)])
def test_sigterm_and_ctrl_c_stop_a_sweep_with_its_parent_killed(sig, status, in_tmp):
    import signal
    import time

    uri = f"sqlite:///{in_tmp / 'mlflow.db'}"
    proc = _start_sweep(in_tmp, "stop")
    _wait_for_jobs(proc, uri, "stop", running=True)
    proc.send_signal(getattr(signal, sig))
    proc.wait(timeout=120)
    time.sleep(0.5)  # the reader thread takes the last lines
    out = "".join(proc.lines)
    assert proc.returncode == status, out[-3000:]
    _, parents, children = _sweep_runs(uri, "stop")
    assert parents[0].info.status == "KILLED", out[-3000:]
    assert sorted(_configs(children).values()) == ["FINISHED", "KILLED"]  # the job in progress: KILLED too
    line = out.strip().splitlines()[-1]
    assert "1 of 3 configurations finished" in line and f"is KILLED; resume it with: rlexp sweep ppo_gae " in line
    assert line.endswith(f"--resume {parents[0].data.tags['rlexp.sweep_id']}"), line


@pytest.mark.slow
def test_a_sweep_killed_with_sigkill_resumes_under_the_same_parent(in_tmp, capsys):
    """kill -9 of the launcher after its first job: parent and job left RUNNING. `rlexp compare` names what
    never finished; the resume runs only that, under the same parent, which ends FINISHED."""
    import signal

    uri = f"sqlite:///{in_tmp / 'mlflow.db'}"
    proc = _start_sweep(in_tmp, "sigkill")
    _wait_for_jobs(proc, uri, "sigkill", running=False)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    client, parents, children = _sweep_runs(uri, "sigkill")
    assert len(parents) == 1 and parents[0].info.status == "RUNNING"  # nothing could run in the launcher
    finished_before = {c.info.run_id for c in children if c.info.status == "FINISHED"}
    assert len(finished_before) == 1 and len(children) <= 2
    sweep_id = parents[0].data.tags["rlexp.sweep_id"]
    from rlexp.compare.cli import main as compare_main

    assert compare_main(["--sweep", sweep_id, "--tracking-uri", uri, "--no-report"]) == 0
    note = capsys.readouterr().out.strip().splitlines()[-1]
    assert note.startswith("2 of 3 configurations of this sweep have no finished run: algorithm.lam="), note
    assert "(never ran)" in note and f"Run them under the same parent with: rlexp sweep ppo_gae" in note, note

    main(["sweep", "ppo_gae", *STOP_GRID, "tracking.experiment=sigkill", "--resume", sweep_id])
    client, parents, children = _sweep_runs(uri, "sigkill")
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    finished = [c for c in children if c.info.status == "FINISHED"]
    assert sorted(c.data.params["algorithm.lam"] for c in finished) == ["0", "0.5", "0.95"]  # each exactly once
    assert finished_before <= {c.info.run_id for c in finished}  # the finished job was not run again
    assert all(c.data.tags["mlflow.parentRunId"] == parents[0].info.run_id for c in children)
    assert all(c.info.status in ("FINISHED", "KILLED") for c in children)  # the one killed mid-run: KILLED
    assert parents[0].data.tags["rlexp.resumed"] == "1" and "rlexp.error" not in parents[0].data.tags
    assert compare_main(["--sweep", sweep_id, "--tracking-uri", uri, "--no-report"]) == 0
    assert "no finished run" not in capsys.readouterr().out
