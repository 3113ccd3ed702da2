"""Comparing runs recorded in MLflow: ``rlexp compare``.

    runs.py       load a sweep's jobs or an experiment's runs (params, tags, metrics, histories)
    aggregate.py  group runs into configurations; mean, IQM, median with bootstrap CIs, n, failures
    stats.py      the estimators (rliable's): IQM, percentile bootstrap CIs, P(X > Y), paired differences,
                  performance profiles (pure numpy)
    summary.py    every number of a comparison (pairs, pass@k, profiles, fits) and its JSON document
    table.py      the comparison tables (Rich for the terminal, HTML for the report)
    fit.py        the ScaleRL sigmoidal compute-performance curve, its fit, and whether the data determine it
    plots.py      the report's figures (matplotlib, Agg canvas)
    report.py     the self-contained HTML report
    cli.py        the ``rlexp compare`` command (``main(argv) -> int``)

Only light modules are imported here; mlflow, scipy and matplotlib load when a function needs them.
"""
from rlexp.compare.aggregate import (DEFAULT_METRIC, ConfigStats, Group, canonical, differing_keys, group_runs,
                                     mean_ci, metric_value, summarize, unify_values)
from rlexp.compare.cli import main
from rlexp.compare.fit import FitError, fit_points, fit_runs, fit_sigmoid, judge, sigmoid_curve
from rlexp.compare.report import write_report
from rlexp.compare.runs import CompareError, RunRecord, SweepParent, load_runs
from rlexp.compare.summary import Comparison, compare, to_json
from rlexp.compare.table import failure_summary, html_table, rich_table, terminal_table

__all__ = [
    "DEFAULT_METRIC", "CompareError", "Comparison", "ConfigStats", "FitError", "Group", "RunRecord", "SweepParent",
    "canonical", "compare", "differing_keys", "failure_summary", "fit_points", "fit_runs", "fit_sigmoid",
    "group_runs", "html_table", "judge", "load_runs", "main", "mean_ci", "metric_value", "rich_table",
    "sigmoid_curve", "summarize", "terminal_table", "to_json", "unify_values", "write_report",
]
