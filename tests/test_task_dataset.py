"""task=dataset: prompts and answers from real files of each format (JSONL, JSON, CSV, Parquet, a save_to_disk
directory) written here, nested fields, the template, the system prompt, the held-out split, malformed rows
named by file:line (or skipped and counted), start-up refusals in one line, and `rlexp train task=dataset`
recording its data in MLflow."""
from __future__ import annotations

import json
import logging

import datasets
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from fast_overrides import FAST
from rlexp.cli import main
from rlexp.config import ConfigError, validate
from rlexp.config.paths import DatasetError
from rlexp.tasks.base import Example
from rlexp.tasks.dataset import DatasetTask
from rlexp.train import compose

ROWS = [{"q": f"{a:02d}+{b:02d}=", "a": a + b, "meta": {"answer": str(a + b), "topic": "sum"}}
        for a, b in [(7, 45), (12, 30), (3, 9), (50, 50), (1, 1), (20, 22), (33, 44), (9, 90), (15, 15), (8, 0)]]
EXPECTED = [Example(r["q"], str(r["a"])) for r in ROWS]


def write(fmt: str, directory, rows=ROWS, name="data"):
    """``rows`` written as a real file (or directory) of format ``fmt``; its path."""
    path = directory / (f"{name}_dir" if fmt == "disk" else f"{name}.{fmt}")
    if fmt == "jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    elif fmt == "json":
        path.write_text(json.dumps(rows, indent=1))
    elif fmt == "csv":
        pd.DataFrame([{"q": r["q"], "a": r["a"]} for r in rows]).to_csv(path, index=False)
    elif fmt == "parquet":
        pd.DataFrame(rows).to_parquet(path)
    else:
        datasets.Dataset.from_list(rows).save_to_disk(str(path))
    return path


def task(path, **kw) -> DatasetTask:
    return DatasetTask(path=str(path), **{"prompt_field": "q", "answer_field": "a", **kw})


def everything(t: DatasetTask) -> list[Example]:
    return sorted(t.train_examples + t.eval_examples, key=EXPECTED.index)


# ------------------------------------------------------------------------------------------ reading
@pytest.mark.parametrize("fmt", ["jsonl", "json", "csv", "parquet", "disk"])
def test_each_format_gives_the_same_examples(fmt, tmp_path):
    t = task(write(fmt, tmp_path))
    assert everything(t) == EXPECTED  # numbers as their text: 52, not 52.0
    assert len(t.eval_examples) == 1 and len(t.train_examples) == 9  # 10% of 10 prompts
    assert [s.context for s in t.data_sources] == ["train", "eval"] and len(t.data_sources[0].sha256) == 64


def test_a_dataset_dict_directory_reads_its_train_split(tmp_path):
    path = tmp_path / "dd"
    datasets.DatasetDict({"train": datasets.Dataset.from_list(ROWS),
                          "test": datasets.Dataset.from_list(ROWS[:2])}).save_to_disk(str(path))
    assert everything(task(path)) == EXPECTED
    held_out = task(path, eval_path=str(path / "test"))
    assert held_out.train_examples == EXPECTED and held_out.eval_examples == EXPECTED[:2]


def test_csv_cells_are_text_as_written(tmp_path):
    path = tmp_path / "d.csv"
    path.write_text('q,a\n01+06=,07\nNA,None\n"multi\nline",1.50\n')
    assert pairs(task(path, eval_fraction=0.4)) == {"01+06=": "07", "NA": "None", "multi\nline": "1.50"}


def pairs(t: DatasetTask) -> dict[str, str]:
    """``{prompt: answer}`` of every example, train and held out."""
    return {e.prompt: e.target for e in t.train_examples + t.eval_examples}


def test_nested_fields_and_a_template(tmp_path):
    path = write("jsonl", tmp_path)
    t = task(path, answer_field="meta.answer", template="[{meta.topic}] {q}")
    assert pairs(t) == {f"[sum] {e.prompt}": e.target for e in EXPECTED}
    # a number in a placeholder is its text; literal braces; a format spec
    assert "{   2} 01+01=" in pairs(task(path, template="{{{a:>4}}} {q}"))
    # a flat file's column named with a dot is found by that name
    flat = tmp_path / "flat.parquet"
    pd.DataFrame([{"q": r["q"], "meta.answer": r["meta"]["answer"]} for r in ROWS]).to_parquet(flat)
    assert pairs(task(flat, answer_field="meta.answer")) == pairs(task(path))


def test_numbers_are_their_text_but_a_prompt_must_be_text(tmp_path):
    path = tmp_path / "n.jsonl"
    path.write_text('{"q": "a", "a": 42}\n{"q": "b", "a": 42.0}\n{"q": "c", "a": 0.5}\n{"q": "d", "a": "x"}\n')
    t = task(path, eval_fraction=0.25)  # mixed types: read line by line
    assert {e.prompt: e.target for e in t.train_examples + t.eval_examples} == {"a": "42", "b": "42", "c": "0.5",
                                                                                 "d": "x"}
    path.write_text('{"q": "a", "a": 1}\n{"q": 7, "a": 1}\n')
    with pytest.raises(DatasetError, match=r"n\.jsonl:2: field 'q' \(task\.prompt_field\) must be a string, got int"):
        task(path)


def test_limit_keeps_the_first_rows(tmp_path):
    t = task(write("parquet", tmp_path), limit=4, eval_fraction=0.25)
    assert everything(t) == EXPECTED[:4]


def test_the_system_prompt_is_written_before_each_prompt_without_a_chat_template(tmp_path):
    t = task(write("jsonl", tmp_path), system_prompt="Add the numbers.")
    assert all(e.prompt.startswith("Add the numbers.\n\n") for e in t.train_examples + t.eval_examples)
    assert t.system_turn is None and t.extra_text() == []
    chat = task(write("jsonl", tmp_path), system_prompt="Add the numbers.", chat_template=True)
    assert {e.prompt for e in chat.train_examples} <= {e.prompt for e in EXPECTED}  # the user's text only
    assert chat.system_turn == "Add the numbers." and chat.extra_text() == ["Add the numbers."]


def test_with_a_chat_template_the_system_prompt_is_the_system_turn_of_every_rollout(tmp_path):
    """A real chat template (Jinja, rendered by transformers) on the embedded model's tokenizer: the rollout's
    prompt tokens hold the system turn, then the user turn."""
    from rlexp.models import build_char_tokenizer, build_tiny_model
    from rlexp.rollout import generate_rollout
    from rlexp.rollout.batch import collate_supervised

    t = task(write("jsonl", tmp_path), system_prompt="be brief", chat_template=True)
    tok = build_char_tokenizer("0123456789+=<>/abefilmrstuy ")
    tok.chat_template = ("{% for m in messages %}<{{ m.role }}>{{ m.content }}</{{ m.role }}>{% endfor %}"
                         "{% if add_generation_prompt %}<a>{% endif %}")
    model = build_tiny_model(tok, hidden_size=16, intermediate_size=32, num_layers=1, num_heads=2, seed=0)
    batch = generate_rollout(model, tok, t, t.train_examples[:2], num_generations=1, max_new_tokens=2)
    first = tok.decode(batch.prompt_ids[0][batch.prompt_mask[0].bool()])
    assert first == f"<system>be brief</system><user>{t.train_examples[0].prompt}</user><a>"
    prompt_ids, mask, _, _ = collate_supervised(tok, [t.train_examples[0].prompt], ["52"], chat_template=True,
                                                system_turn=t.system_turn)
    assert tok.decode(prompt_ids[0][mask[0].bool()]) == first  # the SFT / DPO rows encode it alike
    plain = task(write("jsonl", tmp_path), chat_template=True)
    batch = generate_rollout(model, tok, plain, plain.train_examples[:1], num_generations=1, max_new_tokens=2)
    assert tok.decode(batch.prompt_ids[0][batch.prompt_mask[0].bool()]).startswith("<user>")


# ------------------------------------------------------------------------------------------ split
def test_the_split_is_deterministic_disjoint_and_seeded(tmp_path):
    rows = [{"q": f"{i:03d}+1=", "a": i + 1} for i in range(200)] + [{"q": "000+1=", "a": 1}]  # a repeated prompt
    path = write("jsonl", tmp_path, rows)
    a, b = task(path, eval_fraction=0.2), task(path, eval_fraction=0.2)
    assert a.eval_examples == b.eval_examples and a.train_examples == b.train_examples
    train, held_out = {e.prompt for e in a.train_examples}, {e.prompt for e in a.eval_examples}
    assert not train & held_out and len(held_out) == 40 and len(train | held_out) == 200
    assert len(a.train_examples) + len(a.eval_examples) == 201  # the repeated prompt's rows land on one side
    other = task(path, eval_fraction=0.2, split_seed=7)
    assert {e.prompt for e in other.eval_examples} != held_out
    assert a.fingerprint() != other.fingerprint()


def test_a_split_needs_a_prompt_on_each_side(tmp_path):
    path = write("jsonl", tmp_path, ROWS[:1])
    with pytest.raises(DatasetError, match=r"^task\.eval_fraction=0\.1 of the 1 distinct prompt\(s\) of "
                                           r"task\.path=.*leaves none to train on"):
        task(path)
    assert len(task(write("jsonl", tmp_path, ROWS[:2])).eval_examples) == 1


# ------------------------------------------------------------------------------------------ malformed rows
GOOD = json.dumps(ROWS[0])
MALFORMED = {  # a JSONL line -> the error after `file:LINE: `
    "missing answer": ('{"q": "1+1="}', "field 'a' (task.answer_field) is missing or null"),
    "null prompt": ('{"q": null, "a": 1}', "field 'q' (task.prompt_field) is missing or null"),
    "empty prompt": ('{"q": "  ", "a": 1}', "field 'q' (task.prompt_field) is empty"),
    "empty answer": ('{"q": "1+1=", "a": ""}', "field 'a' (task.answer_field) is empty"),
    "non-string prompt": ('{"q": 11, "a": 1}', "field 'q' (task.prompt_field) must be a string, got int (11)"),
    "list answer": ('{"q": "1+1=", "a": [2]}', "field 'a' (task.answer_field) must be a string or a number, got "
                                                "list ([2])"),
    "boolean answer": ('{"q": "1+1=", "a": true}', "field 'a' (task.answer_field) must be a string or a number, "
                                                    "got bool (True)"),
    "invalid JSON": ('{"q": "1+1=", "a": ', "invalid JSON (Expecting value at column 20)"),
    "not an object": ("[1, 2]", "a row must be a JSON object, got list"),
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_a_malformed_jsonl_row_is_refused_naming_file_line_and_field(case, tmp_path):
    line, why = MALFORMED[case]
    path = tmp_path / "d.jsonl"
    path.write_text(f"{GOOD}\n\n{GOOD}\n{line}\n{GOOD}\n")  # a blank line is no row: the bad one is on line 4
    with pytest.raises(DatasetError) as e:
        task(path)
    assert str(e.value) == f"{path}:4: {why} (task.skip_invalid=true skips such rows)"


def test_a_malformed_row_in_each_other_format_is_named(tmp_path):
    csv = tmp_path / "d.csv"
    csv.write_text('q,a\n01+01=,2\n\n"two\nlines",3\n05+05=,\n')
    with pytest.raises(DatasetError, match=rf"^{csv}:6: field 'a' \(task\.answer_field\) is empty \("):
        task(csv)  # the header is line 1; a blank line and a quoted line break are counted
    rows = [*ROWS[:3], {"q": "x", "meta": {"topic": "t"}}]
    for fmt in ("json", "parquet", "disk"):
        path = write(fmt, tmp_path, [{**r, "a": str(r["a"])} if "a" in r else r for r in rows])
        with pytest.raises(DatasetError, match=rf"^{path}: row 3: field 'a' \(task\.answer_field\) is missing"):
            task(path)
    broken = tmp_path / "broken.json"
    broken.write_text('[{"q": "a", "a": "1"},\n {"q": "b", "a": }]')
    with pytest.raises(DatasetError, match=rf"^{broken}:2: invalid JSON \(Expecting value at column 18\)$"):
        task(broken)


def test_skip_invalid_skips_and_counts_each_malformed_row(tmp_path, caplog):
    path = tmp_path / "d.jsonl"
    bad = [MALFORMED[k][0] for k in ("missing answer", "invalid JSON", "non-string prompt")]
    path.write_text("\n".join([GOOD, bad[0], json.dumps(ROWS[1]), bad[1], "", bad[2], json.dumps(ROWS[2])]) + "\n")
    with caplog.at_level(logging.WARNING, logger="rlexp.tasks.dataset"):
        t = task(path, skip_invalid=True, eval_fraction=0.34)
    assert [s.split(": ", 1)[0] for s in t.skipped] == [f"{path}:2", f"{path}:4", f"{path}:6"]
    assert everything(t) == EXPECTED[:3]
    assert "3 malformed row(s) skipped, the first: " + t.skipped[0] in caplog.text
    path.write_text(bad[0] + '\n{"q": "1+1=", "a": null}\n')
    with pytest.raises(DatasetError, match=rf"^task\.path={path}: no valid rows \(2 malformed, skipped\)$"):
        task(path, skip_invalid=True)


# ------------------------------------------------------------------------------------------ start-up refusals
def refused(overrides, capsys) -> str:
    """The one line `rlexp train task=dataset <overrides>` exits with (status 2, before any model is built)."""
    base = [o for o in FAST if not o.startswith("task.")]  # task.num_eval: the generated tasks' key
    with pytest.raises(SystemExit) as e:
        main(["train", *base, "tracking=none", "task=dataset", *overrides])
    lines = capsys.readouterr().err.strip().splitlines()
    assert e.value.code == 2 and len(lines) == 1 and lines[0].startswith("rlexp: config error: "), lines
    return lines[0].removeprefix("rlexp: config error: ")


def test_rlexp_train_refuses_bad_data_in_one_line_with_status_2(tmp_path, in_tmp, capsys):
    assert refused([], capsys).startswith("task.path is not set: point it at your data, e.g. task.path=")
    broken = tmp_path / "broken.jsonl"
    broken.write_text(GOOD + "\n" + MALFORMED["empty answer"][0] + "\n")
    assert refused([f"task.path={broken}", "task.prompt_field=q", "task.answer_field=a"], capsys) == \
        f"{broken}:2: field 'a' (task.answer_field) is empty (task.skip_invalid=true skips such rows)"
    assert not list(in_tmp.rglob("policy"))  # nothing was built


def refusal(*overrides) -> str:
    """The ConfigError of start-up validation for ``task=dataset <overrides>``."""
    with pytest.raises(ConfigError) as e:
        validate(compose(["task=dataset", *overrides]))
    assert "\n" not in str(e.value)
    return str(e.value)


def test_start_up_refusals_name_the_key(tmp_path):
    path = write("jsonl", tmp_path)
    fields = ["task.prompt_field=q", "task.answer_field=a"]
    assert refusal(f"task.path={tmp_path}/absent.jsonl") == \
        f"task.path={tmp_path}/absent.jsonl: no such file or directory (data is read from local paths only)"
    (tmp_path / "notes.txt").write_text("hello")
    assert refusal(f"task.path={tmp_path}/notes.txt").startswith(
        f"task.path={tmp_path}/notes.txt: unknown format '.txt'; task.path takes .jsonl, .json, .csv, .parquet")
    assert "not one written by datasets' save_to_disk" in refusal(f"task.path={tmp_path}")
    assert refusal(f"task.path={path}", *fields, f"task.eval_path={tmp_path}/absent.csv") == \
        f"task.eval_path={tmp_path}/absent.csv: no such file or directory (data is read from local paths only)"
    assert refusal(f"task.path={path}", *fields, f"task.eval_path={path}", "task.eval_fraction=0.2") == \
        f"task.eval_path={path} and task.eval_fraction=0.2 are both set: the held-out prompts come from one of " \
        f"them (set the other to null)"
    assert refusal(f"task.path={path}", *fields, "task.eval_fraction=1.5") == \
        "task.eval_fraction=1.5 is out of range: must be > 0.0 and < 1.0"
    assert refusal(f"task.path={path}", *fields, "task.template='{q} {meta.level}'") == \
        f"task.template='{{q}} {{meta.level}}': no field 'meta.level' in task.path={path} (the fields of 'meta': " \
        f"answer, topic)"
    assert refusal(f"task.path={path}", "task.prompt_field=question") == \
        f"task.prompt_field=question: no field 'question' in task.path={path} (the fields: q, a, meta)"
    assert refusal(f"task.path={path}", *fields, "task.answer_field=q.x") == \
        f"task.answer_field=q.x: the field 'q' of task.path={path} holds string values, which have no field 'x'"
    assert refusal(f"task.path={path}", *fields, "task.template='{0}'").startswith(
        "task.template='{0}': the placeholder {0} must name a field")
    assert refusal(f"task.path={path}", *fields, "task.template='{q'").startswith(
        "task.template='{q' is not a valid template")


def test_every_key_of_the_option_is_checked_by_its_schema(tmp_path):
    cfg = compose(["task=dataset", f"task.path={write('csv', tmp_path)}", "task.prompt_field=q",
                   "task.answer_field=a", "task.limit=0"])
    with pytest.raises(ConfigError, match=r"^task\.limit=0 is out of range: must be >= 1$"):
        validate(cfg)


# ------------------------------------------------------------------------------------------ end to end
def _arithmetic_rows(n: int) -> list[dict]:
    return [{"q": f"{a:02d}+{b:02d}=", "a": str(a + b)} for a, b in ((i * 7 % 100, i * 13 % 100) for i in range(n))]


@pytest.mark.slow
def test_train_on_a_dataset_records_it_in_mlflow(tmp_path, mlflow_uri, in_tmp):
    rows = _arithmetic_rows(300)
    path = tmp_path / "train.jsonl"
    path.write_text("".join(json.dumps({"input": {"q": r["q"]}, "a": r["a"]}) + "\n" for r in rows)
                    + '{"input": {"q": "01+01="}}\n' + "not json\n")
    base = [o for o in FAST if not o.startswith("task.")]
    assert main(["train", *base, "task=dataset", f"task.path={path}", "task.prompt_field=input.q",
                 "task.answer_field=a", "task.skip_invalid=true", "task.max_new_tokens=8",
                 f"tracking.uri={mlflow_uri}", "tracking.experiment=task_dataset"]) == 0
    client = MlflowClient(mlflow_uri)
    run = client.search_runs([client.get_experiment_by_name("task_dataset").experiment_id])[0]
    assert run.info.status == "FINISHED"
    import hashlib
    assert run.data.tags["dataset.sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert run.data.tags["dataset.path"] == str(path.resolve()) and "dataset.eval_path" not in run.data.tags
    assert run.data.params["task.path"] == str(path) and run.data.params["task.prompt_field"] == "input.q"
    assert [m.value for m in client.get_metric_history(run.info.run_id, "data/skipped_records")] == [2.0]
    inputs = client.get_run(run.info.run_id).inputs.dataset_inputs
    by_context = {next(t.value for t in i.tags if t.key == "mlflow.data.context"): i.dataset for i in inputs}
    assert sorted(by_context) == ["eval", "train"]
    assert json.loads(by_context["train"].profile)["num_rows"] == 270
    assert json.loads(by_context["eval"].profile)["num_rows"] == 30
    assert all(json.loads(d.source)["uri"] == str(path.resolve()) and d.name == "train.jsonl"
               for d in by_context.values())
    evals = client.get_metric_history(run.info.run_id, "eval/reward_mean")
    assert len(evals) == 3 and all(0.0 <= m.value <= 1.0 for m in evals)


@pytest.mark.slow
def test_a_held_out_file_is_recorded_with_its_own_hash(tmp_path, mlflow_uri, in_tmp):
    rows = _arithmetic_rows(280)
    train, held_out = write("parquet", tmp_path, rows[:250], "train"), write("csv", tmp_path, rows[250:], "eval")
    base = [o for o in FAST if not o.startswith("task.")]
    assert main(["train", *base, "task=dataset", f"task.path={train}", f"task.eval_path={held_out}",
                 "task.prompt_field=q", "task.answer_field=a", "task.max_new_tokens=8", "model.warmstart.enabled=false",
                 f"tracking.uri={mlflow_uri}", "tracking.experiment=task_dataset_eval_file"]) == 0
    client = MlflowClient(mlflow_uri)
    run = client.search_runs([client.get_experiment_by_name("task_dataset_eval_file").experiment_id])[0]
    import hashlib
    assert run.data.tags["dataset.eval_sha256"] == hashlib.sha256(held_out.read_bytes()).hexdigest()
    assert run.data.tags["dataset.eval_path"] == str(held_out.resolve())
    assert [m.value for m in client.get_metric_history(run.info.run_id, "data/skipped_records")] == [0.0]
    names = sorted(i.dataset.name for i in client.get_run(run.info.run_id).inputs.dataset_inputs)
    assert names == ["eval.csv", "train.parquet"]


def test_a_failing_store_does_not_stop_the_run_and_is_listed(tmp_path, mlflow_uri):
    """A store that refuses every write to the run (a real SQLite store; the run deleted under the logger): each
    record is listed as not recorded, nothing raises (the run goes on; its end says what is missing)."""
    from rlexp.tracking.mlflow import RunLogger
    from rlexp.tracking.inputs import log_task_data

    logger = RunLogger(experiment_name="task_dataset_refused", tracking_uri=mlflow_uri)
    logger.experiment.delete_run(logger.run_id)  # writes to it now fail: "must be in the 'active' state"
    log_task_data(logger, task(write("jsonl", tmp_path), skip_invalid=True))
    assert logger.unlogged == ["the dataset tags", "the dataset inputs", "metrics of step 0"]
