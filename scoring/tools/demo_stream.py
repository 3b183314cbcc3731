"""`scoring demo-stream`: the streaming mode on the demo model, end to end in well under a minute.

It reuses ``scoring demo``'s model and registry (:func:`scoring.tools.demo.create_demo`), creates the append-only source
table of ``conf/jobs/stream.yaml`` if it is missing, starts that stream (Delta -> Delta, lag measured from each row's
``event_time``), appends a few batches of rows to the source (delta-rs, as another writer would), waits until every
appended row is in the output, stops the query cleanly after its micro-batch in progress, and reads the output back
with delta-rs (rows with their lineage, and the commits).

Run it again: the query resumes from its checkpoint and scores only the rows appended this time (keys go on from the
largest key in the source). ``make clean`` removes it all (``.demo/``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from scoring import columns
from scoring.tools import demo

DEMO_STREAM_CONFIG = Path("conf/jobs/stream.yaml")
KEY = "customer_id"
EVENT_TIME = "event_time"
SHOWN = (
    KEY,
    "ds",
    "label",
    columns.MODEL_VERSION,
    columns.SOURCE_VERSION_FROM,
    columns.INPUT_VERSION,
    columns.SCORING_RUN_ID,
    EVENT_TIME,
    columns.SCORED_AT,
)
"""The output columns the demo shows (those the output has)."""


@dataclasses.dataclass(frozen=True)
class DemoStreamResult:
    """What the demo did and what it found in the output."""

    record: Any
    """The query's :class:`~scoring.modes.stream.StreamRecord`."""
    source_table: str
    output_table: str
    appends: int
    rows_appended: int
    rows_delivered: int
    """Rows of this run's keys found in the output (read with delta-rs)."""
    first_key: int
    rows: pa.Table
    """A few of this run's output rows."""
    commits: list[Any]
    """The output's newest commits (:class:`~scoring.adapters.deltalog.Commit`)."""
    elapsed_s: float
    per_append: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    """Per appended commit: rows, the micro-batches that scored them, and their lag (output commit time, from the
    output's history, minus ``event_time``), read with delta-rs: independent of the stream's own figures."""


def _schema(features: list[str]) -> pa.Schema:
    return pa.schema(
        [
            (KEY, pa.int64()),
            ("ds", pa.string()),
            *[(f, pa.float32()) for f in features],
            (EVENT_TIME, pa.timestamp("us", tz="UTC")),
        ]
    )


def _next_key(table: str) -> int:
    """One more than the largest key of the source table (0 when it is empty)."""
    import pyarrow.compute as pc

    from scoring.adapters import deltalog

    keys = deltalog.read(table, [KEY], key="input.table")
    if keys is None or keys.num_rows == 0:
        return 0
    return int(pc.max(keys.column(0)).as_py()) + 1


def _rows(first_key: int, n: int, features: list[str], seed: int) -> pa.Table:
    """`n` new events: keys from `first_key`, today's ``ds``, the demo's features, ``event_time`` = now."""
    now = dt.datetime.now(dt.UTC)
    made = demo.make_features(n, n_features=len(features), days=1, start=now.date(), seed=seed)
    keys = pa.array(np.arange(first_key, first_key + n, dtype=np.int64))
    stamp = pa.array(np.full(n, int(now.timestamp() * 1e6), dtype=np.int64), pa.timestamp("us", tz="UTC"))
    arrays = [keys, made.column("ds"), *[made.column(f) for f in features], stamp]
    return pa.Table.from_arrays(arrays, schema=_schema(features))


def _delivered(table: str, first_key: int) -> int:
    import pyarrow.dataset as pds

    from scoring.adapters import deltalog

    snap = deltalog.snapshot(table, key="output.table")
    return 0 if snap is None else snap.dataset().count_rows(filter=pds.field(KEY) >= first_key)


def run_demo_stream(
    directory: Path = demo.DEMO_DIR,
    config_path: Path = DEMO_STREAM_CONFIG,
    overrides: Iterable[str] = (),
    *,
    appends: int = 5,
    rows_per_append: int = 1_000,
    every_s: float = 1.0,
    model_rows: int = 100_000,
    drain_timeout_s: float = 60.0,
    spark=None,
    reporter=None,
) -> DemoStreamResult:
    """Set up (demo model and registry in `directory`, the source table of `config_path`), stream for about
    ``appends * every_s`` seconds while appending rows, stop, and read the output back."""
    from scoring import load_job_config
    from scoring.adapters import deltalog
    from scoring.engine.progress import LogReporter
    from scoring.errors import ConfigError, ScoringError
    from scoring.modes import stream

    if appends < 1 or rows_per_append < 1 or every_s < 0:
        raise ConfigError("demo-stream: --appends and --rows must be at least 1, --every-s at least 0")
    started = time.monotonic()
    demo.create_demo(directory, model_rows)
    config = load_job_config(config_path, list(overrides))
    if config.stream is None or config.stream.source != "delta" or config.input.table is None:
        raise ConfigError(
            f"{config_path}: the stream demo needs a stream: section reading a Delta table (source: delta)"
        )
    source, output = config.input.table, config.output.table
    features = list(config.input.features or demo.feature_names(20))
    if deltalog.snapshot(source, key="input.table") is None:
        demo.write_delta(source, _schema(features).empty_table(), partition_by=())
    first_key = _next_key(source)

    reporter = reporter or LogReporter()
    handle = stream.start(config, spark=spark, reporter=reporter)
    try:
        appended = 0

        def wait_for_output() -> None:
            deadline = time.monotonic() + drain_timeout_s
            while _delivered(output, first_key) < appended:
                if not handle.query.isActive:
                    return  # close() below raises the micro-batch's error
                if time.monotonic() > deadline:
                    raise ScoringError(
                        f"demo-stream: {appended - _delivered(output, first_key):,} of {appended:,} appended rows "
                        f"were not in {output} after {drain_timeout_s:g} s",
                        hint="run with -v to see each micro-batch",
                    )
                time.sleep(0.1)

        for i in range(appends):
            rows = _rows(first_key + appended, rows_per_append, features, seed=first_key + i)
            demo.write_delta(source, rows, partition_by=(), mode="append")
            appended += rows.num_rows
            reporter.step(f"appended {rows.num_rows:,} rows to {source} ({i + 1}/{appends})")
            if i == 0:  # the first micro-batch starts the Python workers and loads the model: let it finish first
                wait_for_output()
            elif i < appends - 1:
                time.sleep(every_s)
        wait_for_output()
        record = handle.close()  # after the micro-batch in progress, once Spark recorded it in the checkpoint
    except BaseException:
        with contextlib.suppress(Exception):
            handle.close()
        raise
    finally:
        reporter.close()

    snap = deltalog.snapshot(output, key="output.table")
    assert snap is not None
    import pyarrow.dataset as pds

    mine = snap.dataset().to_table(filter=pds.field(KEY) >= first_key)
    commits = deltalog.history(output, key="output.table")
    shown = [c for c in SHOWN if c in mine.column_names]
    sample = mine.sort_by(KEY).select(shown)
    picks = sorted({0, rows_per_append - 1, rows_per_append, appended - 1} & set(range(sample.num_rows)))
    return DemoStreamResult(
        record=record,
        source_table=source,
        output_table=output,
        appends=appends,
        rows_appended=appended,
        rows_delivered=mine.num_rows,
        first_key=first_key,
        rows=sample.take(picks),
        commits=commits[:4],
        per_append=_per_append(mine, commits, record.query_id, first_key, rows_per_append),
        elapsed_s=round(time.monotonic() - started, 1),
    )


def _per_append(out: pa.Table, commits: list[Any], query_id: str | None, first_key: int, size: int) -> list[dict]:
    """Group this run's output rows by the append that wrote them; the lag of each from the Delta history."""
    committed_at: dict[int, float] = {}
    for commit in commits:
        meta = commit.metadata or {}
        if meta.get("stream_query_id") == query_id and commit.timestamp is not None:
            committed_at[int(meta["batch_id"])] = commit.timestamp.timestamp()
    keys = out.column(KEY).to_numpy()
    event = out.column(EVENT_TIME).cast(pa.int64()).to_numpy() / 1e6
    batch = np.array([int(r.rsplit(":", 1)[1]) for r in out.column(columns.SCORING_RUN_ID).to_pylist()])
    lag = np.array([committed_at.get(b, np.nan) for b in batch]) - event
    which = (keys - first_key) // size
    rows = []
    for i in np.unique(which):
        mask = which == i
        lags = lag[mask]
        rows.append(
            {
                "append": int(i) + 1,
                "rows": int(mask.sum()),
                "micro_batches": sorted({int(b) for b in batch[mask]}),
                "lag_min_s": round(float(np.nanmin(lags)), 3) if np.isfinite(lags).any() else None,
                "lag_max_s": round(float(np.nanmax(lags)), 3) if np.isfinite(lags).any() else None,
            }
        )
    return rows


def print_result(console, result: DemoStreamResult) -> None:
    """The output rows (with their lineage) and the commits, after the stream's summary."""
    from rich.console import Console
    from rich.table import Table

    if not console.is_terminal:  # a file or a pipe: do not squeeze the table into 80 columns
        console = Console(file=console.file, width=160)
    if result.per_append:
        lags = Table(title="lag per appended commit (output commit time - event_time, from the output's history)")
        for name in ("append", "rows", "micro-batch(es)", "lag"):
            lags.add_column(name, justify="right")
        for a in result.per_append:
            shown = "-" if a["lag_min_s"] is None else f"{a['lag_min_s']:.2f}-{a['lag_max_s']:.2f} s"
            note = " (first: Python workers start, model loads)" if a["append"] == 1 else ""
            lags.add_row(str(a["append"]), f"{a['rows']:,}", ", ".join(map(str, a["micro_batches"])), shown + note)
        console.print(lags)
    console.print(
        f"\n[bold]{result.output_table}[/bold]: {result.rows_delivered:,} of the {result.rows_appended:,} rows "
        f"appended in {result.appends} commits (keys from {result.first_key:,}), read back with delta-rs",
        soft_wrap=True,
    )
    table = Table(show_lines=False)
    for name in result.rows.column_names:
        table.add_column(name, overflow="fold")
    for row in result.rows.to_pylist():
        table.add_row(*[_show(v) for v in row.values()])
    console.print(table)
    console.print("[bold]newest commits[/bold] (one per micro-batch, committed once by query id and batch id)")
    for commit in result.commits:
        meta = commit.metadata or {}
        console.print(
            f"  v{commit.version} {commit.operation}: micro-batch {meta.get('batch_id')}, "
            f"{meta.get('rows_read', '?')} rows, source versions {meta.get(columns.SOURCE_VERSION_FROM)}.."
            f"{meta.get(columns.INPUT_VERSION)}, model v{meta.get(columns.MODEL_VERSION)}",
            markup=False,
            highlight=False,
            soft_wrap=True,
        )
    console.print(
        f"\ndone in {result.elapsed_s:.0f} s. Run it again to resume from the checkpoint; "
        f"scoring show {result.output_table} shows the table.",
        highlight=False,
        soft_wrap=True,
    )


def _show(value: Any) -> str:
    if isinstance(value, dt.datetime):
        return value.strftime("%H:%M:%S.%f")[:-3]
    if isinstance(value, float):
        return f"{value:.4f}"
    return str(value)
