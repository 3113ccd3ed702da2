"""Small tasks: the warm start of a pool of a few prompts (checked on its training prompts), the end-of-run line
(``warm start`` only when there was one), and the params of a run (none for a warm start or adapters it did not
have)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from fast_overrides import FAST
from rlexp.cli import main
from rlexp.config import ConfigError
from rlexp.tasks import ArithmeticTask, Example, Task, exact_match
from rlexp.train import compose
from rlexp.warmstart import CHECK_PROMPTS, HOLD_OUT_FROM, check_split, made_of


class Pool(Task):
    def __init__(self, n: int):
        super().__init__(name=f"pool{n}", reward=exact_match, max_new_tokens=4)
        self.train_examples = [Example(f"{i}=", str(i)) for i in range(n)]


@pytest.mark.parametrize("n, check, train, held_out", [
    (1, 1, 1, False), (10, 10, 10, False), (HOLD_OUT_FROM - 1, CHECK_PROMPTS, HOLD_OUT_FROM - 1, False),
    (HOLD_OUT_FROM, CHECK_PROMPTS, HOLD_OUT_FROM - CHECK_PROMPTS, True), (9800, 200, 9600, True)])
def test_small_pools_are_checked_on_their_training_prompts(n, check, train, held_out):
    c, t, h = check_split(Pool(n))
    assert (len(c), len(t), h) == (check, train, held_out)
    assert c == Pool(n).train_examples[:check] and (set(c) <= set(t)) != h


def test_a_task_without_training_prompts_is_refused_in_one_line():
    with pytest.raises(ConfigError, match=r"^model.warmstart.enabled=true: task 'pool0' has no training prompts to "
                                          r"warm-start on \(set model.warmstart.enabled=false to start from the "
                                          r"model as loaded\)$"):
        check_split(Pool(0))


def test_the_default_task_keeps_its_warm_start_cache_key(tmp_path):
    """What the key hashes for task=arithmetic is what it always was; a small pool's says how it is checked."""
    model = compose(FAST).model
    task = ArithmeticTask(num_eval=32)
    assert made_of(tmp_path, model, task) == {
        "src": str(tmp_path.resolve()), "ws": dict(model.warmstart), "task": task.fingerprint(), "seed": 0,
        "dtype": "float32", "v": 1}
    assert made_of(tmp_path, model, ArithmeticTask(max_operand=3, num_eval=6))["check"] == "train"


SMALL = ["task.max_operand=3", "task.num_eval=6"]  # 16 operand pairs: 10 training prompts


def _run(uri, experiment, *overrides):
    main(["train", *FAST, *SMALL, f"tracking.uri={uri}", f"tracking.experiment={experiment}", *overrides])
    client = MlflowClient(uri)
    return client, client.search_runs([client.get_experiment_by_name(experiment).experiment_id])[0]


def _final_line(out: str) -> str:
    return next(line for line in out.splitlines() if "eval/reward_mean" in line and "->" in line)


def test_a_ten_prompt_task_trains_end_to_end_with_the_warm_start(mlflow_uri, in_tmp, capsys):
    client, run = _run(mlflow_uri, "small-warm")
    assert run.info.status == "FINISHED"
    info = json.loads(Path(client.download_artifacts(run.info.run_id, "warmstart.json", str(in_tmp))).read_text())
    assert info["check"] == {"prompts": 10, "held_out": False}
    assert "(step 0, warm start) ->" in _final_line(capsys.readouterr().out)
    assert run.data.params["model.warmstart.max_steps"] == "60"
    assert run.data.tags["rlexp.inactive_params"] == "model.lora.*: model.lora.enabled=false (LoRA is off)"


def test_without_a_warm_start_the_line_and_the_params_say_none(mlflow_uri, in_tmp, capsys):
    client, run = _run(mlflow_uri, "small-cold", "model.warmstart.enabled=false", "model.warmstart.lr=0.5")
    out = capsys.readouterr().out
    line = _final_line(out)
    assert "(step 0, the model as loaded) ->" in line and "warm start" not in line
    assert "model.warmstart.lr has no effect in this run: model.warmstart.enabled=false (no warm start)" in out
    params = run.data.params
    assert params["model.warmstart.enabled"] == "False" and params["model.init_seed"] == "0"  # tiny: its init
    assert not [k for k in params if k.startswith("model.warmstart.") and k != "model.warmstart.enabled"]
    assert not [k for k in params if k.startswith("model.lora.") and k != "model.lora.enabled"]
    assert run.data.tags["rlexp.inactive_params"] == (
        "model.lora.*: model.lora.enabled=false (LoRA is off); "
        "model.warmstart.*: model.warmstart.enabled=false (no warm start)")
    # FAST sets the warm start's max_steps and eval_every too
    assert run.data.tags["rlexp.dead_knobs"] == ("model.warmstart.eval_every, model.warmstart.lr, "
                                                 "model.warmstart.max_steps")
    assert "warmstart.json" not in {a.path for a in client.list_artifacts(run.info.run_id)}
    resolved = Path(client.download_artifacts(run.info.run_id, "config/resolved.yaml", str(in_tmp))).read_text()
    assert "lr: 0.5" in resolved  # the whole config is still recorded


def test_params_leave_out_what_a_run_does_not_use():
    from rlexp.tracking import run_params

    params, tag = run_params(compose(["model=hf", "model.name_or_path=/tmp"]))
    assert "model.init_seed" not in params and "model.warmstart.lr" not in params  # hf: seeds the warm start only
    assert tag.endswith("model.init_seed: model.warmstart.enabled=false (it seeds the warm start only)")
    params, tag = run_params(compose(["model.lora.enabled=true"]))
    assert params["model.lora.r"] == "16" and params["model.warmstart.lr"] == "0.001" and tag == ""



def test_a_job_refused_at_start_up_records_the_same_params(mlflow_uri, tmp_path):
    """A sweep job refused before it ran (``record_failed_run``) logs the params its run would have logged, so
    that `rlexp compare` folds it into its configuration."""
    from rlexp.tracking import record_failed_run

    cfg = compose(["model.warmstart.enabled=false", f"tracking.uri={mlflow_uri}", "tracking.experiment=small-refused"])
    record_failed_run(cfg, launch_dir=tmp_path, overrides=["model.warmstart.enabled=false"], error="refused")
    client = MlflowClient(mlflow_uri)
    run = client.search_runs([client.get_experiment_by_name("small-refused").experiment_id])[0]
    assert run.info.status == "FAILED" and "model.warmstart.lr" not in run.data.params
    assert run.data.params["model.warmstart.enabled"] == "False" and "model.warmstart.*" in \
        run.data.tags["rlexp.inactive_params"]


WORDS = ["cat", "dog", "emu", "owl", "yak", "bee", "ant", "cow", "pig", "hen", "fox", "elk", "ram", "eel"]


def test_a_ten_prompt_dataset_of_words_trains_with_the_warm_start_and_logs_only_its_own_params(
        tmp_path, mlflow_uri, in_tmp, capsys):
    """task=dataset, 10 training rows of words and 4 held out, on the tiny model (its alphabet from the files)."""
    rows = [json.dumps({"q": f"{w}>", "a": w[::-1]}) + "\n" for w in WORDS]
    (tmp_path / "train.jsonl").write_text("".join(rows[:10]))
    (tmp_path / "eval.jsonl").write_text("".join(rows[10:]))
    base = [o for o in FAST if not o.startswith("task.")]
    main(["train", *base, "task=dataset", f"task.path={tmp_path / 'train.jsonl'}",
          f"task.eval_path={tmp_path / 'eval.jsonl'}", "task.prompt_field=q", "task.answer_field=a",
          "task.max_new_tokens=6", f"tracking.uri={mlflow_uri}", "tracking.experiment=small-dataset"])
    client = MlflowClient(mlflow_uri)
    run = client.search_runs([client.get_experiment_by_name("small-dataset").experiment_id])[0]
    assert run.info.status == "FINISHED"
    info = json.loads(Path(client.download_artifacts(run.info.run_id, "warmstart.json", str(in_tmp))).read_text())
    assert info["check"] == {"prompts": 10, "held_out": False}
    assert "(step 0, warm start) ->" in _final_line(capsys.readouterr().out)
    params = run.data.params
    assert params["task._target_"] == "rlexp.tasks.dataset.DatasetTask" and params["task.prompt_field"] == "q"
    assert not {"task.min_operand", "task.max_operand", "task.num_eval"} & set(params)
