"""The trained policy as an MLflow artifact, and a shared MLflow tracking server (`tracking=server`)."""
from __future__ import annotations

from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from fast_overrides import FAST
from rlexp.cli import main
from mlflow_server import mlflow_server


def _check_policy(client: MlflowClient, run_id: str, dest: Path):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    assert "policy" in {a.path for a in client.list_artifacts(run_id)}
    local = Path(client.download_artifacts(run_id, "policy", str(dest)))
    assert (local / "model.safetensors").is_file()
    model, tok = AutoModelForCausalLM.from_pretrained(local), AutoTokenizer.from_pretrained(local)
    ids = tok(["07+45="], return_tensors="pt", add_special_tokens=False)
    with torch.no_grad():
        out = model.generate(**ids, max_new_tokens=4, do_sample=False, pad_token_id=tok.pad_token_id)
    assert out.shape[1] > ids["input_ids"].shape[1]


def test_log_model_uploads_the_trained_policy_which_loads_back_with_transformers(mlflow_uri, in_tmp):
    assert main(["train", *FAST, f"tracking.uri={mlflow_uri}", "tracking.experiment=log_model",
                 "tracking.log_model=true", "hydra.run.dir=run"]) == 0
    client = MlflowClient(mlflow_uri)
    run = client.search_runs([client.get_experiment_by_name("log_model").experiment_id])[0]
    _check_policy(client, run.info.run_id, in_tmp / "dl")
    assert (in_tmp / "run" / "policy" / "model.safetensors").is_file()  # and kept in the run's output dir


def test_save_policy_false_writes_no_policy(in_tmp):
    assert main(["train", *FAST, "tracking=none", "trainer.save_policy=false", "hydra.run.dir=run"]) == 0
    assert not (in_tmp / "run" / "policy").exists()


@pytest.mark.slow
def test_runs_and_artifacts_go_to_a_real_tracking_server(tmp_path, in_tmp):
    """`tracking=server tracking.uri=http://…`: a real `mlflow server` (SQLite backend here; PostgreSQL in
    a team) receives the run, its metrics and the uploaded policy."""
    with mlflow_server(tmp_path / "server") as (url, _):
        assert main(["train", *FAST, "tracking=server", f"tracking.uri={url}", "tracking.experiment=team",
                     "tracking.log_model=true", "hydra.run.dir=run"]) == 0
        client = MlflowClient(url)
        runs = client.search_runs([client.get_experiment_by_name("team").experiment_id])
        assert len(runs) == 1 and runs[0].info.status == "FINISHED"
        assert [m.step for m in client.get_metric_history(runs[0].info.run_id, "train/reward_mean")] == [1, 2]
        _check_policy(client, runs[0].info.run_id, tmp_path / "dl")
        assert not (in_tmp / "mlflow.db").exists()  # nothing went to a local store
