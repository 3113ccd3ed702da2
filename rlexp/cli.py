"""The ``rlexp`` command. Imports only what the chosen subcommand needs (``--help`` is instant).

    rlexp train [hydra overrides...]     one run (``-m`` for a multirun over comma lists)
    rlexp sweep NAME [overrides...]      the sweep in sweeps/NAME.yaml (a multirun)
    rlexp compare [--sweep ID|latest]    a table and a report comparing runs from MLflow
    rlexp ui                             the MLflow UI on the same store
    python -m rlexp ...                  the same
"""
from __future__ import annotations

import sys
from pathlib import Path

from rlexp.resources import sweeps_dir

# the installed sweeps (rlexp/conf/sweeps: the repository's sweeps/), the Hydra group `sweeps`
SWEEPS_DIR = sweeps_dir()

USAGE = """usage: rlexp <command> [args]

commands:
  train [overrides...]   run an experiment; Hydra overrides, e.g.
                           rlexp train algorithm=grpo algorithm.clip_eps=0.1 trainer.max_steps=50
                           rlexp train -m algorithm.lam=0,0.5,0.95      (a multirun: a parent MLflow run)
                         `rlexp train --help` lists the config groups; `--cfg job` prints the config.
  sweep NAME [overrides] run sweeps/NAME.yaml, e.g. `rlexp sweep ppo_gae trainer.max_steps=20`;
                         `rlexp sweep --list` lists the sweeps. `--resume SWEEP_ID` (also after
                         `train -m`) runs what an interrupted sweep did not finish, under its parent.
  compare [options]      compare runs: `rlexp compare --sweep latest` (see `rlexp compare --help`)
  ui [--port N]          the MLflow UI on this directory's store (bound to 127.0.0.1)

Results are recorded in MLflow (default: ./mlflow.db).
"""


def _hydra(args: list[str]) -> int:
    from rlexp.train import hydra_main

    import importlib.util

    args = _sweep_resume(args)
    problem = _composition_error(args)
    if problem:  # Hydra would print a multi-line report and exit 1: one line, exit 2, like other config errors
        print(f"rlexp: config error: {problem}", file=sys.stderr)
        sys.exit(2)

    import __main__

    # Hydra parses sys.argv[1:]. Lightning's DDP launcher starts the other workers by re-running this
    # process's command: `python <sys.argv[0]> <args>`, or `python -m <__main__.__spec__.name> <args>`
    # under `python -m rlexp`. Both must lead to `rlexp train` with the same overrides.
    saved, saved_spec = sys.argv, getattr(__main__, "__spec__", None)
    sys.argv = [str(Path(__file__).resolve().parent / "_launch" / "rlexp_train.py"), *args]
    if saved_spec is not None:
        __main__.__spec__ = importlib.util.find_spec("rlexp._launch.rlexp_train")
    try:
        hydra_main()
    except BaseException as e:  # a multirun stopped early (Ctrl-C, SIGTERM, a typo in a swept key): close its parent
        from rlexp.tracking.sweep import close_interrupted

        code = close_interrupted(e)
        if code is None:
            raise
        sys.exit(code)
    finally:
        sys.argv = saved
        if saved_spec is not None:
            __main__.__spec__ = saved_spec
    return 0


def _sweep_resume(args: list[str]) -> list[str]:
    """``--resume SWEEP_ID`` (a multirun's sweep id or parent run id) as the Hydra override that sets it on
    the sweep callback: the sweep continues under the same parent, running only what has not finished."""
    out, i, sweep_id = [], 0, None
    while i < len(args):
        if args[i] == "--resume" or args[i].startswith("--resume="):
            sweep_id = args[i].split("=", 1)[1] if "=" in args[i] else (args[i + 1] if i + 1 < len(args) else "")
            i += 1 if "=" in args[i] else 2
            continue
        out.append(args[i])
        i += 1
    if sweep_id is None:
        return args
    import re

    if not re.fullmatch(r"[A-Za-z0-9_.:-]+", sweep_id):
        print(f"rlexp: config error: --resume {sweep_id!r}: expected a sweep id (rlexp.sweep_id, as printed when "
              f"the sweep started) or its parent run id", file=sys.stderr)
        sys.exit(2)
    if not ({"-m", "--multirun"} & set(out) or any(a.lstrip("+").startswith("sweeps=") for a in out)):
        print("rlexp: config error: --resume SWEEP_ID resumes a sweep (`rlexp sweep NAME ... --resume ID`, "
              "`rlexp train -m ... --resume ID`); a single run resumes from its checkpoint with resume=PATH|auto",
              file=sys.stderr)
        sys.exit(2)
    return [*out, f"hydra.callbacks.mlflow_sweep.resume='{sweep_id}'"]


def _composition_error(args: list[str]) -> str | None:
    """Why the overrides of a single run cannot be composed (unknown key or group option, bad syntax),
    in one line; None when they compose (or for multiruns and Hydra flags, which Hydra checks itself)."""
    if any(a.startswith("-") for a in args):
        return None
    from hydra.errors import ConfigCompositionException, MissingConfigException, OverrideParseException

    from rlexp.train import compose
    try:
        # Hydra's own settings are Hydra's to check, except the search path: a user's config directory
        # (hydra.searchpath=[file://./my_conf]) holds options the overrides choose
        compose([a for a in args if a.startswith("hydra.searchpath=")
                 or not a.startswith(("hydra.", "hydra/", "+hydra"))])
    except MissingConfigException as e:
        lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
        head = lines[0].split(": ", 1)[-1]
        start = next((i for i, ln in enumerate(lines) if ln.startswith("Available options")), len(lines))
        opts = [o for o in lines[start + 1:] if not o.startswith(("Config search path", "provider="))]
        return head + (f"; available: {', '.join(opts)}" if opts else "")
    except ConfigCompositionException as e:
        cause = e.__cause__ or e.__context__
        detail = str(cause).splitlines()[0] if cause is not None and str(cause) else ""
        return str(e).splitlines()[0] + (f" ({detail})" if detail else "")
    except OverrideParseException as e:
        return _parse_hint(args) or f"cannot parse the overrides: {str(e).splitlines()[0]}"
    return _output_dir_error(args)


def _parse_hint(args: list[str]) -> str | None:
    """The override Hydra's lexer refuses, the character at fault and how to quote the value."""
    import unicodedata

    from hydra.core.override_parser.overrides_parser import OverridesParser

    parser = OverridesParser.create()

    def parses(text: str) -> bool:
        try:
            parser.parse_overrides([text])
            return True
        except Exception:  # noqa: BLE001 - any refusal
            return False
    for arg in args:
        key, sep, value = arg.partition("=")
        if not sep or parses(arg):
            continue
        i = next((i for i in range(len(value)) if not parses(f"{key}={value[:i + 1]}")), 0)
        ch = value[i] if value else ""
        if ch and not ch.isascii():
            what = f"{ch!r} ({unicodedata.name(ch, f'U+{ord(ch):04X}')})"
            fix = ("type it in ASCII digits" if unicodedata.category(ch) == "Nd" else "use ASCII characters") + \
                  ", or quote a string value"
        else:
            what, fix = repr(ch), "quote the value"
        escaped = value.replace('"', '\\"')
        quoted = f'"{key}=\'{escaped}\'"' if '"' in value else (f'"{key}=\\"{value}\\""' if "'" in value else
                                                              f"'{key}=\"{value}\"'")
        return (f"cannot parse the override {arg}: {what} at position {i + 1} of the value is special to Hydra's "
                f"override grammar; {fix}, e.g. {quoted} (Hydra's quotes inside the shell's)")
    return None


def _output_dir_error(args: list[str]) -> str | None:
    """The run's output directory (``hydra.run.dir``, which Hydra creates before the run starts) cannot be
    written: one line instead of Hydra's traceback."""
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from rlexp.config import ConfigError
    from rlexp.config.validate import check_writable_dir
    from rlexp.train import CONF_DIR
    try:
        with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
            cfg = compose(config_name="config", overrides=args, return_hydra_config=True)
        run_dir = OmegaConf.select(cfg, "hydra.run.dir")
    except Exception:  # noqa: BLE001 - an unresolvable directory: Hydra reports it as it does
        return None
    try:
        check_writable_dir("hydra.run.dir", run_dir)
    except ConfigError as e:
        return str(e)
    return None


def _sweep_files(args: list[str]) -> dict[str, Path]:
    """Each sweep's file by name: rlexp's own, then those in sweeps/ of every ``file://`` directory that a
    ``hydra.searchpath=[...]`` override in ``args`` adds (Hydra looks there too; the first name wins)."""
    dirs = [SWEEPS_DIR]
    for arg in args:
        if arg.startswith("hydra.searchpath="):
            entries = (e.strip().strip("'\"") for e in arg.split("=", 1)[1].strip("[]").split(","))
            dirs += [Path(e[len("file://"):]) / "sweeps" for e in entries if e.startswith("file://")]
    files: dict[str, Path] = {}
    for d in dirs:
        for path in sorted(d.glob("*.yaml")):
            files.setdefault(path.stem, path)
    return files


def _sweep(args: list[str]) -> int:
    files = _sweep_files(args)
    names = sorted(files)
    if not args or args[0] in ("-h", "--help", "--list"):
        print("sweeps (sweeps/NAME.yaml):\n" + "\n".join(
            f"  {n:24s} {files[n].read_text().splitlines()[1].lstrip('# ')}" for n in names))
        return 0
    name, rest = args[0], args[1:]
    if name not in names:
        print(f"rlexp sweep: error: no sweep {name!r}; available: {', '.join(names)}", file=sys.stderr)
        return 2
    return _hydra(["-m", f"+sweeps={name}", *rest])


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(USAGE)
        return 0
    cmd, rest = argv[0], argv[1:]
    if cmd == "train":
        return _hydra(rest)
    if cmd == "sweep":
        return _sweep(rest)
    if cmd == "compare":
        from rlexp.compare.cli import main as compare_main

        return compare_main(rest)
    if cmd == "ui":
        from rlexp.tracking.ui import main as ui_main

        return ui_main(rest)
    print(f"rlexp: unknown command {cmd!r}\n\n{USAGE}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
