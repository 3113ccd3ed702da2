"""``rlexp compare``: rank configurations of a sweep, an experiment or chosen runs, and write the report.

    rlexp compare --sweep latest                       the newest sweep, table + report
    rlexp compare --sweep 20250101-120000-ab12cd       one sweep (its id or its parent run id)
    rlexp compare --experiment rlexp --by algorithm.lam --metric summary/reward_auc
    rlexp compare --sweep latest --no-report           the table only
    rlexp compare --runs 3f2a9c...,9c1b4e...           chosen runs, from any experiment
    rlexp compare --sweep latest --json                one JSON document on stdout (docs/sweeps.md)
    rlexp compare --sweep latest --baseline lam=0.95   P(improvement) of each configuration over lam=0.95

The tracking store is ``--tracking-uri``, else ``$MLFLOW_TRACKING_URI``, else ``./mlflow.db``. The
report goes to ``--out`` (default ``./rlexp-report/<sweep id, experiment, or runs-N-<first id>>``) and,
for a sweep, is also logged on the sweep's parent run as artifacts under ``report/`` (with
``comparison.json``, the ``--json`` document, and ``comparison.txt``, the terminal's tables). The table fits
the terminal's width (``$COLUMNS``): it wraps, or shows one row per key, rather than cut a value.
Heavy libraries (mlflow, scipy, matplotlib) are imported only once the arguments are parsed, so
``--help`` is instant.
"""
from __future__ import annotations

import argparse
import io
import sys
from pathlib import Path

from rlexp.compare.aggregate import DEFAULT_METRIC
from rlexp.compare.runs import DEFAULT_EXPERIMENT, CompareError
from rlexp.compare.stats import DEFAULT_REPS, DEFAULT_SEED
from rlexp.compare.summary import ALL_PAIRS_MAX

PROG = "rlexp compare"


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line and exit code 2, through main's error path
        raise CompareError(message)


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog=PROG, description="Compare runs recorded in MLflow: a table of configurations "
                "ranked by a metric (mean, 95% CI, n) and an HTML report of curves, heatmaps and fits.")
    p.add_argument("--experiment", metavar="NAME",
                   help=f"MLflow experiment (default {DEFAULT_EXPERIMENT!r}; with --sweep: any experiment)")
    p.add_argument("--sweep", metavar="ID|latest",
                   help="compare the jobs of one sweep: its rlexp.sweep_id, its parent run id, or 'latest'")
    p.add_argument("--runs", metavar="ID,ID,...",
                   help="compare exactly these runs (MLflow run ids, any experiments, no sweep needed); "
                        "configurations are their differing params, seeds pooled as usual. Not with --sweep "
                        "or --experiment")
    p.add_argument("--by", metavar="KEYS",
                   help="group runs by exactly these comma-separated param keys, e.g. algorithm.lam,algorithm.gamma "
                        "(default: every param except seed and tracking/display keys)")
    p.add_argument("--metric", metavar="M", default=DEFAULT_METRIC,
                   help=f"metric to rank by: a summary metric or any metric's last value (default {DEFAULT_METRIC})")
    p.add_argument("--tracking-uri", metavar="URI",
                   help="MLflow tracking URI (default $MLFLOW_TRACKING_URI, else sqlite:///./mlflow.db)")
    p.add_argument("--out", metavar="DIR",
                   help="report directory (default ./rlexp-report/<sweep id, experiment, or runs-N-<first id>>)")
    p.add_argument("--no-report", action="store_true", help="print the table only; write and log no report")
    p.add_argument("--json", action="store_true",
                   help="print one JSON document (configurations, pairs, fits) on stdout instead of the tables; "
                        "the report is still written unless --no-report (its path goes to stderr)")
    p.add_argument("--baseline", metavar="CONFIG",
                   help="compare each configuration with this one (P(improvement), paired difference): its name "
                        "as the table shows it or key=value pairs that only it has, e.g. 'lam=0.95'. Default: "
                        f"all pairs up to {ALL_PAIRS_MAX} configurations, else the best against each other")
    p.add_argument("--reps", metavar="N", type=_positive, default=DEFAULT_REPS,
                   help=f"bootstrap resamples per interval (default {DEFAULT_REPS})")
    p.add_argument("--bootstrap-seed", metavar="S", type=_non_negative, default=DEFAULT_SEED,
                   help=f"seed of the bootstrap, so a report is reproducible (default {DEFAULT_SEED})")
    return p


def _positive(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number ≥ 1, got {text!r}")
    return int(text)


def _non_negative(text: str) -> int:
    if not text.isdigit():
        raise argparse.ArgumentTypeError(f"expected a whole number ≥ 0, got {text!r}")
    return int(text)


def store_uri(arg: str | None, cwd: Path | None = None) -> str:
    """The store to read: `rlexp.tracking.common.resolve_tracking_uri`'s precedence (``--tracking-uri``, else
    ``$MLFLOW_TRACKING_URI``, else ``sqlite:///<cwd>/mlflow.db``); a SQLite file that does not exist is an
    error (MLflow would silently create an empty store)."""
    from rlexp.tracking.common import MissingStore, resolve_tracking_uri

    try:
        return resolve_tracking_uri(arg, cwd or Path.cwd(), must_exist="sqlite")
    except MissingStore as e:
        if e.default:
            raise CompareError(f"no MLflow store here ({e.path} does not exist); run from the directory where "
                               f"you ran `rlexp train`, or pass --tracking-uri URI / set MLFLOW_TRACKING_URI") from None
        raise CompareError(f"tracking URI {e.uri} names a SQLite file that does not exist: {e.path}") from None


def _safe_name(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name) or "report"


def print_tables(console, c, title: str) -> None:
    """The comparison's tables as the terminal shows them (also saved as ``comparison.txt``)."""
    from rich.text import Text

    from rlexp.compare.report import notes
    from rlexp.compare.table import (failure_summary, fit_rows, pair_rows, pass_at_k_rows, simple_table,
                                     terminal_table)

    console.print(terminal_table(c.stats, c.differing, title=title, width=console.width))
    note = failure_summary(c.stats)
    if note:
        console.print(Text(note), soft_wrap=True)  # one line, as print would (and recorded for comparison.txt)
    for line in notes(c):
        console.print(Text(line))
    if c.pairs:
        console.print(simple_table(*pair_rows(c, names=False), title=f"P(a > b) over runs, {c.pair_mode} "
                                   f"(#k = rank above); a − b paired by seed"))
    if c.pass_at_k:
        console.print(simple_table(*pass_at_k_rows(c), title="pass@k at the last evaluation: mean [95% CI]"))
    header, rows = fit_rows(c, names=False)
    if any(not r[-1].startswith("fit failed") for r in rows):
        console.print(simple_table(header[:1] + header[2:5] + header[6:], [r[:1] + r[2:5] + r[6:] for r in rows],
                                   title="ScaleRL fit (A asymptote, B exponent, C_mid midpoint)"))


def run(args: argparse.Namespace) -> int:
    import json

    from rich.console import Console

    from rlexp.compare.aggregate import check_metric, differing_keys, group_runs, unify_values
    from rlexp.compare.runs import load_runs, log_report, parse_run_ids
    from rlexp.compare.summary import compare, to_json

    run_ids = parse_run_ids(args.runs) if args.runs is not None else None
    uri = store_uri(args.tracking_uri)
    runs, parent = load_runs(uri, experiment=args.experiment, sweep=args.sweep, run_ids=run_ids)
    runs = unify_values(runs)  # lam=1 and lam=1.0 are one configuration, in the table and the report
    check_metric(runs, args.metric)
    groups = group_runs(runs, by=args.by.split(",") if args.by is not None else None)
    differing = differing_keys(groups)
    if parent is not None:
        scope = f"sweep {parent.sweep_id}" + (f" ({parent.sweep_name})" if parent.sweep_name else "")
    elif args.sweep:
        scope = f"sweep {args.sweep}"
    elif run_ids is not None:
        scope = f"{len(runs)} chosen run{'s' if len(runs) != 1 else ''}"
    else:
        scope = f"experiment {args.experiment or DEFAULT_EXPERIMENT}"
    title = f"{scope} — {args.metric}"
    c = compare(runs, groups, differing, args.metric, baseline=args.baseline, reps=args.reps,
                seed=args.bootstrap_seed)
    document = to_json(c, sweep=parent.sweep_id if parent is not None else args.sweep, scope=scope)
    if args.json:
        print(json.dumps(document, indent=1))
    else:
        print_tables(Console(), c, title)
        if parent is not None:  # the sweep's planned configurations without a finished run (rlexp.tracking.sweep)
            from rlexp.tracking.sweep import print_unfinished

            print_unfinished(uri, parent.run_id)
    if args.no_report:
        return 0
    status = sys.stderr if args.json else sys.stdout

    from rlexp.compare.report import write_report

    if run_ids is not None:
        name = f"runs-{len(run_ids)}-{run_ids[0][:8]}"
    else:
        name = parent.sweep_id if parent is not None else (args.sweep or args.experiment or DEFAULT_EXPERIMENT)
    out = Path(args.out) if args.out else Path("rlexp-report") / _safe_name(name)
    path = write_report(runs, groups, out, metric=args.metric, title=title, comparison=c, document=document)
    text = Console(record=True, width=120, file=io.StringIO())
    print_tables(text, c, title)
    (out / "comparison.txt").write_text(text.export_text(), encoding="utf-8")
    print(f"report: {path.resolve()}", file=status)
    if parent is not None:
        log_report(uri, parent, out)
        print(f"report logged on the sweep's parent run {parent.run_id} under report/", file=status)
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``rlexp compare``; returns 0, or 2 after one ``rlexp compare: error: ...`` line."""
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as e:  # --help
        return int(e.code or 0)
    except CompareError as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return 2
    try:
        return run(args)
    except CompareError as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # the report directory cannot be written
        print(f"{PROG}: error: {e.strerror or e}: {e.filename or ''}".rstrip(": "), file=sys.stderr)
        return 2
    except Exception as e:  # noqa: BLE001 - store failures (bad URI, unreachable server) in one line
        from mlflow.exceptions import MlflowException

        if isinstance(e, MlflowException):
            msg = str(e).splitlines()[0] if str(e) else type(e).__name__
            print(f"{PROG}: error: tracking store {args.tracking_uri or '(default)'}: {msg}", file=sys.stderr)
            return 2
        raise


if __name__ == "__main__":
    sys.exit(main())
