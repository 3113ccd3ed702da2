"""One home per fact (issue 14 item 4): the store's URI precedence and the seed derivation each live in one
function that every command / call site uses."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

from rlexp.tracking.common import MissingStore, resolve_tracking_uri

ROOT = Path(__file__).resolve().parent.parent


def _files():
    return sorted((ROOT / "rlexp").rglob("*.py"))


def _rel(path: Path) -> str:
    return path.relative_to(ROOT).as_posix()


# ------------------------------------------------------------------------------------------ tracking URI
def test_one_function_resolves_the_tracking_uri():
    defs = [_rel(p) for p in _files() for node in ast.walk(ast.parse(p.read_text()))
            if isinstance(node, ast.FunctionDef) and node.name == "resolve_tracking_uri"]
    assert defs == ["rlexp/tracking/common.py"], defs
    # who else reads $MLFLOW_TRACKING_URI, and why it is not choosing a store
    readers = {_rel(p) for p in _files() if 'environ.get("MLFLOW_TRACKING_URI"' in p.read_text()
               or 'environ["MLFLOW_TRACKING_URI"]' in p.read_text()}
    assert readers <= {"rlexp/tracking/common.py",  # the rule itself
                       "rlexp/tracking/mlflow.py",  # restores the variable MLflow exports during make_logger
                       "rlexp/config/validate.py"}, readers  # tracking=server needs a URI named somewhere


def test_the_precedence_is_explicit_then_the_environment_then_the_launch_dir(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    default = f"sqlite:///{tmp_path.resolve() / 'mlflow.db'}"
    for explicit in (None, "", {"uri": None}, {"uri": ""}, {}):
        assert resolve_tracking_uri(explicit, tmp_path) == default
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://env:5000")
    assert resolve_tracking_uri(None, tmp_path) == resolve_tracking_uri({"uri": None}, tmp_path) == "http://env:5000"
    assert resolve_tracking_uri("http://arg:1", tmp_path) == resolve_tracking_uri({"uri": "http://arg:1"}, tmp_path) \
        == "http://arg:1"


def test_a_reading_command_refuses_a_store_that_does_not_exist(tmp_path, monkeypatch, capsys):
    from rlexp.compare import CompareError
    from rlexp.compare.cli import store_uri
    from rlexp.tracking import ui

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(MissingStore) as e:
        resolve_tracking_uri(None, tmp_path, must_exist="default")
    assert e.value.default and e.value.path == tmp_path.resolve() / "mlflow.db"
    with pytest.raises(CompareError, match=r"no MLflow store here \(.*mlflow.db does not exist\)"):
        store_uri(None)
    assert ui.main([]) == 2 and f"no store at {tmp_path.resolve() / 'mlflow.db'}" in capsys.readouterr().err
    missing = f"sqlite:///{tmp_path / 'other.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", missing)  # the environment's store is checked like --tracking-uri
    with pytest.raises(CompareError, match="names a SQLite file that does not exist"):
        store_uri(None)
    assert resolve_tracking_uri(None, tmp_path, must_exist="default") == missing  # rlexp ui: explicit is not checked
    (tmp_path / "mlflow.db").touch()
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    assert store_uri(None) == resolve_tracking_uri(None, tmp_path) == f"sqlite:///{tmp_path.resolve() / 'mlflow.db'}"


# ------------------------------------------------------------------------------------------ seeds
def test_one_function_derives_the_seeds():
    """The derivation's constant (``s · 1_000_003 + i``) appears nowhere else in rlexp/, nor a ``manual_seed`` of
    arithmetic (a seed derived inline)."""
    found = []
    for p in _files():
        for node in ast.walk(ast.parse(p.read_text())):
            if isinstance(node, ast.Constant) and node.value == 1_000_003:
                found.append(f"{_rel(p)}:{node.lineno}")
            if isinstance(node, ast.Call) and getattr(node.func, "attr", "") == "manual_seed" and \
                    any(isinstance(a, ast.BinOp) for a in node.args):
                found.append(f"{_rel(p)}:{node.lineno} manual_seed(<arithmetic>)")
    assert found == ["rlexp/core/seeding.py:" + str(next(
        i for i, line in enumerate((ROOT / "rlexp/core/seeding.py").read_text().splitlines(), 1)
        if line.startswith("RUN_STRIDE =")))], found


def test_every_stream_keeps_the_numbers_of_its_former_formula():
    """Same seed, same numbers: each stream's seed is the formula its call site had before (pinned here)."""
    from rlexp.core.seeding import (ACCEPTED_ORDER, MINIBATCH_ORDER, PROMPT_DRAW, ROLLOUT, WARMSTART_BATCHES,
                                    derive_seed)
    from rlexp.modules.data import step_generator

    for s in (0, 1, 7, 123456, 2 ** 31 - 1, 2_000_000_000):
        for i in (0, 1, 5, 999):
            for salt, stream in ((1, MINIBATCH_ORDER), (2, WARMSTART_BATCHES), (3, ACCEPTED_ORDER)):
                assert derive_seed(s, i, stream) == (s * 1_000_003 + i) * 7 + salt
                assert step_generator(s, i, salt).initial_seed() == (s * 1_000_003 + i) * 7 + salt
            for d in (0, 1, 4):
                assert derive_seed(s, i, PROMPT_DRAW, d) == (s * 1_000_003 + i) * 7919 + d
            assert derive_seed(s, i, ROLLOUT) == s * 1_000_003 + i


def test_the_prompt_draw_is_unchanged_and_takes_every_valid_seed():
    from rlexp.rollout import PromptPool
    from rlexp.tasks.base import Example

    examples = [Example(str(i), str(i)) for i in range(50)]
    assert PromptPool(examples, seed=3).draw(6, iteration=2, draw=1) == [47, 32, 25, 28, 49, 41]
    assert PromptPool(examples, seed=0).draw(4, iteration=0) == [44, 39, 7, 6]
    # validation accepts seeds up to 2^32 - 1; (s · 1_000_003 + i) · 7919 overflowed manual_seed's 64 bits
    top = PromptPool(examples, seed=2 ** 32 - 1).draw(4, iteration=3)
    assert len(set(top)) == 4 and top == PromptPool(examples, seed=2 ** 32 - 1).draw(4, iteration=3)
