"""Prompts and reference answers from your own local file: ``task=dataset task.path=data/train.jsonl``.

**Rows.** Each row of the file (JSONL, JSON, CSV, Parquet, or a ``save_to_disk`` directory, read by
``rlexp.tasks.data_files``) gives one ``Example``: the prompt is the field ``prompt_field`` as it is, or,
with ``template``, the template's ``{field}`` placeholders filled from the row (``"Q: {question}\\nA:"``);
the reference answer is the field ``answer_field``. Nested fields are named with dots
(``answer_field=meta.answer``, ``{meta.topic}``). An answer (or a placeholder's value) that is a number
is used as its text: ``42`` and ``42.0`` give ``"42"``, ``0.5`` gives ``"0.5"``; a prompt field must be
text. ``limit`` keeps the first rows of ``path``.

**Malformed rows** (a field missing or null, empty, of the wrong type; a line that is not JSON) stop the
run before anything is built, with one line ``file:line: field 'x' ...`` (``file: row N:`` where a file
has no lines); with ``skip_invalid=true`` they are skipped and counted instead (``skipped``, logged as
``data/skipped_records``). Fields that no row has (a misspelt ``answer_field``, a placeholder that is not
a field) are refused naming the key.

**Held-out split.** ``eval_path`` (a file of its own), or ``eval_fraction`` of the distinct prompts of
``path`` (10 % when neither is set), drawn with ``split_seed``: deterministic, and disjoint by prompt
(rows with the same prompt land on the same side); at least one prompt on each side.

**System prompt.** With ``chat_template=true`` it is the conversation's system turn (before the user
turn that holds the prompt; ``Example.prompt`` is the user's text); without, it is written before the
prompt text, followed by a blank line, and is part of ``Example.prompt``.

``data_sources`` (each file's resolved path, sha256 and the examples taken from it) and ``skipped`` are
what the MLflow run records (``rlexp.tracking.inputs``).
"""
from __future__ import annotations

import logging
import math
import random
import string
from dataclasses import dataclass
from pathlib import Path

from rlexp.tasks.arithmetic import exact_match
from rlexp.tasks.base import Example, Task
from rlexp.tasks.data_files import DatasetError, Rows, read_rows, sha256_of

log = logging.getLogger(__name__)

#: the held-out share of the prompts when neither ``eval_path`` nor ``eval_fraction`` is set
DEFAULT_EVAL_FRACTION = 0.1
_SKIP_HINT = "task.skip_invalid=true skips such rows"
_MISSING = object()


@dataclass(frozen=True)
class DataSource:
    """One file a task was read from, as the MLflow run records it."""
    context: str  # "train" or "eval"
    path: Path  # resolved
    sha256: str
    examples: tuple[Example, ...]


def lookup(row, name: str):
    """``row[a][b]`` for ``name="a.b"``; ``_MISSING`` when a part is absent (a field named with a dot itself,
    ``"a.b"``, is found too)."""
    if isinstance(row, dict) and name in row:
        return row[name]
    node = row
    for part in name.split("."):
        if not isinstance(node, dict) or part not in node:
            return _MISSING
        node = node[part]
    return node


def as_text(value) -> str | None:
    """A field's value as text: a string as it is, a number as its shortest text (``42.0`` -> ``"42"``); None
    for anything else (bool, list, dict, NaN)."""
    if isinstance(value, str):
        return value
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    if isinstance(value, float):
        if not math.isfinite(value):
            return None
        if value.is_integer() and abs(value) < 2 ** 53:
            return str(int(value))
        return repr(value)
    return str(value)


def _kind(value) -> str:
    shown = repr(value)
    return f"{type(value).__name__} ({shown[:40]}{'…' if len(shown) > 40 else ''})"


def parse_template(template: str | None) -> list[tuple[str, str | None, str | None, str]]:
    """``template`` as ``(literal text, field, format spec, conversion)`` pieces; a placeholder must name a
    field (``{question}``, ``{meta.topic}``), not a position (``{}``, ``{0}``) or an index (``{a[0]}``)."""
    if template is None:
        return []
    try:
        pieces = list(string.Formatter().parse(template))
    except ValueError as e:
        raise DatasetError(f"task.template={template!r} is not a valid template ({e}); write a literal brace "
                           f"as {{{{ or }}}}") from None
    for _, name, _, _ in pieces:
        if name is not None and (not name or name.isdigit() or "[" in name):
            raise DatasetError(f"task.template={template!r}: the placeholder {{{name}}} must name a field of the "
                               f"rows ({{question}}, {{meta.topic}} for a nested one)")
    return pieces


def _check_fields(rows: Rows, key: str, names: dict[str, str]) -> None:
    """Each field named by a config key (``names``: field -> ``key=value``) exists in the file: its first part,
    and its nested parts as far as the file's schema says (``Rows.fields``)."""
    for name, which in names.items():
        node = rows.fields
        if name in node:
            continue
        for depth, part in enumerate(name.split(".")):
            if node is None:  # nothing known below here: each row says
                break
            if not isinstance(node, dict):
                raise DatasetError(f"{which}: the field {'.'.join(name.split('.')[:depth])!r} of {key}={rows.shown} "
                                   f"holds {node} values, which have no field {part!r}")
            if part not in node:
                inside = f" of {'.'.join(name.split('.')[:depth])!r}" if depth else ""
                raise DatasetError(f"{which}: no field {name!r} in {key}={rows.shown} (the fields{inside}: "
                                   f"{', '.join(node) or 'none'})")
            node = node[part]


class DatasetTask(Task):
    """Prompts and answers read from a local file; see the module's docstring."""

    def __init__(self, *, path: str, name: str = "dataset", prompt_field: str = "prompt",
                 answer_field: str = "answer", template: str | None = None, system_prompt: str | None = None,
                 chat_template: bool = False, eval_path: str | None = None, eval_fraction: float | None = None,
                 split_seed: int = 1234, limit: int | None = None, skip_invalid: bool = False,
                 max_new_tokens: int = 32, reward=None, on_reward_error: str = "raise", **common):
        super().__init__(name=name, reward=reward or exact_match, max_new_tokens=max_new_tokens,
                         on_reward_error=on_reward_error, **common)
        if path is None:
            raise DatasetError("task.path is not set: point it at your data, e.g. task.path=data/train.jsonl (a "
                               ".jsonl, .json, .csv or .parquet file, or a directory written by save_to_disk)")
        if eval_path is not None and eval_fraction is not None:
            raise DatasetError(f"task.eval_path={eval_path} and task.eval_fraction={eval_fraction} are both set: "
                               f"the held-out prompts come from one of them (set the other to null)")
        self.prompt_field, self.answer_field, self.template = prompt_field, answer_field, template
        self.system_prompt, self.chat_template, self.skip_invalid = system_prompt or None, chat_template, skip_invalid
        self.system_turn = self.system_prompt if chat_template else None  # else: written into each prompt
        self.eval_fraction = None if eval_path is not None else (eval_fraction or DEFAULT_EVAL_FRACTION)
        self.split_seed, self.limit = split_seed, limit
        self._pieces = parse_template(template)
        self.skipped: list[str] = []  # "file:line: why" of each skipped row
        train_rows, examples = self._read(path, "task.path", limit)
        if eval_path is None:
            self.train_examples, self.eval_examples = self._split(train_rows, examples)
            eval_rows = train_rows
        else:
            eval_rows, self.eval_examples = self._read(eval_path, "task.eval_path", None)
            self.train_examples = examples
            self._warn_overlap()
        sources = [("train", train_rows, self.train_examples), ("eval", eval_rows, self.eval_examples)]
        hashes = {rows.path: sha256_of(rows.path) for _, rows, _ in sources}  # one file is read once
        self.data_sources = [DataSource(context, rows.path.resolve(), hashes[rows.path], tuple(examples))
                             for context, rows, examples in sources]
        if self.skipped:
            log.warning("task.skip_invalid=true: %d malformed row(s) skipped, the first: %s", len(self.skipped),
                        self.skipped[0])

    # ---------------------------------------------------------------------------------------- rows
    def _read(self, path, key: str, limit: int | None) -> tuple[Rows, list[Example]]:
        rows = read_rows(path, key, limit)
        names = {name: f"task.template={self.template!r}" for _, name, _, _ in self._pieces if name is not None}
        if not self._pieces:
            names[self.prompt_field] = f"task.prompt_field={self.prompt_field}"
        names.setdefault(self.answer_field, f"task.answer_field={self.answer_field}")
        _check_fields(rows, key, names)
        examples = []
        for i in range(len(rows.rows)):
            example, why = self._example(rows, i)
            if why is None:
                examples.append(example)
                continue
            where = f"{rows.where(i)}: {why}"
            if not self.skip_invalid:
                raise DatasetError(f"{where} ({_SKIP_HINT})")
            self.skipped.append(where)
        if not examples:
            raise DatasetError(f"{key}={path}: no valid rows ({len(rows.rows)} malformed, skipped)")
        return rows, examples

    def _field(self, row, name: str, key: str, numbers: bool) -> tuple[str | None, str | None]:
        """``(text, None)`` or ``(None, why)`` for the field ``name`` of ``row``."""
        value = lookup(row, name)
        if value is _MISSING or value is None:
            return None, f"field {name!r} ({key}) is missing" + (" or null" if value is None else "")
        text = as_text(value) if numbers else value if isinstance(value, str) else None
        if text is None:
            return None, f"field {name!r} ({key}) must be {'a string or a number' if numbers else 'a string'}, got " \
                         f"{_kind(value)}"
        return text, None

    def _example(self, rows: Rows, i: int) -> tuple[Example | None, str | None]:
        bad = rows.problem(i)
        if bad is not None:
            return None, bad
        row = rows.rows[i]
        if self._pieces:
            parts = []
            for literal, name, spec, conversion in self._pieces:
                parts.append(literal)
                if name is None:
                    continue
                text, why = self._field(row, name, "task.template", numbers=True)
                if why is not None:
                    return None, why
                parts.append(format({"r": repr, "a": ascii}.get(conversion, str)(text), spec or ""))
            prompt = "".join(parts)
            if not prompt.strip():
                return None, "the prompt that task.template makes of this row is empty"
        else:
            prompt, why = self._field(row, self.prompt_field, "task.prompt_field", numbers=False)
            if why is not None:
                return None, why
            if not prompt.strip():
                return None, f"field {self.prompt_field!r} (task.prompt_field) is empty"
        answer, why = self._field(row, self.answer_field, "task.answer_field", numbers=True)
        if why is not None:
            return None, why
        if not answer.strip():
            return None, f"field {self.answer_field!r} (task.answer_field) is empty"
        if self.system_prompt and not self.chat_template:
            prompt = f"{self.system_prompt}\n\n{prompt}"
        return Example(prompt=prompt, target=answer), None

    # ---------------------------------------------------------------------------------------- split
    def _split(self, rows: Rows, examples: list[Example]) -> tuple[list[Example], list[Example]]:
        """``eval_fraction`` of the distinct prompts held out (at least one), drawn with ``split_seed``; both
        sides keep the file's order."""
        prompts = list(dict.fromkeys(e.prompt for e in examples))
        k = max(1, round(self.eval_fraction * len(prompts)))
        if k >= len(prompts):
            raise DatasetError(f"task.eval_fraction={self.eval_fraction} of the {len(prompts)} distinct prompt(s) of "
                               f"task.path={rows.shown} leaves none to train on: it needs at least 2 (one to train "
                               f"on, one to evaluate), or a held-out file task.eval_path")
        held_out = set(random.Random(self.split_seed).sample(prompts, k))
        return [e for e in examples if e.prompt not in held_out], [e for e in examples if e.prompt in held_out]

    def _warn_overlap(self) -> None:
        both = {e.prompt for e in self.train_examples} & {e.prompt for e in self.eval_examples}
        if both:
            log.warning("%d prompt(s) of task.eval_path are also in task.path (e.g. %r): the evaluation is not "
                        "held out for them", len(both), next(iter(both))[:60])

    # ---------------------------------------------------------------------------------------- contract
    def extra_text(self) -> list[str]:
        """Text the model reads besides the prompts and answers: the system turn under ``chat_template``."""
        return [self.system_prompt] if self.chat_template and self.system_prompt else []

    def fingerprint(self) -> dict:
        return {**super().fingerprint(), "data": [(s.context, s.sha256) for s in self.data_sources],
                "prompt_field": self.prompt_field, "answer_field": self.answer_field, "template": self.template,
                "system_prompt": self.system_prompt, "chat_template": self.chat_template,
                "eval_fraction": self.eval_fraction, "split_seed": self.split_seed, "limit": self.limit,
                "skip_invalid": self.skip_invalid}
