"""The comparison table: a Rich table for the terminal, the same rows as HTML for the report, and
a plain-text note on failed (or unfinished) runs.

Rows come from ``aggregate.summarize`` (best mean first); the columns are the differing keys, then
the mean, the ±95% CI half-width, n and — when any run failed — the failed count. The best row is
bold green. Nothing here reads MLflow or computes statistics.
"""
from __future__ import annotations

import html

from rlexp.compare.aggregate import ConfigStats, short_key

NO_VALUE = "—"


def _fmt(x: float | None, digits: int = 4) -> str:
    return NO_VALUE if x is None else f"{x:.{digits}f}"


def table_rows(stats: list[ConfigStats], columns: list[str]) -> tuple[list[str], list[list[str]]]:
    """Header and rows as strings: one row per configuration, in the order of ``stats``."""
    with_failed = any(s.n_failed for s in stats)
    header = [short_key(k) for k in columns] + ["mean", "±95% CI", "n"] + (["failed"] if with_failed else [])
    rows = []
    for s in stats:
        vals = s.group.values
        row = [NO_VALUE if vals.get(k) is None else str(vals[k]) for k in columns]
        row += [_fmt(s.mean), _fmt(s.ci), str(s.n)] + ([str(s.n_failed)] if with_failed else [])
        rows.append(row)
    return header, rows


def best_index(stats: list[ConfigStats]) -> int | None:
    """Index of the best configuration (``stats`` is sorted best first), None if none has a mean."""
    return 0 if stats and stats[0].mean is not None else None


def rich_table(stats: list[ConfigStats], columns: list[str], *, title: str):
    """A ``rich.table.Table`` of the comparison; the best configuration's row is bold green."""
    from rich.table import Table

    header, rows = table_rows(stats, columns)
    table = Table(title=title, title_justify="left", min_width=len(title))  # the title on one line
    for i, name in enumerate(header):
        table.add_column(name, justify="left" if i < len(columns) else "right")
    best = best_index(stats)
    for i, row in enumerate(rows):
        table.add_row(*row, style="bold green" if i == best else None)
    return table


def failure_summary(stats: list[ConfigStats]) -> str | None:
    """One line on the runs left out of the means (failed, unfinished, missing the metric), or None."""
    failed = [r for s in stats for r in s.group.failed]
    parts = []
    if failed:
        errors: dict[str, int] = {}
        for r in failed:
            msg = r.error or "(no rlexp.error tag)"
            errors[msg] = errors.get(msg, 0) + 1
        listed = "; ".join(f"{msg}" + (f" (×{k})" if k > 1 else "") for msg, k in errors.items())
        parts.append(f"{len(failed)} run{'s' if len(failed) != 1 else ''} failed: {listed}")
    other = sum(s.n_other for s in stats)
    if other:
        parts.append(f"{other} run{'s' if other != 1 else ''} neither finished nor failed (left out)")
    missing = sum(s.n_missing for s in stats)
    if missing:
        metric = stats[0].metric
        parts.append(f"{missing} finished run{'s' if missing != 1 else ''} never logged {metric} (left out)")
    return ". ".join(parts) + "." if parts else None


def html_table(stats: list[ConfigStats], columns: list[str], *, title: str) -> str:
    """The comparison table as an HTML ``<table>`` (best row highlighted), caption = ``title``."""
    header, rows = table_rows(stats, columns)
    best = best_index(stats)
    out = ['<table class="cmp">', f"<caption>{html.escape(title)}</caption>", "<tr>"]
    out += [f"<th>{html.escape(h)}</th>" for h in header] + ["</tr>"]
    for i, row in enumerate(rows):
        cls = ' class="best"' if i == best else ""
        cells = "".join(f'<td class="{"key" if j < len(columns) else "num"}">{html.escape(c)}</td>'
                        for j, c in enumerate(row))
        out.append(f"<tr{cls}>{cells}</tr>")
    out.append("</table>")
    return "\n".join(out)
