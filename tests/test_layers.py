"""The layers stay true (issue 14 item 7): no module imports from a higher layer.

    tier 0   rlexp.core (pure torch math), rlexp.config (schemas, validation), rlexp.resources, rlexp itself
    tier 1   rlexp.models, rlexp.tasks, rlexp.rollout
    tier 2   rlexp.modules (the LightningModules)
    tier 3   rlexp.train, rlexp.cli, rlexp.tracking, rlexp.compare, rlexp.warmstart, rlexp._launch, rlexp.__main__

The rule, per ``import`` statement of every file under rlexp/ (parsed with ``ast``; imports inside functions
count as much as those at the top of a file — a lazy import defers a dependency, it does not remove it):
a module may import its own package and any package of a lower tier; a package of its own tier only through
an edge listed in SIBLINGS (with its reason); never one of a higher tier. ``lazy`` edges must stay inside
functions: rlexp.config reads the rlexp.core registries only when it checks names, so a config error costs
no torch import. A package missing from TIERS is itself a violation (place it first). Names in strings
(Hydra ``_target_``, ``importlib.import_module``) are not imports and are not checked.
"""
from __future__ import annotations

import ast
import shutil
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

TIERS = (
    ("rlexp", "rlexp.resources", "rlexp.core", "rlexp.config"),
    ("rlexp.models", "rlexp.tasks", "rlexp.rollout"),
    ("rlexp.modules",),
    ("rlexp.train", "rlexp.cli", "rlexp.tracking", "rlexp.compare", "rlexp.warmstart", "rlexp._launch",
     "rlexp.__main__"),
)
# (importer, imported): "any" (at the top of a file or in a function) or "lazy" (only inside a function)
SIBLINGS = {
    # start-up validation checks names against the estimator / policy-loss registries, importing torch last
    ("rlexp.config", "rlexp.core"): "lazy",
    # a reward model is loaded like a policy (tasks/reward_model.py uses models/loading.py)
    ("rlexp.tasks", "rlexp.models"): "any",
    # a rollout scores its completions with the task's reward
    ("rlexp.rollout", "rlexp.tasks"): "any",
    # the `rlexp` command dispatches to each subcommand
    ("rlexp.__main__", "rlexp.cli"): "any",
    ("rlexp.cli", "rlexp.train"): "any",
    ("rlexp.cli", "rlexp.tracking"): "any",
    ("rlexp.cli", "rlexp.compare"): "any",
    # what Lightning's DDP launcher re-runs is `rlexp train`
    ("rlexp._launch", "rlexp.train"): "any",
    # a run builds its warm start and records itself in MLflow
    ("rlexp.train", "rlexp.warmstart"): "any",
    ("rlexp.train", "rlexp.tracking"): "any",
    # the sweep callback writes the comparison report on the parent run; `rlexp compare` lists a sweep's
    # unfinished configurations: both lazy, so neither import pulls in the other package
    ("rlexp.tracking", "rlexp.compare"): "lazy",
    ("rlexp.compare", "rlexp.tracking"): "lazy",
}


@dataclass(frozen=True)
class Import:
    file: str  # relative to the tree's root
    line: int
    importer: str  # the importing package (rlexp.core, rlexp.train, ...)
    imported: str  # the imported package
    lazy: bool  # inside a function


def _module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def package_of(module: str) -> str:
    """The unit the tiers name: ``rlexp`` itself or its first-level package/module (rlexp.core.losses ->
    rlexp.core, rlexp.train -> rlexp.train)."""
    return ".".join(module.split(".")[:2])


def _targets(node: ast.AST, module: str, is_package: bool, known: set[str]) -> list[str]:
    """The rlexp modules an import statement imports (relative imports resolved; ``from rlexp import core``
    is rlexp.core)."""
    if isinstance(node, ast.Import):
        return [a.name for a in node.names]
    if not isinstance(node, ast.ImportFrom):
        return []
    if node.level:
        base = module.split(".") if is_package else module.split(".")[:-1]
        base = base[:len(base) - (node.level - 1)]
        source = ".".join(base + ([node.module] if node.module else []))
    else:
        source = node.module or ""
    submodules = [f"{source}.{a.name}" for a in node.names if f"{source}.{a.name}" in known]
    return submodules if submodules and len(submodules) == len(node.names) else [source, *submodules]


def imports(root: Path) -> list[Import]:
    """Every import of an rlexp module by a module of another package, in the tree under ``root/rlexp``."""
    files = sorted((root / "rlexp").rglob("*.py"))
    known = {_module_name(f, root) for f in files}
    found = []
    for path in files:
        module = _module_name(path, root)
        tree = ast.parse(path.read_text(), filename=str(path))
        lazy_nodes = {id(n) for fn in ast.walk(tree) if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef))
                      for n in ast.walk(fn)}
        for node in ast.walk(tree):
            for target in _targets(node, module, path.name == "__init__.py", known):
                if target.split(".")[0] != "rlexp" or package_of(target) == package_of(module):
                    continue
                found.append(Import(path.relative_to(root).as_posix(), node.lineno, package_of(module),
                                    package_of(target), id(node) in lazy_nodes))
    return found


def violations(root: Path, tiers=TIERS, siblings=SIBLINGS) -> list[str]:
    """One line per import that breaks the rule (file:line: what, and why)."""
    tier = {pkg: i for i, names in enumerate(tiers) for pkg in names}
    out = []
    for imp in imports(root):
        where = f"{imp.file}:{imp.line}: {imp.importer} imports {imp.imported}"
        unplaced = [p for p in (imp.importer, imp.imported) if p not in tier]
        if unplaced:
            out.append(f"{where}: not placed in a tier: {', '.join(unplaced)} (add it to TIERS in tests/test_layers.py)")
        elif tier[imp.imported] > tier[imp.importer]:
            out.append(f"{where}: a higher tier ({tier[imp.imported]} > {tier[imp.importer]})")
        elif tier[imp.imported] == tier[imp.importer]:
            allowed = siblings.get((imp.importer, imp.imported))
            if allowed is None:
                out.append(f"{where}: same tier, and not a listed sibling edge")
            elif allowed == "lazy" and not imp.lazy:
                out.append(f"{where}: allowed only inside a function (lazily)")
    return sorted(set(out))


# ------------------------------------------------------------------------------------------------ tests
def test_no_module_imports_from_a_higher_layer():
    found = imports(ROOT)
    assert len(found) > 20 and any(i.lazy for i in found)  # the walk sees rlexp's imports, lazy ones included
    problems = violations(ROOT)
    assert not problems, "imports against the layers (see the rule at the top of tests/test_layers.py):\n" + \
        "\n".join(problems)


def test_every_package_of_rlexp_is_placed_in_a_tier():
    placed = {p for names in TIERS for p in names}
    packages = {package_of(_module_name(f, ROOT)) for f in (ROOT / "rlexp").rglob("*.py")}
    assert packages - placed == set(), f"packages in no tier: {sorted(packages - placed)}"


def _tree(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = root / "rlexp" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


def test_the_checker_catches_each_kind_of_violation(tmp_path):
    base = {"__init__.py": "", "core/__init__.py": "", "config/__init__.py": "", "modules/__init__.py": "",
            "modules/online.py": "", "tasks/__init__.py": "", "rollout/__init__.py": "", "models/__init__.py": "",
            "train.py": "from rlexp.modules import online\nimport rlexp.core\n"}  # downward: fine
    assert violations(_tree(tmp_path / "ok", base)) == []
    planted = {
        "core/a.py": "import torch\nfrom rlexp.modules.online import X\n",  # upward, top of file
        "core/b.py": "def f():\n    import rlexp.train\n",  # upward, lazily: still a violation
        "core/c.py": "from rlexp import modules\n",  # `from rlexp import <package>`
        "core/d.py": "from ..modules import online\n",  # relative
        "core/e.py": "from rlexp.config import schema\n",  # core imports nothing beside it
        "config/f.py": "from rlexp.core import REGISTRY\n",  # a lazy-only edge at the top of a file
        "tasks/g.py": "from rlexp.rollout import sample\n",  # a sibling edge not listed
        "newpkg/__init__.py": "",
        "train2.py": "import rlexp.newpkg\n",  # a package in no tier
    }
    found = violations(_tree(tmp_path / "bad", {**base, **planted}))
    for expected in ("rlexp/core/a.py:2: rlexp.core imports rlexp.modules: a higher tier",
                     "rlexp/core/b.py:2: rlexp.core imports rlexp.train: a higher tier",
                     "rlexp/core/c.py:1: rlexp.core imports rlexp.modules: a higher tier",
                     "rlexp/core/d.py:1: rlexp.core imports rlexp.modules: a higher tier",
                     "rlexp/core/e.py:1: rlexp.core imports rlexp.config: same tier, and not a listed sibling",
                     "rlexp/config/f.py:1: rlexp.config imports rlexp.core: allowed only inside a function",
                     "rlexp/tasks/g.py:1: rlexp.tasks imports rlexp.rollout: same tier, and not a listed",
                     "rlexp/train2.py:1: rlexp.train2 imports rlexp.newpkg: not placed in a tier: rlexp.train2, rlexp.newpkg"):
        assert any(line.startswith(expected) for line in found), (expected, found)
    assert len(found) == 8, found
    lazy_ok = {**base, "config/h.py": "def check():\n    from rlexp.core import REGISTRY\n"}
    assert violations(_tree(tmp_path / "lazy", lazy_ok)) == []


def test_an_upward_import_planted_in_a_copy_of_rlexp_fails(tmp_path):
    shutil.copytree(ROOT / "rlexp", tmp_path / "rlexp", ignore=shutil.ignore_patterns("__pycache__"))
    before = set(violations(tmp_path))
    losses = tmp_path / "rlexp" / "core" / "losses.py"
    losses.write_text(losses.read_text() + "\n\ndef _planted():\n    from rlexp.modules.online import OnlineRLModule\n")
    found = sorted(set(violations(tmp_path)) - before)
    assert len(found) == 1 and found[0].startswith("rlexp/core/losses.py:"), found
    assert "rlexp.core imports rlexp.modules: a higher tier (2 > 0)" in found[0]
