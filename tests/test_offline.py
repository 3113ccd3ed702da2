"""The offline algorithms — DPO, rejection-sampling fine-tuning, SFT: configs, preference files, the run
contract through the CLI and MLflow, every knob live, and (slow) learning at the default run length."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from hydra.utils import instantiate
from mlflow.tracking import MlflowClient
from omegaconf import OmegaConf

from fast_overrides import FAST
from rlexp.cli import main
from rlexp.config import ConfigError, validate
from rlexp.config.schema import SCHEMAS
from rlexp.models import build_char_tokenizer, load_causal_lm
from rlexp.modules import DatasetError, RejectionSamplingModule, load_preferences
from rlexp.tasks import ArithmeticTask
from rlexp.train import build_module, compose, run
from rlexp.warmstart import prepare_model_dir

OFFLINE = ["dpo", "rejection_sampling", "sft"]
# FAST without its online-only algorithm keys: the same shared warm start, a few steps, 32 eval prompts
BASE = [o for o in FAST if not o.startswith("algorithm.")]
PARTIAL = "task.reward._target_=rlexp.tasks.arithmetic.partial_credit"  # a dense signal for a weak start
DPO_GEN = ["algorithm=dpo", "algorithm.data.num_prompts=16", "algorithm.data.samples_per_prompt=4",
           "algorithm.batch_size=4", PARTIAL]
RS = ["algorithm=rejection_sampling", "algorithm.num_prompts=4", "algorithm.samples_per_prompt=4",
      "algorithm.batch_size=2", "algorithm.epochs_per_round=1", PARTIAL]
SFT = ["algorithm=sft", "algorithm.batch_size=8"]


def _fit(*overrides):
    return run(compose([*BASE, "tracking=none", *overrides]))


def _values(module, key):
    return [h[key] for h in module.history if key in h]


def _steps(module, key):
    return [h["step"] for h in module.history if key in h]


@pytest.fixture(scope="module")
def prefs_path(tmp_path_factory) -> Path:
    """12 valid arithmetic preference pairs: the right answer against an off-by-one."""
    task = ArithmeticTask(num_eval=8)
    path = tmp_path_factory.mktemp("prefs") / "prefs.jsonl"
    path.write_text("".join(json.dumps({"prompt": e.prompt, "chosen": e.target, "rejected": str(int(e.target) + 1)})
                            + "\n" for e in task.train_examples[:12]))
    return path


# ------------------------------------------------------------------ configs
@pytest.mark.parametrize("algorithm", OFFLINE)
def test_offline_yamls_validate_and_match_their_schemas(algorithm):
    cfg = compose([f"algorithm={algorithm}"])
    validate(cfg)
    schema = SCHEMAS["algorithm"][algorithm]

    def keys(cls, prefix=""):
        out = set()
        for f in dataclasses.fields(cls):
            nested = f.default_factory is not dataclasses.MISSING and dataclasses.is_dataclass(f.default_factory())
            out |= keys(type(f.default_factory()), f"{f.name}.") if nested else {prefix + f.name}
        return out

    def flat(node, prefix=""):
        return {k2 for k, v in node.items() for k2 in (flat(v, f"{k}.") if isinstance(v, dict) else {prefix + k})}

    assert keys(schema) == flat(OmegaConf.to_container(cfg.algorithm))


@pytest.mark.parametrize("overrides, key", [
    (["algorithm=dpo", "algorithm.beta=0"], "algorithm.beta"),
    (["algorithm=dpo", "algorithm.label_smoothing=0.5"], "algorithm.label_smoothing"),
    (["algorithm=dpo", "algorithm.label_smoothing=-0.1"], "algorithm.label_smoothing"),
    (["algorithm=dpo", "algorithm.loss_type=kto"], "algorithm.loss_type"),
    (["algorithm=dpo", "algorithm.data.samples_per_prompt=1"], "algorithm.data.samples_per_prompt"),
    (["algorithm=dpo", "algorithm.data.num_prompts=0"], "algorithm.data.num_prompts"),
    (["algorithm=dpo", "algorithm.batch_size=0"], "algorithm.batch_size"),
    (["algorithm=dpo", "algorithm.precompute_ref_logps=maybe"], "algorithm.precompute_ref_logps"),
    (["algorithm=rejection_sampling", "algorithm.samples_per_prompt=0"], "algorithm.samples_per_prompt"),
    (["algorithm=rejection_sampling", "algorithm.rounds=0"], "algorithm.rounds"),
    (["algorithm=rejection_sampling", "algorithm.epochs_per_round=0"], "algorithm.epochs_per_round"),
    (["algorithm=rejection_sampling", "algorithm.num_prompts=0"], "algorithm.num_prompts"),
    (["algorithm=sft", "algorithm.lr=0"], "algorithm.lr"),
    (["algorithm=sft", "algorithm.warmup_steps=-1"], "algorithm.warmup_steps"),
    (["algorithm=sft", "algorithm.max_grad_norm=0"], "algorithm.max_grad_norm"),
])
def test_bad_offline_values_are_refused_naming_the_key(overrides, key):
    with pytest.raises(ConfigError) as e:
        validate(compose(overrides))
    assert key in str(e.value) and "\n" not in str(e.value)


# ------------------------------------------------------------------ preference files
GOOD = {"prompt": "01+02=", "chosen": "3", "rejected": "4"}
MALFORMED = {
    "invalid JSON": ('{"prompt": "01+02=", "chosen": "3"', r":2: invalid JSON \(Expecting"),
    "missing field": (json.dumps({"prompt": "01+02=", "chosen": "3"}), r":2: field 'rejected' is missing"),
    "empty completion": (json.dumps({**GOOD, "chosen": ""}), r":2: field 'chosen' is empty \(an empty completion\)"),
    "blank completion": (json.dumps({**GOOD, "rejected": "  "}), r":2: field 'rejected' is empty"),
    "empty prompt": (json.dumps({**GOOD, "prompt": ""}), r":2: field 'prompt' is empty"),
    "non-string field": (json.dumps({**GOOD, "chosen": 3}), r":2: field 'chosen' must be a string, got int \(3\)"),
    "null field": (json.dumps({**GOOD, "prompt": None}), r":2: field 'prompt' must be a string, got NoneType"),
    "not an object": ("[1, 2]", r":2: a record must be a JSON object with fields prompt, chosen, rejected; got list"),
    "no preference": (json.dumps({**GOOD, "rejected": "3"}), r":2: field 'rejected' is identical to 'chosen'"),
    "untokenizable": (json.dumps({**GOOD, "chosen": "3a"}),
                      r":2: field 'chosen' has characters the policy's character tokenizer cannot encode: 'a' in '3a'"),
}


@pytest.fixture(scope="module")
def tokenizer():
    return build_char_tokenizer(ArithmeticTask.alphabet)


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_a_malformed_record_is_refused_naming_file_line_and_field(case, tmp_path, tokenizer):
    line, pattern = MALFORMED[case]
    path = tmp_path / "prefs.jsonl"
    path.write_text(json.dumps(GOOD) + "\n" + line + "\n" + json.dumps(GOOD) + "\n")
    with pytest.raises(DatasetError, match=f"^{path}" + pattern) as e:
        load_preferences(path, tokenizer=tokenizer)
    assert isinstance(e.value, ValueError) and "\n" not in str(e.value)
    assert "algorithm.data.skip_invalid=true" in str(e.value)


def test_skip_invalid_skips_and_reports_every_bad_record(tmp_path, tokenizer):
    path = tmp_path / "prefs.jsonl"
    lines = [json.dumps(GOOD), MALFORMED["invalid JSON"][0], "", json.dumps({**GOOD, "prompt": "02+02="}),
             MALFORMED["empty completion"][0], MALFORMED["non-string field"][0], "   ", json.dumps(GOOD)]
    path.write_text("\n".join(lines) + "\n")
    pairs, skipped = load_preferences(path, skip_invalid=True, tokenizer=tokenizer)
    assert [p.prompt for p in pairs] == ["01+02=", "02+02=", "01+02="]  # blank lines are not records
    assert [s.split(": ")[0] for s in skipped] == [f"{path}:2", f"{path}:5", f"{path}:6"]


def test_a_missing_or_empty_file_is_refused(tmp_path):
    with pytest.raises(DatasetError, match=r"algorithm\.data\.path=.*absent\.jsonl: no such file"):
        load_preferences(tmp_path / "absent.jsonl")
    bad = tmp_path / "bad.jsonl"
    bad.write_text("{}\n")
    with pytest.raises(DatasetError, match=r"no valid preference records \(1 invalid, skipped\)"):
        load_preferences(bad, skip_invalid=True)


def test_a_malformed_file_fails_the_run_before_training(tmp_path, mlflow_uri, in_tmp):
    path = tmp_path / "prefs.jsonl"
    path.write_text(json.dumps(GOOD) + "\n" + MALFORMED["empty completion"][0] + "\n")
    with pytest.raises(SystemExit) as e:
        main(["train", *BASE, "algorithm=dpo", f"algorithm.data.path={path}", f"tracking.uri={mlflow_uri}",
              "tracking.experiment=dpo-bad-file"])
    assert e.value.code == 1
    client = MlflowClient(mlflow_uri)
    run_ = client.search_runs([client.get_experiment_by_name("dpo-bad-file").experiment_id])[0]
    assert run_.info.status == "FAILED"
    assert run_.data.tags["rlexp.error"].startswith(f"DatasetError: {path}:2: field 'chosen' is empty")
    assert not run_.data.metrics  # not even the step-0 evaluation: nothing ran


def test_skip_invalid_through_a_run_logs_the_count(tmp_path, prefs_path, in_tmp):
    path = tmp_path / "mixed.jsonl"
    path.write_text(prefs_path.read_text() + "not json\n" + json.dumps({**GOOD, "chosen": 3}) + "\n")
    module = _fit("algorithm=dpo", f"algorithm.data.path={path}", "algorithm.data.skip_invalid=true")
    assert _values(module, "data/skipped_records") == [2.0] and _values(module, "data/pairs") == [12.0]


# ------------------------------------------------------------------ DPO
def _dpo_module(overrides):
    cfg = compose([*BASE, "tracking=none", "algorithm=dpo", *overrides])
    task = instantiate(cfg.task)
    model_dir, _ = prepare_model_dir(cfg.model, task, cfg.hardware)
    return build_module(cfg, task, model_dir)[0]


@pytest.mark.parametrize("precompute, passes", [(True, 1), (False, 2)])
def test_chosen_and_rejected_go_through_one_forward_pass(precompute, passes, prefs_path):
    module = _dpo_module([f"algorithm.data.path={prefs_path}", f"algorithm.precompute_ref_logps={precompute}"])
    module.on_fit_start()  # caches the reference log-probs when asked
    assert (module.reference is None) == precompute and (module.ref_logps is not None) == precompute
    rows = []
    for m in filter(None, (module.model, module.reference)):
        m.model.register_forward_hook(lambda mod, args, kwargs, out: rows.append(kwargs["input_ids"].shape[0]),
                                      with_kwargs=True)
    batch = module.collate([0, 3, 5])
    module.training_step(batch, 0)
    assert rows == [6] * passes  # 3 chosen + 3 rejected rows in one pass (policy, then reference if no cache)
    assert module.step_metrics["train/loss"].item() == pytest.approx(0.6931, abs=1e-3)  # π = π_ref: log 2


def test_precomputed_reference_logps_do_not_change_the_losses(prefs_path, in_tmp):
    common = ["algorithm=dpo", f"algorithm.data.path={prefs_path}", "trainer.max_steps=4", "algorithm.lr=1e-3"]
    cached = _fit(*common, "algorithm.precompute_ref_logps=true")
    live = _fit(*common, "algorithm.precompute_ref_logps=false")
    assert cached.reference is None and live.reference is not None
    for key in ("train/loss", "train/rewards_chosen", "train/rewards_rejected", "train/reward_margin"):
        a, b = _values(cached, key), _values(live, key)
        assert len(a) == len(b) == 4 and torch.allclose(torch.tensor(a), torch.tensor(b), atol=1e-5), (key, a, b)
    assert _values(cached, "train/loss")[-1] < _values(cached, "train/loss")[0]  # and it learns (lr 1e-3)


def test_dpo_steps_are_optimizer_steps(prefs_path, in_tmp):
    module = _fit("algorithm=dpo", f"algorithm.data.path={prefs_path}", "trainer.max_steps=5", "trainer.eval_every=2")
    assert module.trainer.global_step == 5
    assert _steps(module, "train/loss") == [1, 2, 3, 4, 5]
    assert _steps(module, "eval/reward_mean") == [0, 2, 4, 5]
    assert module.last_eval["step"] == 5


# ------------------------------------------------------------------ rejection sampling
def test_only_positive_rewards_are_accepted():
    scores = torch.tensor([0.0, 0.0, 0.0,   0.5, 1.0, 1.0,   0.2, -1.0, 0.1])  # 3 prompts × k=3
    best = SimpleNamespace(algo=SimpleNamespace(samples_per_prompt=3, threshold=None))
    assert RejectionSamplingModule.accept(best, scores) == [4, 6]  # first best; none for the all-zero prompt
    above = SimpleNamespace(algo=SimpleNamespace(samples_per_prompt=3, threshold=0.2))
    assert RejectionSamplingModule.accept(above, scores) == [3, 4, 5, 6]
    nonpositive = SimpleNamespace(algo=SimpleNamespace(samples_per_prompt=3, threshold=-2.0))
    assert RejectionSamplingModule.accept(nonpositive, scores) == [3, 4, 5, 6, 8]


def test_rounds_follow_one_another_and_rounds_caps_them(in_tmp):
    module = _fit(*RS, "trainer.max_steps=6")  # ≤ 4 accepted, 2 per step: ≤ 2 steps a round
    rounds = _values(module, "train/round")
    assert len(rounds) >= 3 and rounds == sorted(rounds) and module.last_eval["step"] == 6
    assert _steps(module, "train/loss") == [1, 2, 3, 4, 5, 6]  # what a round with no accepted sample lacks
    capped = _fit(*RS, "trainer.max_steps=50", "algorithm.rounds=1")
    assert _values(capped, "train/round") == [1.0]
    assert capped.trainer.global_step <= 2 and capped.last_eval["step"] == capped.trainer.global_step


def test_a_round_that_accepts_nothing_makes_no_update(in_tmp):
    # exact-match reward and the weak FAST warm start: no completion scores > 0, so nothing is accepted
    overrides = ["algorithm=rejection_sampling", "algorithm.num_prompts=4", "trainer.max_steps=2"]
    module = _fit(*overrides)
    cfg = compose([*BASE, *overrides])
    start = load_causal_lm(prepare_model_dir(cfg.model, instantiate(cfg.task), cfg.hardware)[0])
    assert _values(module, "train/accepted_fraction") == [0.0, 0.0] and not _values(module, "train/loss")
    assert torch.equal(_params(module), _params(SimpleNamespace(model=start)))
    assert _steps(module, "eval/reward_mean") == [0, 1, 2]


# ------------------------------------------------------------------ every knob acts
def _params(module):
    return torch.cat([p.detach().flatten() for p in module.model.parameters()])


KNOB_BASES = {"dpo": DPO_GEN, "rejection_sampling": [*RS, "trainer.max_steps=3"], "sft": SFT}
KNOBS = {  # (algorithm, knob) -> the flipped value
    ("dpo", "beta"): "0.1", ("dpo", "loss_type"): "ipo", ("dpo", "label_smoothing"): "0.2",
    ("dpo", "lr"): "1e-4", ("dpo", "warmup_steps"): "0", ("dpo", "weight_decay"): "0.5",
    ("dpo", "batch_size"): "2", ("dpo", "max_grad_norm"): "0.001", ("dpo", "data.num_prompts"): "12",
    ("dpo", "data.samples_per_prompt"): "2",
    ("rejection_sampling", "num_prompts"): "6", ("rejection_sampling", "samples_per_prompt"): "2",
    ("rejection_sampling", "threshold"): "0.2", ("rejection_sampling", "epochs_per_round"): "3",
    ("rejection_sampling", "rounds"): "1", ("rejection_sampling", "batch_size"): "4",
    ("rejection_sampling", "lr"): "1e-3", ("rejection_sampling", "warmup_steps"): "0",
    ("rejection_sampling", "weight_decay"): "0.5", ("rejection_sampling", "max_grad_norm"): "0.001",
    ("sft", "lr"): "1e-4", ("sft", "warmup_steps"): "0", ("sft", "weight_decay"): "0.5", ("sft", "batch_size"): "4",
    ("sft", "max_grad_norm"): "0.001",
}
# knobs tested elsewhere: data.path / data.skip_invalid (the file tests above); precompute_ref_logps must
# NOT change the update (test_precomputed_reference_logps_do_not_change_the_losses)
NOT_IN_TABLE = {("dpo", "data.path"), ("dpo", "data.skip_invalid"), ("dpo", "precompute_ref_logps")}
_BASE_PARAMS: dict[str, torch.Tensor] = {}


def test_knob_table_covers_every_offline_key():
    for algorithm in OFFLINE:
        keys = set(OmegaConf.to_container(compose([f"algorithm={algorithm}"]).algorithm)) - {"name", "module", "data"}
        if algorithm == "dpo":
            keys |= {f"data.{k}" for k in compose(["algorithm=dpo"]).algorithm.data}
        assert {(algorithm, k) for k in keys} == {k for k in KNOBS if k[0] == algorithm} | \
            {k for k in NOT_IN_TABLE if k[0] == algorithm}, algorithm


def _base_params(algorithm):
    if algorithm not in _BASE_PARAMS:
        first, again = _params(_fit(*KNOB_BASES[algorithm])), _params(_fit(*KNOB_BASES[algorithm]))
        assert torch.equal(first, again), "the same config must give the same update (CPU determinism)"
        _BASE_PARAMS[algorithm] = first
    return _BASE_PARAMS[algorithm]


@pytest.mark.parametrize("algorithm, knob", sorted(KNOBS))
def test_every_offline_knob_changes_the_update(algorithm, knob, in_tmp):
    changed = _params(_fit(*KNOB_BASES[algorithm], f"algorithm.{knob}={KNOBS[algorithm, knob]}"))
    assert not torch.equal(_base_params(algorithm), changed), f"algorithm.{knob} changed nothing"


@pytest.mark.parametrize("algorithm", ["dpo", "rejection_sampling"])
def test_rollout_sampling_knobs_change_the_update(algorithm, in_tmp):
    for flipped in ("rollout.temperature=0.5", "rollout.top_p=0.5", "seed=1"):
        assert not torch.equal(_base_params(algorithm), _params(_fit(*KNOB_BASES[algorithm], flipped))), flipped


# ------------------------------------------------------------------ through the CLI into MLflow
def _only_run(uri, experiment):
    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name(experiment).experiment_id])
    assert len(runs) == 1
    return client, runs[0]


def _history_steps(client, run_, key):
    return sorted(m.step for m in client.get_metric_history(run_.info.run_id, key))


def test_dpo_with_generated_pairs_through_the_cli_and_reloaded(mlflow_uri, in_tmp):
    assert main(["train", *BASE, *DPO_GEN, f"tracking.uri={mlflow_uri}", "tracking.experiment=off-dpo"]) == 0
    client, run_ = _only_run(mlflow_uri, "off-dpo")
    assert run_.info.status == "FINISHED" and run_.data.tags["algorithm"] == "dpo"
    m = run_.data.metrics
    for name in ("train/loss", "train/rewards_chosen", "train/rewards_rejected", "train/reward_margin",
                 "train/reward_accuracy", "train/grad_norm", "eval/reward_mean", "eval/accuracy",
                 "eval/response_length", "data/pairs", "summary/final_eval_reward"):
        assert name in m, name
    assert _history_steps(client, run_, "train/loss") == [1, 2]
    assert _history_steps(client, run_, "eval/reward_mean") == [0, 1, 2]
    assert run_.data.params["algorithm.beta"] == "1.0"
    local = Path(client.download_artifacts(run_.info.run_id, "data/preferences.jsonl", str(in_tmp)))
    pairs, skipped = load_preferences(local)
    assert len(pairs) == m["data/pairs"] > 0 and not skipped
    records = [json.loads(line) for line in local.read_text().splitlines()]
    assert all(r["chosen_reward"] > r["rejected_reward"] for r in records)
    assert main(["train", *BASE, *DPO_GEN, f"algorithm.data.path={local}", f"tracking.uri={mlflow_uri}",
                 "tracking.experiment=off-dpo-file"]) == 0
    client, again = _only_run(mlflow_uri, "off-dpo-file")
    assert again.info.status == "FINISHED"
    assert again.data.metrics["data/pairs"] == m["data/pairs"] and again.data.metrics["data/skipped_records"] == 0
    assert "data" not in {a.path for a in client.list_artifacts(again.info.run_id)}  # a file set is not re-saved


def test_rejection_sampling_through_the_cli(mlflow_uri, in_tmp):
    assert main(["train", *BASE, *RS, "trainer.max_steps=3", f"tracking.uri={mlflow_uri}",
                 "tracking.experiment=off-rs"]) == 0
    client, run_ = _only_run(mlflow_uri, "off-rs")
    assert run_.info.status == "FINISHED" and run_.data.tags["algorithm"] == "rejection_sampling"
    for name in ("train/pass_at_k", "train/accepted_fraction", "train/loss", "train/round", "eval/reward_mean"):
        assert name in run_.data.metrics, name
    assert _history_steps(client, run_, "train/round")[0] == 0
    assert _history_steps(client, run_, "eval/reward_mean") == [0, 1, 2, 3]
    local = Path(client.download_artifacts(run_.info.run_id, "data/accepted_round_01.jsonl", str(in_tmp)))
    accepted = [json.loads(line) for line in local.read_text().splitlines()]
    assert accepted and all(r["reward"] > 0 and r["completion"] for r in accepted)


def test_sft_through_the_cli(mlflow_uri, in_tmp):
    assert main(["train", *BASE, *SFT, f"tracking.uri={mlflow_uri}", "tracking.experiment=off-sft"]) == 0
    client, run_ = _only_run(mlflow_uri, "off-sft")
    assert run_.info.status == "FINISHED" and run_.data.tags["algorithm"] == "sft"
    assert _history_steps(client, run_, "train/loss") == [1, 2]
    assert _history_steps(client, run_, "eval/reward_mean") == [0, 1, 2]
    assert any(a.path == "samples" for a in client.list_artifacts(run_.info.run_id))


# ------------------------------------------------------------------ learning (slow: real runs)
@pytest.mark.slow
@pytest.mark.parametrize("algorithm, gain", [("dpo", 0.1), ("rejection_sampling", 0.2)])
def test_offline_algorithms_learn_within_the_default_run_length(algorithm, gain, in_tmp):
    """`rlexp train algorithm=NAME` as it is: the final greedy evaluation is clearly above the warm start's."""
    module = run(compose([f"algorithm={algorithm}", "tracking=none", "trainer.progress_bar=false"]))
    evals = _values(module, "eval/reward_mean")
    assert module.trainer.global_step == 150 and module.last_eval["step"] == 150
    assert evals[-1] >= evals[0] + gain, f"{algorithm}: eval/reward_mean {evals}"
