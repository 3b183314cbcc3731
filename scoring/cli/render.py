"""The run summaries as the CLI prints them: a batch run's and a stream's, each a table built from its record.

Each ``*_table`` function only reads the record it is given and returns a rich :class:`~rich.table.Table`; the
``print_*`` functions print that table on stdout.
"""

from __future__ import annotations

from typing import Any

from rich.table import Table

from scoring.cli.app import out


def _gate_line(report: dict[str, Any]) -> str:
    verdict = "passed" if report["success"] else f"set aside {report['quarantined']:,} row(s) failing"
    return f"{verdict}: {len(report['results'])} expectation(s)"


def _table(title: str, rows: list[tuple[str, str]]) -> Table:
    table = Table(title=title, show_header=False, title_justify="left")
    table.add_column(style="bold")
    table.add_column()
    for k, v in rows:
        table.add_row(k, v)
    return table


def summary_table(summary: Any) -> Table:
    """A batch run's summary (what :func:`scoring.run` returns) as a two-column table."""
    if summary.committed:
        status = "committed"
    elif summary.completed_earlier_attempt:
        status = "already committed by an earlier attempt of this run id: nothing scored again, missing writes done"
    else:
        status = "already committed by this run id: nothing written again"
    kept = "" if summary.rows_kept is None else f", {summary.rows_kept:,} kept as they were"
    rows = [
        ("status", status),
        ("model", f"{summary.model_name} version {summary.model_version} ({summary.requested_model_uri})"),
        (
            "input",
            f"{summary.input_table} @ version {summary.input_version}"
            + (f" where {summary.input_where}" if summary.input_where else ""),
        ),
        ("output", f"{summary.output_table} @ version {summary.output_version} (was {summary.output_version_before})"),
        ("rows read", f"{summary.rows_read:,}"),
        ("rows written", f"{summary.rows_written:,}"),
        ("output rows", f"{summary.rows_replaced:,} replaced{kept}"),
        ("rows rejected", f"{summary.rows_rejected:,} (invalid features or rows the output cannot take)"),
        ("rows quarantined", f"{summary.rows_quarantined:,} (failed expectations or invalid predictions)"),
        ("predictions", ", ".join(summary.prediction_columns)),
        *([("set aside in", summary.quarantine_table)] if summary.quarantine_table else []),
        *[(f"{which} gate", _gate_line(r)) for which, r in summary.quality.items()],
        (
            "elapsed",
            f"{summary.elapsed_s:.1f} s (" + ", ".join(f"{k} {v:.1f}" for k, v in summary.timings_s.items()) + ")",
        ),
        ("throughput", f"{summary.rows_per_s:,.0f} rows/s"),
        *[("warning", w) for w in summary.warnings],
    ]
    return _table(f"scoring run {summary.run_id}", rows)


def print_summary(summary: Any) -> None:
    """Print a batch run's summary table on stdout."""
    out.print(summary_table(summary))


_STREAM_STATUS = {
    "drained": "drained: everything available was processed",
    "stopped": "stopped on request",
    "failed": "failed",
}


def stream_summary_table(record: Any) -> Table:
    """A stream's record (what :func:`scoring.modes.stream.run` returns) as a two-column table."""
    lag = (
        "no rows"
        if record.lag_p50_s is None
        else f"p50 {record.lag_p50_s:.3f} s, p95 {record.lag_p95_s:.3f} s, p99 {record.lag_p99_s:.3f} s, "
        f"max {record.lag_max_s:.3f} s"
    )
    skipped = (
        f" ({record.batches_skipped:,} already committed before a restart: not written again)"
        if record.batches_skipped
        else ""
    )
    rows = [
        ("status", _STREAM_STATUS.get(record.stopped, record.stopped)),
        ("source", record.source),
        ("sinks", ", ".join(record.sinks) + (f" ({record.output_table})" if "delta" in record.sinks else "")),
        ("checkpoint", record.checkpoint),
        ("model", f"{record.model_uri} (versions used: {', '.join(record.model_versions)})"),
        ("micro-batches", f"{record.batches:,}{skipped}"),
        ("rows read", f"{record.rows_in:,}"),
        ("rows written", f"{record.rows_written:,}"),
        (
            "rows set aside",
            f"{record.rows_quarantined:,}" + (f" (in {record.quarantine_table})" if record.quarantine_table else ""),
        ),
        ("lag", lag + " (event or source commit time to output commit)"),
        ("elapsed", f"{record.elapsed_s:.1f} s ({record.rows_per_s:,.0f} rows/s)"),
        *([("metrics", record.metrics_url)] if record.metrics_url else []),
    ]
    return _table(f"scoring stream {record.query_id}", rows)


def print_stream_summary(record: Any) -> None:
    """Print a stream's summary table on stdout."""
    out.print(stream_summary_table(record))
