"""The run summaries as the CLI prints them: a batch run's and a stream's, each a table built from its record.

What a summary says is defined once, on the record (:func:`scoring.engine.record.summary_title` and
:func:`~scoring.engine.record.summary_rows`); this module only lays those rows out as a rich table on stdout.
"""

from __future__ import annotations

from typing import Any

from rich.table import Table

from scoring.cli.app import out


def summary_table(record: Any) -> Table:
    """A run's record (a batch run's :class:`~scoring.engine.record.RunRecord` or a stream's
    :class:`~scoring.engine.record.StreamRecord`) as a two-column table."""
    from scoring.engine.record import summary_rows, summary_title

    table = Table(title=summary_title(record), show_header=False, title_justify="left")
    table.add_column(style="bold")
    table.add_column()
    for label, value in summary_rows(record):
        table.add_row(label, value)
    return table


def print_summary(record: Any) -> None:
    """Print a batch run's summary table on stdout."""
    out.print(summary_table(record))


def print_stream_summary(record: Any) -> None:
    """Print a stream's summary table on stdout."""
    out.print(summary_table(record))
