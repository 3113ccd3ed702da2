"""The comparison tables: Rich tables for the terminal, the same rows as HTML for the report, and
a plain-text note on failed (or unfinished) runs.

Rows come from ``aggregate.summarize`` (best mean first); the columns are the rank (#), the differing
keys, then the mean with its bootstrap 95% interval, the IQM with its interval, the median, n and — when
any run failed — the failed count. The best row is bold green. ``pair_rows``, ``pass_at_k_rows`` and
``fit_rows`` give the other tables of a ``summary.Comparison`` (pairs name configurations by rank in the
terminal, by name in the report). In a terminal too narrow for one line per row (``terminal_table``), cells wrap between
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


def _ci(ci, digits: int = 4) -> str:
    return NO_VALUE if ci is None else f"[{ci[0]:.{digits}f}, {ci[1]:.{digits}f}]"


STAT_COLUMNS = ["mean [95% CI]", "IQM [95% CI]", "median", "n"]


def _with_ci(x: float | None, ci) -> str:
    """``0.4063 [0.3750, 0.4375]`` (the value alone when there is no interval)."""
    return _fmt(x) if ci is None else f"{_fmt(x)} {_ci(ci)}"


def table_rows(stats: list[ConfigStats], columns: list[str], *,
               rank: bool = True) -> tuple[list[str], list[list[str]]]:
    """Header and rows as strings: one row per configuration, in the order of ``stats`` (``rank``: first
    a ``#`` column, 1 = best)."""
    with_failed = any(s.n_failed for s in stats)
    header = (["#"] if rank else []) + [short_key(k) for k in columns] + STAT_COLUMNS \
        + (["failed"] if with_failed else [])
    rows = []
    for i, s in enumerate(stats):
        vals = s.group.values
        row = ([str(i + 1)] if rank else []) + [NO_VALUE if vals.get(k) is None else str(vals[k]) for k in columns]
        row += [_with_ci(s.mean, s.mean_ci), _with_ci(s.iqm, s.iqm_ci), _fmt(s.median), str(s.n)]
        rows.append(row + ([str(s.n_failed)] if with_failed else []))
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
        table.add_column(name, justify="left" if 0 < i <= len(columns) else "right", overflow="fold",
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
    keys' values, then the statistics of ``STAT_COLUMNS`` (and failed). Two columns that fit in ``width``; a value
    longer than its column folds onto the next lines, whole."""
    from rich.cells import cell_len
    from rich.table import Table
    from rich.text import Text

    header, rows = table_rows(stats, columns, rank=False)
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
        cells = "".join(f'<td class="{"key" if 0 < j <= len(columns) else "num"}">{html.escape(c)}</td>'
                        for j, c in enumerate(row))
        out.append(f"<tr{cls}>{cells}</tr>")
    out.append("</table>")
    return "\n".join(out)



# ------------------------------------------------------------------------ the other tables of a Comparison
def pair_rows(c, *, names: bool) -> tuple[list[str], list[list[str]]]:
    """The pairs of ``c`` (a ``summary.Comparison``): P(a > b) and its interval, the paired difference a − b
    and its interval (when a and b ran the same seeds) and on how many seeds a beat b. ``names``: the
    configurations by rank and name (the report), else by rank (``#2``, the terminal)."""
    header = ["a", "b", "P(a > b)", "95% CI", "a − b (paired)", "95% CI", "seeds a > b"]
    rows = []
    for p in c.pairs:
        who = [f"#{c.rank(p[k])}" + (f" {p[k]}" if names else "") for k in ("a", "b")]
        wins = NO_VALUE if p["paired_wins"] is None else f"{p['paired_wins']}/{len(p['paired_seeds'])}"
        rows.append(who + [f"{p['prob_improvement']:.3f}", _ci(p["ci"], 3), _fmt(p["paired_difference"]),
                           _ci(p["paired_ci"]), wins])
    return header, rows


def pass_at_k_rows(c) -> tuple[list[str], list[list[str]]]:
    """One row per configuration (rank), one column per ``eval/pass_at_K``: ``mean [95% CI]`` over its runs."""
    metrics = sorted({m for per in c.pass_at_k.values() for m in per},
                     key=lambda m: int(m.rsplit("_", 1)[1]))
    header = ["#"] + [m.removeprefix("eval/").replace("pass_at_", "pass@") for m in metrics] + ["n"]
    rows = []
    for s in c.stats:
        per = c.pass_at_k.get(c.label(s))
        if not per:
            continue
        cells = [f"{per[m]['mean']:.3f} {_ci(per[m]['mean_ci'], 3)}" if m in per else NO_VALUE for m in metrics]
        rows.append([str(c.rank(c.label(s)))] + cells + [str(max(a["n"] for a in per.values()))])
    return header, rows


def _pm(value: float, err: float, fmt: str) -> str:
    import math

    return f"{format(value, fmt)} ± {NO_VALUE if not math.isfinite(err) else format(err, fmt)}"


def fit_status(fit: dict | str) -> str:
    """``determined``, ``undetermined (reasons)`` or ``fit failed: why``."""
    if isinstance(fit, str):
        return f"fit failed: {fit}"
    return "determined" if fit["determined"] else f"undetermined ({fit['reason']})"


def fit_rows(c, *, names: bool) -> tuple[list[str], list[list[str]]]:
    """The ScaleRL fit of each configuration: R0, A, B, C_mid with their standard errors (only for a fit the
    data determine: an undetermined fit's numbers are not shown), the points pooled, the evaluations past
    C_mid, the spread (sd) of A and B over the seeds fitted alone, and the fit's status."""
    header = ["configuration" if names else "#", "R0 (fixed)", "A", "B", "C_mid (tokens)", "points", "past C_mid",
              "A, B over seeds (sd)", "status"]
    rows = []
    for s in c.stats:
        label = c.label(s)
        fit = c.fits.get(label)
        if fit is None:
            continue
        who = f"#{c.rank(label)}" + (f" {label}" if names else "")
        if isinstance(fit, str):
            rows.append([who] + [NO_VALUE] * 7 + [fit_status(fit)])
            continue
        nums = [_pm(fit["A"], fit["A_err"], ".4f"), _pm(fit["B"], fit["B_err"], ".3f"),
                _pm(fit["C_mid"], fit["C_mid_err"], ".4g")] if fit["determined"] else [NO_VALUE] * 3
        seeds = fit.get("per_seed")
        spread = NO_VALUE if not seeds else \
            (NO_VALUE if seeds["A_sd"] is None else f"{seeds['A_sd']:.4f}, {seeds['B_sd']:.3f} ") + \
            f"({sum(seeds['determined'])} of {seeds['runs']} runs determined)"
        rows.append([who, f"{fit['r0']:.4f}", *nums, str(fit["n"]), str(fit["past_bend"]), spread, fit_status(fit)])
    return header, rows


def simple_table(header: list[str], rows: list[list[str]], *, title: str):
    """A Rich table of string cells that fold (never cut) when the terminal is narrow."""
    from rich.table import Table
    from rich.text import Text

    table = Table(title=title, title_justify="left")
    for name in header:
        table.add_column(name, overflow="fold")
    for row in rows:
        table.add_row(*map(Text, row))
    return table


def html_rows(header: list[str], rows: list[list[str]], *, title: str, key_columns: int = 1,
              text_last: bool = False) -> str:
    """An HTML ``<table>`` of string cells; the first ``key_columns`` (and with ``text_last`` the last)
    left-aligned as text, the others right-aligned as numbers."""
    out = ['<table class="cmp">', f"<caption>{html.escape(title)}</caption>", "<tr>"]
    out += [f"<th>{html.escape(h)}</th>" for h in header] + ["</tr>"]
    for row in rows:
        text = [j < key_columns or (text_last and j == len(row) - 1) for j in range(len(row))]
        out.append("<tr>" + "".join(f'<td class="{"key" if text[j] else "num"}">{html.escape(x)}</td>'
                                    for j, x in enumerate(row)) + "</tr>")
    out.append("</table>")
    return "\n".join(out)
