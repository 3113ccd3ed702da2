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
