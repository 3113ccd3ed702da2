"""Bad input, refused at start-up with one line naming the key, file or line: the table of the cases
tried, each driven through `rlexp train`'s entry function. The README's troubleshooting table is this one
(`python tests/test_bad_input.py` prints it in Markdown, with the messages as they are now)."""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fast_overrides import FAST  # noqa: E402

# (what is wrong, overrides (`{tmp}` = a scratch dir), exit status, a fragment of the one-line message)
TABLE = [
    ("an algorithm value out of range", ["algorithm.gamma=1.5"], 2, "algorithm.gamma=1.5 is out of range"),
    ("a value of the wrong type", ["algorithm.ppo_epochs=two"], 2, "algorithm.ppo_epochs"),
    ("a name no registry knows", ["algorithm.loss_agg=token-sum"], 2, "algorithm.loss_agg=token-sum"),
    ("incompatible algorithm values", ["algorithm.clip_eps=0.2", "algorithm.clip_eps_high=0.1"], 2,
     "algorithm.clip_eps_high=0.1 must be >= algorithm.clip_eps=0.2"),
    ("a minibatch that does not divide the batch", ["algorithm.minibatch_size=7"], 2,
     "algorithm.minibatch_size=7 must divide"),
    ("a KL term whose gradient is zero", ["algorithm.kl_estimator=k1", "algorithm.kl_placement=in_loss"], 2,
     "algorithm.kl_estimator=k1 with algorithm.kl_placement=in_loss has zero expected gradient"),
    ("a group estimator without groups", ["algorithm=grpo", "algorithm.num_generations=1"], 2,
     "algorithm.num_generations=1 must be >= 2"),
    ("a recipe of a name rlexp does not know, checked by its module", ["algorithm=grpo", "algorithm.name=mine",
                                                                       "algorithm.clip_eps=-1"], 2,
     "algorithm.clip_eps=-1.0 is out of range: must be > 0.0"),
    ("a recipe whose module has no schema", ["algorithm.module=mine"], 2,
     "algorithm.module=mine has no schema (algorithm=ppo): every algorithm option is checked by its module; "
     "known: online, dpo, rejection_sampling, sft"),
    ("an unknown group option", ["algorithm=ppo2"], 2, "Could not find 'algorithm/ppo2'; available: dapo"),
    ("an unknown key", ["algorithm.gama=0.9"], 2, "gama"),
    ("a model shape that cannot work", ["model.hidden_size=130"], 2,
     "model.hidden_size=130 must be divisible by model.num_heads=4"),
    ("an unknown dtype", ["model.dtype=float8"], 2, "model.dtype=float8"),
    ("a missing model directory", ["model=hf", "model.name_or_path={tmp}/absent"], 2, "model.name_or_path="),
    ("a model directory whose tokenizer has no EOS", ["model=hf", "model.name_or_path={tmp}/no_eos"], 1,
     "the tokenizer has no eos_token"),
    ("a task with a chat template on the embedded model", ["task=arithmetic_chat"], 2,
     "task.chat_template=true: model=tiny's character tokenizer has no chat template"),
    ("task text with characters a character tokenizer lacks",
     ["model=hf", "model.name_or_path={tmp}/digits", "task=arithmetic_chat", "task.chat_template=false"], 1,
     "task train prompt 0 'What is … has characters the character tokenizer of …digits cannot encode: ' ', '.'"),
    ("a LoRA rank out of range", ["model.lora.enabled=true", "model.lora.r=0"], 2, "model.lora.r=0"),
    ("a task value out of range", ["task.num_eval=0"], 2, "task.num_eval=0"),
    ("an unknown reward-error mode", ["task.on_reward_error=ignore"], 2, "task.on_reward_error=ignore"),
    ("fewer pass@k samples than the largest k", ["task.eval.pass_k=[1,8]", "task.eval.pass_samples=4"], 2,
     "task.eval.pass_samples=4 must be >= the largest task.eval.pass_k (8)"),
    ("a pass@k k below 1", ["task.eval.pass_k=[0,4]"], 2, "task.eval.pass_k[0]=0 is out of range: must be >= 1"),
    ("a reward function that cannot be imported", ["task.reward._target_=nowhere.reward"], 2,
     "task: Error locating target 'nowhere.reward'"),
    ("a weighted reward without a weight", ["task.rewards=[{_target_:rlexp.tasks.rewards.numeric_match}]"], 2,
     "task.rewards[0].weight is missing: each component needs a weight"),
    ("a weighted reward that cannot be imported",
     ["task.rewards=[{_target_:rlexp.tasks.rewards.numeric_match,weight:1},{_target_:nowhere.reward,weight:0.5}]"], 2,
     "task: Error locating target 'nowhere.reward' (task.rewards[1]._target_)"),
    ("two weighted rewards of one name", ["task.rewards=[{_target_:rlexp.tasks.rewards.numeric_match,weight:1,name:r},"
                                          "{_target_:rlexp.tasks.rewards.format,weight:0.1,name:r}]"], 2,
     "task.rewards[1].name=r is already the name of task.rewards[0]"),
    ("a task class that cannot be imported", ["task._target_=nowhere.Task"], 2,
     "task: Error locating target 'nowhere.Task' (task._target_)"),
    ("a hardware value out of range", ["hardware.devices=0"], 2, "hardware.devices=0"),
    ("an unknown precision", ["hardware.precision=8-bit"], 2, "hardware.precision=8-bit"),
    ("a batch that does not split over the workers", ["hardware=ddp_cpu", "algorithm.prompts_per_step=63",
                                                       "algorithm.minibatch_size=63"], 2,
     "must be a multiple of the number of workers"),
    ("a micro-batch that does not divide the minibatch", ["hardware.micro_batch_size=5"], 2,
     "hardware.micro_batch_size=5 must divide"),
    ("a tracking server without its URL", ["tracking=server"], 2, "tracking=server needs the server's URL"),
    ("an unusable tracking store", ["tracking=mlflow", "tracking.uri=sqlite:///{tmp}/a_file/sub/mlflow.db"], 1,
     "is not usable"),
    ("a checkpoint that does not exist", ["resume={tmp}/missing.ckpt"], 2, "no such checkpoint file"),
    ("a file that is not an rlexp checkpoint", ["resume={tmp}/foreign.ckpt"], 2,
     "not a checkpoint of an rlexp online run"),
    ("a malformed line in a preference file", ["algorithm=dpo", "algorithm.data.path={tmp}/prefs.jsonl"], 1,
     "prefs.jsonl:2: field 'rejected' is missing"),
    ("a dataset task without its file", ["task=dataset"], 2, "task.path is not set: point it at your data"),
    ("a dataset file that does not exist", ["task=dataset", "task.path={tmp}/absent.jsonl"], 2,
     "task.path=…/absent.jsonl: no such file or directory"),
    ("a dataset file of an unknown format", ["task=dataset", "task.path={tmp}/a_file"], 2,
     "task.path=…/a_file: unknown format (no suffix); task.path takes .jsonl, .json, .csv, .parquet files"),
    ("a held-out file and a held-out fraction together", ["task=dataset", "task.path={tmp}/data.jsonl",
                                                          "task.eval_path={tmp}/data.jsonl", "task.eval_fraction=0.2"], 2,
     "task.eval_path=…/data.jsonl and task.eval_fraction=0.2 are both set"),
    ("a field the dataset does not have", ["task=dataset", "task.path={tmp}/data.jsonl", "task.answer_field=solution"],
     2, "task.answer_field=solution: no field 'solution' in task.path=…/data.jsonl (the fields: prompt, answer)"),
    ("a malformed row in a dataset file", ["task=dataset", "task.path={tmp}/bad_rows.jsonl"], 2,
     "bad_rows.jsonl:2: field 'answer' (task.answer_field) is missing or null (task.skip_invalid=true skips such rows)"),
    ("a dataset too small to hold prompts out", ["task=dataset", "task.path={tmp}/one_row.jsonl"], 2,
     "task.eval_fraction=0.1 of the 1 distinct prompt(s) of task.path=…/one_row.jsonl leaves none to train on"),
    ("a reasoning-gym generator that does not exist", ["task=reasoning_gym", "task.dataset=chain_summ"], 2,
     "task: task.dataset='chain_summ' is not a reasoning-gym generator: did you mean chain_sum"),
    ("a key the reasoning-gym generator's config does not have", ["task=reasoning_gym", "+task.config.max_term=3"], 2,
     "task: task.config.max_term: chain_sum's config (ChainSumConfig) has no such key; its keys: min_terms"),
    ("running-sum chains with fewer terms at most than at least", ["task=running_sum", "task.max_terms=3"], 2,
     "task: task.max_terms=3 must be >= task.min_terms=4"),
    ("a preference file with characters the tokenizer lacks", ["algorithm=dpo", "algorithm.data.path={tmp}/abc.jsonl"],
     1, "abc.jsonl:1: field 'chosen' has characters the policy's character tokenizer cannot encode: 'x'"),
    ("a seed numpy cannot take", ["seed=4294967296"], 2, "seed=4294967296 must be an integer in [0, 2^32 - 1]"),
    ("a learning rate that is not a number", ["algorithm.actor_lr=nan"], 2, "algorithm.actor_lr=nan must be a finite"),
    ("an infinite learning rate", ["algorithm.actor_lr=inf"], 2, "algorithm.actor_lr=inf must be a finite number"),
    ("a GPU setting where CUDA is absent", ["hardware=gpu"], 2, "hardware.accelerator=gpu (hardware=gpu) needs CUDA"),
    ("CUDA asked for by name where it is absent", ["hardware.accelerator=cuda"], 2,
     "hardware.accelerator=cuda (hardware=cpu) needs CUDA"),
    ("fp16 mixed precision on CPU", ["hardware.precision=16-mixed"], 2,
     "hardware.precision=16-mixed needs a GPU: on CPU Lightning would run bf16-mixed instead"),
    ("vLLM's sleep mode on the CPU", ["rollout.engine=vllm", "rollout.vllm.sleep_between_rollouts=true"], 2,
     "rollout.vllm.sleep_between_rollouts=true needs a GPU"),
    ("an off-policy lag for an offline algorithm", ["algorithm=dpo", "rollout.off_policy_lag=2"], 2,
     "rollout.off_policy_lag=2: only online algorithms have rollouts to pipeline"),
    ("an off-policy lag on a GPU (the generator is a forked process)",
     ["hardware=gpu", "hardware.accelerator=cuda", "rollout.off_policy_lag=1"], 2,
     "rollout.off_policy_lag=1 runs its generator as a forked process, which works on the CPU only"),
    ("a cache directory that is a file", ["model.cache_dir={tmp}/a_file"], 2, "a_file is a file, not a directory"),
    ("a cache directory that cannot be written", ["model.cache_dir=/proc/rlexp-cache"], 2,
     "model.cache_dir=/proc/rlexp-cache: cannot be written"),
    ("a checkpoint directory under a file", ["checkpoint.dir={tmp}/a_file/ckpt"], 2,
     "checkpoint.dir=…/a_file/ckpt: …/a_file is a file, not a directory"),
    ("a checkpoint directory that cannot be written", ["checkpoint.dir=/proc/rlexp-ckpt"], 2,
     "checkpoint.dir=/proc/rlexp-ckpt: cannot be written"),
    ("an output directory that cannot be written", ["hydra.run.dir=/proc/rlexp-out"], 2,
     "hydra.run.dir=/proc/rlexp-out: cannot be written"),
    ("more held-out prompts than the operand range has", ["task.max_operand=5", "task.num_eval=40"], 2,
     "task.num_eval=40 leaves no training prompts: only 36 operand pairs in [0, 5]"),
    ("a token budget too small for the answers", ["task.max_new_tokens=2"], 2,
     "task.max_new_tokens=2 is too small: answers need up to 4 tokens"),
    ("an unquoted special character (Hydra's lexer)", ["checkpoint.dir=~/ckpt"], 2,
     "cannot parse the override checkpoint.dir=~/ckpt: '~' at position 1 of the value is special to Hydra's "
     "override grammar; quote the value, e.g. 'checkpoint.dir=\"~/ckpt\"'"),
    ("an unquoted quote", ["tracking.run_name=it's"], 2,
     "cannot parse the override tracking.run_name=it's: \"'\" at position 3"),
    ("full-width digits", ["algorithm.gamma=０.９"], 2,
     "'０' (FULLWIDTH DIGIT ZERO) at position 1 of the value is special to Hydra's override grammar; type it in "
     "ASCII digits"),
    ("a reward module in the current directory, which `rlexp train` does not import from",
     ["task.reward._target_=my_rewards.score"], 2,
     "my_rewards.py is in the current directory …, but the current directory … is not on the import path "
     "(`rlexp train` does not add it; `python -m rlexp train` does): run `PYTHONPATH=. rlexp train ...`"),
]


def _prepare(tmp: Path) -> None:
    """The files some cases point at."""
    import torch
    from rlexp.models import build_char_tokenizer, build_tiny_model
    (tmp / "a_file").write_text("a file where the store's directory should be")
    torch.save({"state_dict": {}}, tmp / "foreign.ckpt")
    good = {"prompt": "01+02=", "chosen": "3", "rejected": "4"}
    (tmp / "prefs.jsonl").write_text(json.dumps(good) + "\n" + json.dumps({"prompt": "01+02=", "chosen": "3"}) + "\n")
    rows = [{"prompt": "01+02=", "answer": "3"}, {"prompt": "02+02=", "answer": 4}, {"prompt": "05+01=", "answer": "6"}]
    (tmp / "data.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))  # task=dataset's files
    (tmp / "bad_rows.jsonl").write_text(json.dumps(rows[0]) + "\n" + json.dumps({"prompt": "02+02="}) + "\n")
    (tmp / "one_row.jsonl").write_text(json.dumps(rows[0]) + "\n")
    tok = build_char_tokenizer("0123456789+=")
    model = build_tiny_model(tok, hidden_size=16, intermediate_size=32, num_layers=1, num_heads=2, seed=0)
    (tmp / "abc.jsonl").write_text(json.dumps({**good, "chosen": "x"}) + "\n")
    model.save_pretrained(tmp / "digits")  # a character tokenizer of digits, + and =
    tok.save_pretrained(tmp / "digits")
    model.save_pretrained(tmp / "no_eos")
    tok.eos_token = None
    tok.save_pretrained(tmp / "no_eos")
    (tmp / "my_rewards.py").write_text("def score(prompts, completions, **kwargs):\n    return [0.0] * len(completions)\n")


#: rows that hold only where CUDA is absent (this machine, CI)
NEEDS_NO_CUDA = {"a GPU setting where CUDA is absent", "CUDA asked for by name where it is absent",
                 "fp16 mixed precision on CPU"}


def matches(fragment: str, line: str) -> bool:
    """``fragment`` is in ``line``, each ``…`` standing for any text (a scratch path)."""
    import re
    return re.search(".*".join(re.escape(part) for part in fragment.split("…")), line) is not None


def refusal(overrides: list[str], tmp: Path, capsys) -> tuple[int, str]:
    """``(exit status, the last line on stderr)`` of ``rlexp train <FAST> <overrides>``."""
    from rlexp.cli import main
    other_algorithm = any(o.startswith("algorithm=") and o != "algorithm=grpo" for o in overrides)
    no_num_eval = "task=dataset" in overrides  # FAST's task.num_eval is a key of the generated tasks only
    base = [o for o in FAST if not (other_algorithm and o.startswith("algorithm."))  # keys of PPO's schema
            and not (no_num_eval and o.startswith("task."))]
    cwd, path = os.getcwd(), list(sys.path)
    os.chdir(tmp)  # the current directory, which `rlexp train` (a console script) leaves off the import path
    sys.path[:] = [p for p in sys.path if p and Path(p).resolve() != Path(tmp).resolve()]
    try:
        with pytest.raises(SystemExit) as e:
            main(["train", *base, "tracking=none", *[o.replace("{tmp}", str(tmp)) for o in overrides]])
    finally:
        os.chdir(cwd)
        sys.path[:] = path
    lines = capsys.readouterr().err.strip().splitlines()
    return e.value.code, lines[-1] if lines else ""


@pytest.fixture(scope="module")
def scratch(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("bad_input")
    _prepare(tmp)
    return tmp


@pytest.mark.parametrize("what, overrides, status, fragment", TABLE, ids=[row[0] for row in TABLE])
def test_bad_input_is_refused_with_one_line(what, overrides, status, fragment, scratch, in_tmp, capsys):
    if what in NEEDS_NO_CUDA:
        import torch
        if torch.cuda.is_available():
            pytest.skip("this machine has CUDA")
    code, line = refusal(overrides, scratch, capsys)
    assert code == status, line
    assert line.startswith("rlexp: ") and matches(fragment, line), line
    assert not (scratch / "outputs").exists() or not list((scratch / "outputs").rglob("policy"))  # nothing trained


def test_a_cache_directory_from_the_environment_is_named(scratch, in_tmp, capsys, monkeypatch):
    """RLEXP_CACHE_DIR (where model.cache_dir comes from) naming a file: refused, naming the variable."""
    monkeypatch.setenv("RLEXP_CACHE_DIR", str(scratch / "a_file"))
    code, line = refusal([], scratch, capsys)
    assert code == 2 and line.startswith("rlexp: config error: RLEXP_CACHE_DIR=") and "(model.cache_dir)" in line, line
    assert "a_file is a file, not a directory" in line, line


def test_an_integer_temperature_is_taken_as_a_float():
    """`rollout.temperature=2` is 2.0 once validated (transformers' samplers refuse an int)."""
    from rlexp.config import validate
    from rlexp.train import compose
    cfg = compose(["rollout.temperature=2", "rollout.top_p=1"])
    validate(cfg)
    assert type(cfg.rollout.temperature) is float and cfg.rollout.temperature == 2.0
    assert type(cfg.rollout.top_p) is float


DOC = Path(__file__).resolve().parent.parent / "docs" / "troubleshooting.md"
_HEADER = "| what is wrong | example | exit | message |"


def _doc_table_bounds(lines: list[str]) -> tuple[int, int]:
    """``[start, end)`` of the table's lines in docs/troubleshooting.md (header and separator included)."""
    start = lines.index(_HEADER)
    end = start
    while end < len(lines) and lines[end].startswith("|"):
        end += 1
    return start, end


def test_the_troubleshooting_doc_lists_every_case_in_order():
    """docs/troubleshooting.md is this table (regenerate it with `python tests/test_bad_input.py`)."""
    lines = DOC.read_text().splitlines()
    start, end = _doc_table_bounds(lines)
    listed = [line[2:].split(" | ")[0] for line in lines[start + 2:end]]
    assert listed == [what for what, *_ in TABLE], "docs/troubleshooting.md is stale: python tests/test_bad_input.py"


if __name__ == "__main__":  # docs/troubleshooting.md's table, with the messages as they are
    import tempfile

    class _Cap:  # a minimal capsys stand-in for running outside pytest
        def readouterr(self):
            out = sys.stderr.getvalue()
            sys.stderr.truncate(0), sys.stderr.seek(0)
            return type("R", (), {"err": out})()
    import io
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        _prepare(tmp)
        real, sys.stderr = sys.stderr, io.StringIO()
        rows = []
        try:
            for what, overrides, status, fragment in TABLE:
                code, line = refusal(overrides, tmp, _Cap())
                rows.append((what, overrides, code, line.replace(str(tmp), "…")))
        finally:
            sys.stderr = real
    table = [_HEADER, "| --- | --- | --- | --- |"]
    for what, overrides, code, line in rows:
        ex = " ".join(o.replace("{tmp}", "…") for o in overrides)
        table.append(f"| {what} | `{ex}` | {code} | `{line.replace('|', '/')[:420]}` |")
    lines = DOC.read_text().splitlines()
    start, end = _doc_table_bounds(lines)
    DOC.write_text("\n".join(lines[:start] + table + lines[end:]) + "\n")
    print(f"wrote {len(rows)} rows into {DOC}")
