"""Where rlexp's own config tree is, installed or not. Imports only the standard library.

``conf/`` stays at the top of the repository and is installed as the package ``rlexp.conf``:
pyproject.toml maps the directory into the package (``package-dir``) and ships its YAML as package data;
``conf/sweeps`` is a link to ``sweeps/`` and is copied into the wheel as ``rlexp/conf/sweeps``. It is looked
up from the ``rlexp`` package that is actually imported (``importlib.resources``): inside it in a wheel or
after ``pip install .``, beside it in a source tree (``pip install -e .``, or a checkout on PYTHONPATH), so
a checkout never picks up another checkout's configs. Users add their own config directories through
Hydra's search path (``hydra.searchpath=[file://DIR]``).
"""
from __future__ import annotations

import importlib.resources
from pathlib import Path


def conf_dir() -> Path:
    """The directory holding the root ``config.yaml`` and its groups (algorithm/, model/, ..., sweeps/)."""
    package = Path(str(importlib.resources.files("rlexp")))
    # installed: rlexp/conf (package data); a source tree: the repository's conf/ beside rlexp/
    candidates = (package / "conf", package.parent / "conf")
    for path in candidates:
        if (path / "__init__.py").is_file() and (path / "config.yaml").is_file():
            return path
    raise FileNotFoundError(f"rlexp's config tree is missing: no conf/config.yaml in {package} or beside it; "
                            f"reinstall rlexp (pip install .)")


def sweeps_dir() -> Path:
    """The sweeps: the Hydra group ``sweeps`` (``+sweeps=NAME``), one ``NAME.yaml`` each."""
    return conf_dir() / "sweeps"
