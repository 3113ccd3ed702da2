"""Reading a local data file into rows, each with where it is in its file, for one-line errors.

``read_rows(path, key)`` reads a JSONL, JSON, CSV or Parquet file, or a directory written by ``datasets``'
``save_to_disk``, with the ``datasets`` library (``load_dataset("json" | "csv" | "parquet", data_files=...)``,
``load_from_disk``): local files only, nothing is downloaded, and its Arrow cache is a temporary directory
removed after reading (nothing is left in ``~/.cache/huggingface``). Which format is said by the suffix
(``rlexp.config.paths.resolve_data_path``).

- **CSV** cells are read as text, as written: ``07`` stays ``07`` and ``NA`` is the text ``NA``; an empty
  cell is the empty string.
- **JSON Lines** that ``datasets`` cannot read as one table (a line that is not JSON, a field that is a
  number on one line and text on another) are read line by line with ``json`` instead, so that each bad
  line is a malformed row of its own (refused or skipped, naming its line), not the whole file refused.
- **Where a row is**: ``file:line`` for JSON Lines (blank lines are not rows) and CSV (the header is line
  1; a quoted cell may span lines: the row's first line), ``file: row N`` (from 0, as ``dataset[N]``) for
  JSON, Parquet and ``save_to_disk`` directories.

:class:`DatasetError` (``rlexp.config.paths``) is the error of every data file rlexp reads (preference pairs for DPO
too); its message names the key or ``file:line`` and what is wrong, in one line.
"""
from __future__ import annotations

import contextlib
import csv
import hashlib
import json
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from rlexp.config.paths import DatasetError, resolve_data_path

#: a row that is not a JSON object / not valid JSON: the reason, kept in place of the row
_BAD = "__rlexp_bad_row__"


def one_line(error: BaseException) -> str:
    text = " ".join(str(error).split())
    return f"{type(error).__name__}: {text[:300]}" if text else type(error).__name__


@dataclass
class Rows:
    """The rows of one file (``dict`` each, or ``{_BAD: why}`` for a line that is no row), its fields as the
    file's schema says them (``{name: {subfield: ...}}`` for a struct, ``"string"``, ``"int64"``... for values,
    None where no schema says: JSON read by hand), and where each row is (``where(i)``)."""
    shown: str  # the path as the user gave it (in messages)
    path: Path
    fmt: str  # json | csv | parquet | disk
    rows: list[dict]
    fields: dict
    _lines: list[int] | None = field(default=None, repr=False)

    def where(self, i: int) -> str:
        """``file:line`` or ``file: row N`` of row ``i``."""
        if self.fmt == "csv" or (self.fmt == "json" and self.path.suffix.lower() == ".jsonl"):
            if self._lines is None:
                self._lines = _csv_lines(self.path) if self.fmt == "csv" else _jsonl_lines(self.path)
            if i < len(self._lines):
                return f"{self.shown}:{self._lines[i]}"
        return f"{self.shown}: row {i}"

    def problem(self, i: int) -> str | None:
        """Why row ``i`` is no row at all (not JSON, not an object), or None."""
        return self.rows[i].get(_BAD) if _BAD in self.rows[i] else None


def _jsonl_lines(path: Path) -> list[int]:
    with open(path, encoding="utf-8", errors="replace") as fh:
        return [n for n, line in enumerate(fh, start=1) if line.strip()]


def _csv_lines(path: Path) -> list[int]:
    """The first line of each CSV record after the header (blank lines are not records)."""
    out, end = [], 0
    with open(path, encoding="utf-8", errors="replace", newline="") as fh:
        reader = csv.reader(fh)
        for record in reader:
            start, end = end + 1, reader.line_num
            if record and any(cell.strip() for cell in record):
                out.append(start)
    return out[1:]  # the header


def sha256_of(path: Path) -> str:
    """sha256 of a file's bytes; of a directory: of each file's relative path and bytes, in sorted order."""
    h = hashlib.sha256()
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    for f in files:
        if path.is_dir():
            h.update(f.relative_to(path).as_posix().encode() + b"\0")
        with open(f, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()


@contextlib.contextmanager
def _quiet_datasets():
    """``datasets`` without its progress bars and log lines (restored after)."""
    from datasets.utils import logging as ds_logging
    from datasets.utils.tqdm import are_progress_bars_disabled, disable_progress_bars, enable_progress_bars

    was_off, level = are_progress_bars_disabled(), ds_logging.get_verbosity()
    disable_progress_bars()
    ds_logging.set_verbosity(ds_logging.CRITICAL)  # a JSON file it cannot read is read by hand: no ERROR line
    try:
        yield
    finally:
        ds_logging.set_verbosity(level)
        if not was_off:
            enable_progress_bars()


def _structure(feature):
    """A feature's nested fields (``{name: ...}``) where it is a struct, else what its values are (``string``,
    ``int64``, ``List``...)."""
    if isinstance(feature, dict):
        return {k: _structure(v) for k, v in feature.items()}
    return str(getattr(feature, "dtype", None) or type(feature).__name__).removeprefix("large_")


def _csv_header(path: Path) -> list[str]:
    with open(path, encoding="utf-8", errors="replace", newline="") as fh:
        for record in csv.reader(fh):
            if record and any(cell.strip() for cell in record):
                return record
    return []


def _load(path: Path, fmt: str, key: str, shown: str):
    import datasets

    with tempfile.TemporaryDirectory(prefix="rlexp-datasets-") as cache, _quiet_datasets():
        if fmt == "disk":
            ds = datasets.load_from_disk(str(path), keep_in_memory=True)
            if isinstance(ds, datasets.DatasetDict):
                splits = list(ds)
                if "train" not in ds and len(splits) != 1:
                    raise DatasetError(f"{key}={shown}: a DatasetDict with the splits {', '.join(splits)} and no "
                                       f"'train': point {key} at one split's directory ({shown}/<split>)")
                ds = ds["train" if "train" in ds else splits[0]]
        elif fmt == "csv":
            header = _csv_header(path)
            if not header:
                raise DatasetError(f"{key}={shown}: an empty CSV file (a header line naming the fields comes first)")
            strings = datasets.Features({name: datasets.Value("string") for name in header})
            ds = datasets.load_dataset("csv", data_files=str(path), split="train", cache_dir=cache,
                                       keep_in_memory=True, features=strings, keep_default_na=False)
        else:
            ds = datasets.load_dataset(fmt, data_files=str(path), split="train", cache_dir=cache, keep_in_memory=True)
        return ds.to_list(), {name: _structure(f) for name, f in ds.features.items()}


def _json_by_hand(path: Path, shown: str) -> list[dict]:
    """The rows of a JSON / JSON Lines file read with ``json``: a line that is not JSON or not an object is kept
    as ``{_BAD: why}`` (JSON Lines); a ``.json`` file holds one array of objects."""
    text = path.read_text(encoding="utf-8", errors="replace")
    if path.suffix.lower() == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            if text.lstrip().startswith("["):
                raise DatasetError(f"{shown}:{e.lineno}: invalid JSON ({e.msg} at column {e.colno})") from None
            data = None  # JSON Lines in a .json file
        if isinstance(data, list):
            return [obj if isinstance(obj, dict) else {_BAD: f"a row must be a JSON object, got {type(obj).__name__}"}
                    for obj in data]
        if data is not None:
            raise DatasetError(f"{shown}: a JSON {type(data).__name__}; a .json file holds an array of row objects "
                               f"(or one object per line)")
    rows = []
    for line in text.splitlines():
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            rows.append({_BAD: f"invalid JSON ({e.msg} at column {e.colno})"})
            continue
        rows.append(obj if isinstance(obj, dict) else {_BAD: f"a row must be a JSON object, got {type(obj).__name__}"})
    return rows


def read_rows(path, key: str, limit: int | None = None) -> Rows:
    """The rows of the data file or directory ``path`` (the value of the config key ``key``), the first
    ``limit`` of them when set. A missing path, an unknown format or an unreadable file: DatasetError."""
    shown = str(path)
    p, fmt = resolve_data_path(path, key)
    try:
        rows, fields = _load(p, fmt, key, shown)
    except DatasetError:
        raise
    except Exception as e:  # noqa: BLE001 - pyarrow / pandas / datasets errors, said in one line
        if fmt != "json":
            raise DatasetError(f"{key}={shown}: cannot be read as {fmt}: {one_line(e)}") from None
        rows = _json_by_hand(p, shown)
        fields = {name: None for row in rows for name in row if name != _BAD}
    if limit is not None:
        rows = rows[:limit]
    if not rows:
        raise DatasetError(f"{key}={shown}: no rows")
    return Rows(shown, p, fmt, rows, fields)
