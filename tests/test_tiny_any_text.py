"""The embedded tiny model on any text: its character alphabet is built from the task's own texts, and text
with a character outside a character tokenizer's alphabet is refused in one line naming the characters."""
from __future__ import annotations

import json

import pytest
from transformers import AutoTokenizer

from fast_overrides import FAST
from rlexp.models import (
    UnknownCharacterError, build_char_tokenizer, char_vocabulary, check_characters,
)
from rlexp.tasks import ArithmeticChatTask, ArithmeticTask, Example, Task, exact_match


class Reverse(Task):
    """``cat>`` → ``tac``, warm-started on ``=> tac`` and shown a ``Q: `` prefix (extra text)."""

    def __init__(self):
        super().__init__(name="reverse", reward=exact_match, max_new_tokens=6)
        self.train_examples = [Example(f"{w}>", w[::-1]) for w in ("cat", "dog")]
        self.eval_examples = [Example("émeu>", "uemé")]

    def sft_completion(self, example: Example) -> str:
        return "=> " + example.target

    def extra_text(self) -> list[str]:
        return ["Q:\n"]


def test_the_alphabet_is_every_character_of_the_task_texts():
    task = Reverse()
    assert task.char_alphabet() == "".join(sorted(set("cat>tacdog>god" + "émeu>uemé" + "=> " + "Q:\n")))
    where = [w for w, _ in task.texts()]
    assert where[:4] == ["task train prompt 0", "task train target 0", "task train prompt 1", "task train target 1"]
    assert where[4:] == ["task eval prompt 0", "task eval target 0", "task sft completion 0", "task sft completion 1",
                         "task extra text 0"]


def test_a_fixed_alphabet_is_kept_and_the_chat_task_derives_its_own():
    # the string task=arithmetic's tiny model directory key has always hashed: cached models keep their key
    assert ArithmeticTask().char_alphabet() == "0123456789+="
    chat = ArithmeticChatTask(chat_template=False)
    assert set("What is + ? Reply with just the number.0123456789") == set(chat.char_alphabet())


def test_the_character_tokenizer_takes_any_character_newlines_included(tmp_path):
    text = "Q:\n\nWhat is 7 + 45?\r\n→ émeu 😀\t"
    tok = build_char_tokenizer("".join(sorted(set(text))))
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert len(ids) == len(text) and tok.decode(ids) == text
    tok.save_pretrained(tmp_path)
    assert char_vocabulary(AutoTokenizer.from_pretrained(tmp_path)) == frozenset(text)


def test_text_outside_the_alphabet_is_refused_in_one_line_naming_the_characters():
    tok = build_char_tokenizer("0123456789+=")
    with pytest.raises(Exception, match=r"WordLevel error: Missing \[UNK\] token"):  # what the library says
        tok("12+a=", add_special_tokens=False)
    texts = [("task train prompt 0", "01+02="), ("task train prompt 1", "1 + 2 ="), ("task eval prompt 0", "x=?")]
    with pytest.raises(UnknownCharacterError) as e:
        check_characters(tok, texts, source="DIR")
    line = str(e.value)
    assert "\n" not in line
    assert line.startswith("task train prompt 1 '1 + 2 =' has characters the character tokenizer of DIR cannot "
                           "encode: ' ', and so do 1 other texts (all the characters it lacks: ' ', '?', 'x'); its "
                           "alphabet is '+0123456789='. Fix: model=tiny builds its alphabet"), line
    check_characters(tok, texts[:1])  # all known: nothing to say


def test_a_sampled_special_token_in_a_text_is_not_an_unknown_character():
    # a completion that sampled <pad> mid-way decodes to '1<pad>88' (DPO's generated pairs hold such text):
    # the tokenizer encodes it back to the pad id, so it must not be refused
    tok = build_char_tokenizer("0123456789+=")
    assert tok("1<pad>88<eos>", add_special_tokens=False).input_ids == [3, 0, 10, 10, 1]
    check_characters(tok, [("preference file line 3", "1<pad>88<eos>")])
    with pytest.raises(UnknownCharacterError, match=r"'<', 'a', 'p'"):
        check_characters(tok, [("preference file line 3", "1<pa88")])


def test_tokenizers_with_an_unknown_token_are_not_checked():
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.WordLevel(vocab={"<unk>": 0, "a": 1}, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    tok = PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>")
    assert char_vocabulary(tok) is None
    check_characters(tok, [("task train prompt 0", "zzz")])  # encodes as <unk>: no refusal


WORDS = ["task=arithmetic_chat", "task.chat_template=false", "task.max_operand=9", "task.num_eval=8",
         "task.max_new_tokens=4", "model.warmstart.batch_size=16", "model.warmstart.max_steps=20",
         "model.warmstart.eval_every=20"]


def test_a_task_of_words_trains_end_to_end_on_the_tiny_model(mlflow_uri, in_tmp):
    from mlflow.tracking import MlflowClient

    from rlexp.cli import main
    main(["train", *FAST, *WORDS, f"tracking.uri={mlflow_uri}", "tracking.experiment=tiny-words",
          "hydra.run.dir=run"])
    client = MlflowClient(mlflow_uri)
    run = client.search_runs([client.get_experiment_by_name("tiny-words").experiment_id])[0]
    assert run.info.status == "FINISHED"
    assert [m.step for m in client.get_metric_history(run.info.run_id, "eval/reward_mean")] == [0, 1, 2]
    vocab = json.loads((in_tmp / "run" / "policy" / "tokenizer.json").read_text())["model"]["vocab"]
    assert set("What is 7 + 45? Reply with just the number.") <= set(vocab)


@pytest.fixture(scope="module")
def digits_dir():
    """The embedded model's directory as built for task=arithmetic (its tokenizer knows digits, + and =)."""
    from rlexp.train import compose
    from rlexp.warmstart import build_tiny_dir

    return build_tiny_dir(compose(FAST).model, ArithmeticTask())


@pytest.mark.parametrize("warmstart", ["false", "true"])
def test_a_model_built_for_digits_refuses_a_task_of_words_in_one_line(warmstart, digits_dir, in_tmp, capsys):
    """model=hf on the tiny directory built for arithmetic, with a task of words: one line (from the warm start
    when there is one, else when the policy is built) naming the first prompt, the characters and the fix."""
    from rlexp.cli import main
    with pytest.raises(SystemExit) as e:
        main(["train", *FAST, *WORDS, "tracking=none", "model=hf", f"model.name_or_path={digits_dir}",
              f"model.warmstart.enabled={warmstart}"])
    text = capsys.readouterr().err
    err = text.strip().splitlines()
    assert e.value.code == 1 and "Traceback" not in text
    assert err[-1].startswith("rlexp: error: task train prompt 0 'What is ") and \
        f"has characters the character tokenizer of {digits_dir} cannot encode: ' ', '.', '?', 'R', 'W'" in err[-1]
    assert "its alphabet is '+0123456789='. Fix: model=tiny builds its alphabet from the task's own texts" in err[-1]
