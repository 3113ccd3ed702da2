"""Comparing runs recorded in MLflow: ``rlexp compare``.

    runs.py       load a sweep's jobs or an experiment's runs (params, tags, metrics, histories)
    aggregate.py  group runs into configurations; mean, 95% Student-t CI, n, failures per configuration
    table.py      the comparison table (Rich for the terminal, HTML for the report)
    fit.py        the ScaleRL sigmoidal compute-performance curve and its fit
    plots.py      the report's figures (matplotlib, Agg canvas)
    report.py     the self-contained HTML report
    cli.py        the ``rlexp compare`` command (``main(argv) -> int``)

Only light modules are imported here; mlflow, scipy and matplotlib load when a function needs them.
"""
from rlexp.compare.aggregate import (DEFAULT_METRIC, ConfigStats, Group, canonical, differing_keys, group_runs,
                                     mean_ci, metric_value, summarize, unify_values)
from rlexp.compare.cli import main
from rlexp.compare.fit import FitError, fit_points, fit_runs, fit_sigmoid, sigmoid_curve
from rlexp.compare.report import write_report
from rlexp.compare.runs import CompareError, RunRecord, SweepParent, load_runs
from rlexp.compare.table import failure_summary, html_table, rich_table, terminal_table

__all__ = [
    "DEFAULT_METRIC", "CompareError", "ConfigStats", "FitError", "Group", "RunRecord", "SweepParent",
    "canonical", "differing_keys", "failure_summary", "fit_points", "fit_runs", "fit_sigmoid", "group_runs",
    "html_table", "load_runs", "main", "mean_ci", "metric_value", "rich_table", "sigmoid_curve", "summarize",
    "terminal_table", "unify_values", "write_report",
]
