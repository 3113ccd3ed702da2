"""The comparison table: a Rich table for the terminal, the same rows as HTML for the report, and
a plain-text note on failed (or unfinished) runs.

Rows come from ``aggregate.summarize`` (best mean first); the columns are the differing keys, then
the mean, the ±95% CI half-width, n and — when any run failed — the failed count. The best row is
bold green. In a terminal too narrow for one line per row (``terminal_table``), cells wrap between
words; when even that does not fit, each configuration becomes a block of one row per key. No value
is ever cut short. Nothing here reads MLflow or computes statistics.
"""
from __future__ import annotations

import html

from rlexp.compare.aggregate import ConfigStats, short_key

BEST_STYLE = "bold green"

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


def rich_table(stats: list[ConfigStats], columns: list[str], *, title: str, widths: list[int] | None = None):
    """A ``rich.table.Table`` of the comparison; the best configuration's row is bold green.
    ``widths``: each column's text width (cells wrap between words, and fold a longer word), else natural."""
    from rich.table import Table
    from rich.text import Text

    header, rows = table_rows(stats, columns)
    width = None if widths is None else sum(widths) + 3 * len(widths) + 1
    table = Table(title=title, title_justify="left",  # the title on one line where it fits
                  min_width=len(title) if width is None else min(len(title), width))
    for i, name in enumerate(header):
        table.add_column(name, justify="left" if i < len(columns) else "right", overflow="fold",
                         width=None if widths is None else widths[i])
    best = best_index(stats)
    for i, row in enumerate(rows):  # Text: a value such as "[red]" is shown, not read as markup
        table.add_row(*map(Text, row), style=BEST_STYLE if i == best else None)
    return table


def _word_len(text: str) -> int:
    from rich.cells import cell_len

    return max((cell_len(w) for w in text.split()), default=0)


def _spread(low: list[int], high: list[int], room: int) -> list[int]:
    """Widths from ``low`` (each column's longest word) towards ``high`` (its longest line) within
    ``room``: the columns that lack least get all they lack first (short values and headers stay on
    one line), the widest wraps in what is left."""
    widths = list(low)
    spare = room - sum(low)
    for i in sorted(range(len(low)), key=lambda i: high[i] - low[i]):
        give = min(high[i] - low[i], spare)
        widths[i] += give
        spare -= give
    return widths


def terminal_table(stats: list[ConfigStats], columns: list[str], *, title: str, width: int):
    """The comparison for a terminal ``width`` cells wide: ``rich_table`` with one line per row where
    it fits; else with cells wrapped between words (each column at least its longest word); else,
    ``per_key_table``: a block of one row per key for each configuration."""
    from rich.cells import cell_len

    header, rows = table_rows(stats, columns)
    cells = [[h, *(r[j] for r in rows)] for j, h in enumerate(header)]
    high = [max(cell_len(c) for c in col) for col in cells]
    low = [max(_word_len(c) for c in col) for col in cells]
    borders = 3 * len(header) + 1  # "│ " before each column, " │" after the last
    if sum(high) + borders <= width:
        return rich_table(stats, columns, title=title)
    if sum(low) + borders <= width:
        return rich_table(stats, columns, title=title, widths=_spread(low, high, width - borders))
    return per_key_table(stats, columns, title=title, width=width)


def per_key_table(stats: list[ConfigStats], columns: list[str], *, title: str, width: int):
    """The comparison as one block per configuration (best first), one row per key: its differing
    keys' values, then mean, ±95% CI, n (and failed). Two columns that fit in ``width``; a value
    longer than its column folds onto the next lines, whole."""
    from rich.cells import cell_len
    from rich.table import Table
    from rich.text import Text

    header, rows = table_rows(stats, columns)
    rank_w = len(str(len(rows))) + 1
    room = max(width - 10 - rank_w, 2)  # 3 columns: 4 borders, 2 cells of padding each
    longest_value = max(cell_len(c) for r in rows for c in r)
    # keys whole while values keep 20 cells (or all they need), else half the room each
    key_w = max(min(max(cell_len(h) for h in header), max(room // 2, room - min(longest_value, 20))), 1)
    value_w = max(min(room - key_w, longest_value), 1)
    table = Table(title=title, title_justify="left", min_width=min(len(title), width), show_header=False)
    table.add_column("#", width=rank_w, overflow="fold")
    table.add_column("key", width=key_w, overflow="fold", style="dim")
    table.add_column("value", width=value_w, overflow="fold")
    best = best_index(stats)
    for i, row in enumerate(rows):
        for j, (key, value) in enumerate(zip(header, row)):
            table.add_row(Text(f"#{i + 1}" if j == 0 else ""), Text(key), Text(value),
                          style=BEST_STYLE if i == best else None, end_section=j == len(row) - 1)
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
