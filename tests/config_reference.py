"""The config reference, docs/config.md: every key with its type, range, default and meaning (a helper of
tests/test_config.py, which fails when docs/config.md is not what this writes; the way
tests/test_bad_input.py writes the troubleshooting table).

One home per fact: the *range* of a key is its schema's (``rlexp.config.schema``, ``spec(ge=...)``), the
*meaning* is the comment above it in its YAML file, the *default* is the composed value. This module
joins them into one Markdown table per kind of group option. Regenerate it with::

    python tests/config_reference.py > docs/config.md
"""
from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import yaml
from omegaconf import OmegaConf

from rlexp.config.schema import KINDS, SCHEMAS
from rlexp.config.validate import SEED_LIMIT
from rlexp.resources import conf_dir

#: a range stated in prose: `(≥ 0)`, `> 0`, `β ≥ 0`, `in [0, 1]`, `in (0, 1]` (not an arrow `->`)
RANGE_IN_PROSE = re.compile(r"[≥≤]\s*-?\d|(?<![-=])[<>]=?\s*-?\d|\bin\s*[\[(]\s*-?[\d.]+\s*,\s*-?[\d.eE+]+\s*[\])]")
_KEY = re.compile(r"^(\s*)([A-Za-z_][\w.]*):(.*)$")


def yaml_comments(path: Path) -> dict[str, str]:
    """``{dotted key: the comment lines directly above it}`` of one YAML file. A block of comments that reaches
    the top of the file is the file's header followed by the key's own comment: its last line is taken."""
    out: dict[str, str] = {}
    lines = path.read_text().splitlines()
    stack: list[tuple[int, str]] = []  # (indent, key) of the mappings the current line is inside
    for i, line in enumerate(lines):
        m = _KEY.match(line)
        if not m or line.lstrip().startswith("#"):
            continue
        indent, key = len(m.group(1)), m.group(2)
        while stack and stack[-1][0] >= indent:
            stack.pop()
        j = i
        while j > 0 and lines[j - 1].strip().startswith("#"):
            j -= 1
        block = [ln.strip().lstrip("#").strip() for ln in lines[j:i]]
        block = [b for b in block if b and not re.fullmatch(r"-+ .* -+", b)]  # section rulers
        if j == 0 and block:
            block = block[-1:]
        dotted = ".".join([k for _, k in stack] + [key])
        if key != "defaults" and not dotted.startswith("defaults."):
            out[dotted] = " ".join(block)
        if not m.group(3).strip():  # a mapping opens
            stack.append((indent, key))
    return out


def _sources(group_dir: Path, option: str, prefix: str = "") -> list[tuple[Path, str]]:
    """The files an option is made of, each with the key prefix its keys land at: the option's own file, then
    what its ``defaults`` list brings in (another option of the group, or a sub-group's file)."""
    path = group_dir / f"{option}.yaml"
    out = [(path, prefix)]
    for entry in (yaml.safe_load(path.read_text()) or {}).get("defaults", []):
        if entry == "_self_":
            continue
        if isinstance(entry, str):
            out += _sources(group_dir, entry, prefix)
        else:
            ((where, name),) = entry.items()
            sub, _, package = where.partition("@")
            at = prefix if package == "_here_" else f"{prefix}{sub}."
            out += _sources(group_dir / sub, name, at)
    return out


def comments_of(group_dir: Path, option: str) -> dict[str, str]:
    """The comment of every key of an option, from the file that declares it: the last one in the defaults
    chain holding the key (an option's own comment on a key it overrides says why its value, not what the
    key means)."""
    out: dict[str, str] = {}
    for path, prefix in _sources(group_dir, option):
        out.update({prefix + k: v for k, v in yaml_comments(path).items() if v})
    return out


def option_comments():
    """``(file, key in its group, comment, the key's schema field)`` of every commented key of every option file
    (and of every file it composes) of a schema'd group, and of the blocks of config.yaml."""
    conf = Path(conf_dir())
    for group, schemas in SCHEMAS.items():
        group_dir = conf / group
        if not group_dir.is_dir():
            fields = dict(schema_fields(schemas["*"]))
            for k, comment in yaml_comments(conf / "config.yaml").items():
                if k.startswith(f"{group}.") and k.removeprefix(f"{group}.") in fields:
                    yield conf / "config.yaml", k.removeprefix(f"{group}."), comment, fields[k.removeprefix(f"{group}.")]
            continue
        key, kind_of = KINDS.get(group, ("", lambda node: "*"))
        for option in sorted(p.stem for p in group_dir.glob("*.yaml")):
            node = OmegaConf.to_container(_compose([f"{group}={option}"])[group], resolve=False)
            schema = schemas.get("*") or schemas.get(kind_of(node))
            if schema is None:
                continue
            fields = dict(schema_fields(schema))
            for path, prefix in _sources(group_dir, option):
                for k, comment in yaml_comments(path).items():
                    if prefix + k in fields:
                        yield path, prefix + k, comment, fields[prefix + k]


def range_text(meta: dict) -> str:
    """A field's allowed values, from its schema ``spec``: `[0, 1]`, `> 0`, `one of a, b`, a registry."""
    if "choices" in meta:
        return "one of " + ", ".join(f"`{c}`" for c in meta["choices"])
    if "registry" in meta:
        return f"a name in `rlexp.core.{meta['registry']}`"
    low = ("[", meta["ge"]) if "ge" in meta else ("(", meta["gt"]) if "gt" in meta else None
    high = ("]", meta["le"]) if "le" in meta else (")", meta["lt"]) if "lt" in meta else None
    if low and high:
        return f"{low[0]}{low[1]:g}, {high[1]:g}{high[0]}"
    if low:
        return f"{'≥' if low[0] == '[' else '>'} {low[1]:g}"
    if high:
        return f"{'≤' if high[0] == ']' else '<'} {high[1]:g}"
    return ""


def schema_fields(schema: type, prefix: str = ""):
    """``(dotted key, field)`` of every leaf of a schema (nested dataclasses flattened)."""
    for f in dataclasses.fields(schema):
        if f.default_factory is not dataclasses.MISSING and dataclasses.is_dataclass(f.default_factory()):
            yield from schema_fields(type(f.default_factory()), f"{prefix}{f.name}.")
        else:
            yield prefix + f.name, f


def _type_text(annotation: str) -> str:
    t = str(annotation)
    optional = t.startswith("Optional[")
    t = t.removeprefix("Optional[").removesuffix("]") if optional else t
    t = {"List[str]": "list of str", "List[int]": "list of int", "Any": "any", "dict": "mapping"}.get(t, t)
    return f"{t} or null" if optional else t


def _value_text(value) -> str:
    if value == "???":
        return "required"
    return "`" + (yaml.safe_dump(value, default_flow_style=True, width=10_000).strip().removesuffix("\n...")
                  .removesuffix("...").strip()) + "`"


def _select(node, key: str):
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return "???"
        node = node[part]
    return node


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def _compose(overrides: list[str]):
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3"):
        return compose(config_name="config", overrides=overrides)


def _section(title: str, intro: str, schema: type, base: dict, others: dict[str, dict], comments: dict) -> list[str]:
    out = [f"### {title}", "", intro, ""]
    head = "| key | type | range | default | other options | meaning |" if others else \
        "| key | type | range | default | meaning |"
    out += [head, "|" + " --- |" * (head.count("|") - 1)]
    for key, f in schema_fields(schema):
        value = _select(base, key)
        allowed = range_text(dict(f.metadata))
        allowed = f"each {allowed}" if allowed and str(f.type).startswith("List[") else allowed
        row = [f"`{key}`", _type_text(f.type), _cell(allowed), _cell(_value_text(value))]
        if others:
            differ = [f"{name}: {_value_text(_select(o, key))}" for name, o in others.items()
                      if _select(o, key) != value and key != "name"]
            row.append(_cell("; ".join(differ)))
        row.append(_cell(comments.get(key, "")))
        out.append("| " + " | ".join(row) + " |")
    return out + [""]


def markdown() -> str:
    """docs/config.md."""
    conf = Path(conf_dir())
    root = _compose([])
    defaults = {g: OmegaConf.select(root, f"{g}.name") for g in SCHEMAS}
    lines = ["# Config reference", "",
             "Every key of the composed config (`rlexp train KEY=VALUE`), by group and kind of option: its type, the",
             "range start-up validation allows (the schemas of `rlexp/config/schema.py`, the one place a range is",
             "stated), its default, the values other options of the group set, and the comment above it in its YAML",
             "file. Generated by `python tests/config_reference.py > docs/config.md` (tests/test_config.py fails",
             "when this file is stale).", ""]
    for group, schemas in SCHEMAS.items():
        lines += [f"## `{group}`", ""]
        group_dir = conf / group
        if not group_dir.is_dir():  # a block of config.yaml itself
            container = OmegaConf.to_container(root[group], resolve=False)
            comments = {k.removeprefix(f"{group}."): v for k, v in yaml_comments(conf / "config.yaml").items()
                        if k.startswith(f"{group}.")}
            lines += _section(f"`{group}.*`", f"In conf/config.yaml (schema `{schemas['*'].__name__}`).",
                              schemas["*"], container, {}, comments)
            continue
        options = {p.stem: OmegaConf.to_container(_compose([f"{group}={p.stem}"])[group], resolve=False)
                   for p in sorted(group_dir.glob("*.yaml"))}
        key, kind_of = KINDS.get(group, ("", lambda node: "*"))
        for kind, schema in schemas.items():
            mine = {name: o for name, o in options.items() if kind == "*" or kind_of(o) == kind}
            base = defaults[group] if defaults[group] in mine else next(iter(mine))
            others = {name: o for name, o in mine.items() if name != base}
            by = ("every option" if not key else f"`{key}={kind}`" if key != "model.name" else
                  "`model.name=tiny` (built locally)" if kind == "tiny" else
                  "every other `model.name` (a model loaded from `model.name_or_path`)")
            intro = (f"Schema `{schema.__name__}`, for {by}. Default: conf/{group}/{base}.yaml"
                     + (f"; other options: {', '.join(others)}." if others else "."))
            lines += _section(f"`{group}` — {kind}" if kind != "*" else f"`{group}`", intro, schema,
                              options[base], others, comments_of(group_dir, base))
    comments = yaml_comments(conf / "config.yaml")
    lines += ["## top-level keys", "", "In conf/config.yaml, checked by `rlexp.config.validate`.", "",
              "| key | type | range | default | meaning |", "| --- | --- | --- | --- | --- |",
              f"| `seed` | int | [0, {SEED_LIMIT - 1}] | {_value_text(root.seed)} | {_cell(comments['seed'])} |",
              f"| `resume` | str or null | a .ckpt file, or `auto` | {_value_text(root.resume)} | "
              f"{_cell(comments['resume'])} |", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    print(markdown(), end="")
