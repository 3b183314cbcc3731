"""One record of a unit of work: at once the summary a user reads, the Delta commit's ``userMetadata`` and the
runs-table row.

A unit of work is a batch run or one micro-batch of a stream; both are a :class:`RunRecord` (``mode`` says which).
Every shape of "what a unit did" is derived from it by a ``to_*`` method and read back by a ``from_*`` method, so the
CLI, ``spark-submit``'s summary line, the commit metadata and the Airflow DAG's runs table can never disagree. A
stream query's summary (:class:`StreamRecord`, the sum of its micro-batches) shares the base :class:`Record`: one
``to_dict`` and one rendering, :func:`summary_rows` / :func:`summary_lines`, for the CLI and the logs.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
from collections.abc import Mapping
from typing import Any

from scoring import columns
from scoring.core.stamp import Lineage

_IN_COMMIT = (
    "job",
    "backend",
    "requested_model_uri",
    "input_table",
    "input_where",
    "output_table",
    "input_uri",
    "output_uri",
    "rows_read",
    "rows_rejected",
    "rows_quarantined",
    "rows_written",
    "partitions",
)
"""Fields of a record that go into the output commit's ``userMetadata`` (with the lineage and the quality summary):
all known before the commit."""


_STREAM_ONLY = ("mode", "stream_query_id", "batch_id", "checkpoint", "source", "source_version_from")
"""Fields only a micro-batch's record carries (left out of a batch run's summary, which stays as it was)."""


class Record:
    """What every record shares: its throughput and its JSON-ready summary."""

    rows_read: int
    elapsed_s: float

    @property
    def rows_per_s(self) -> float:
        return self.rows_read / self.elapsed_s if self.elapsed_s else 0.0

    def to_dict(self) -> dict[str, Any]:
        """The summary, JSON-ready (``--json``, ``--summary-json``, spark-submit's ``SCORING_SUMMARY`` line)."""
        out = dataclasses.asdict(self)  # type: ignore[call-overload]
        out["rows_per_s"] = round(self.rows_per_s, 1)
        return out


@dataclasses.dataclass(frozen=True)
class RunRecord(Record):
    """What a run (or one micro-batch of a stream, ``mode == "stream"``) did. For every committed run, ``rows_read == rows_written + rows_rejected + rows_quarantined``, and
    ``rows_replaced + rows_kept`` is the number of output rows before the run."""

    job: str
    run_id: str
    model_name: str
    model_version: str
    model_uri: str
    requested_model_uri: str
    input_table: str
    input_version: int | None
    output_table: str
    scored_at: str
    """UTC time the run started (ISO 8601): the ``scored_at`` of every row it wrote."""
    backend: str
    input_where: str | None = None
    output_version_before: int | None = None
    output_version: int | None = None
    """Version of this run's own output commit (found by its transaction id, never "the latest")."""
    rows_read: int = 0
    """Rows selected from the input snapshot (after ``input.where``)."""
    rows_written: int = 0
    rows_rejected: int = 0
    """Rows with invalid features (``input.on_invalid_rows: skip``), in the quarantine table."""
    rows_quarantined: int = 0
    """Rows failing a data-quality gate or with invalid predictions, in the quarantine table."""
    rows_replaced: int = 0
    """Output rows of the selected (key, partition)s that this run replaced or removed."""
    rows_kept: int | None = None
    """Output rows this run left exactly as they were (every row it did not select)."""
    committed: bool = False
    """True when this run's output commit happened now; False when the run id had already committed before."""
    completed_earlier_attempt: bool = False
    """True when this run id's output had committed in an earlier attempt that did not finish (a crash after the
    commit): this attempt wrote what was missing (the quarantine rows) and scored nothing again."""
    elapsed_s: float = 0.0
    prediction_columns: tuple[str, ...] = ()
    partitions: tuple[Mapping[str, Any], ...] = ()
    """The output partitions the run selected rows in: ``{"values": {...}, "rows": N}``."""
    timings_s: Mapping[str, float] = dataclasses.field(default_factory=dict)
    """Seconds per phase: resolve, session, plan, runtime, score_write."""
    quality: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    """Gate reports by gate (``input``, ``output``): success, per-expectation statistics, rows quarantined."""
    quarantine_table: str | None = None
    input_uri: str = ""
    """The input table's canonical identity (:mod:`scoring.core.identity`): one spelling per place, for lineage."""
    output_uri: str = ""
    """The output table's canonical identity."""
    """Where rejected and quarantined rows went (None when there were none)."""
    warnings: tuple[str, ...] = ()
    mode: str = "batch"
    """``batch`` (a batch run) or ``stream`` (one micro-batch of a stream query)."""
    stream_query_id: str | None = None
    """A micro-batch's stream query id (the one Spark keeps in the checkpoint)."""
    batch_id: int | None = None
    """A micro-batch's id within its query."""
    checkpoint: str | None = None
    source: str | None = None
    """What a stream query reads (``delta:<table identity>`` or ``kafka:<topic>``)."""
    source_version_from: int | None = None
    """The first Delta source version a micro-batch read (``input_version`` is the last)."""

    @property
    def rows_per_s(self) -> float:
        """Scoring throughput: rows read per second of the scoring job (read, score, write)."""
        seconds = self.timings_s.get("score_write", self.elapsed_s)
        return self.rows_read / seconds if seconds > 0 else 0.0

    @property
    def lineage(self) -> dict[str, Any]:
        """The lineage values stamped on every row, JSON-ready (:meth:`scoring.core.stamp.Lineage.as_json_dict`)."""
        return Lineage(
            self.model_name,
            self.model_version,
            self.model_uri,
            self.input_version,
            self.run_id,
            dt.datetime.fromisoformat(self.scored_at),
        ).as_json_dict()

    # -- shapes ----------------------------------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """The summary (``scoring run --json``, spark-submit's ``SCORING_SUMMARY`` line)."""
        out = super().to_dict()
        if self.mode == "batch":
            for name in _STREAM_ONLY:
                out.pop(name)
        out["prediction_columns"] = list(self.prediction_columns)
        out["partitions"] = [dict(p) for p in self.partitions]
        out["warnings"] = list(self.warnings)
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RunRecord:
        names = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in data.items() if k in names}
        values["prediction_columns"] = tuple(values.get("prediction_columns", ()))
        values["partitions"] = tuple(values.get("partitions", ()))
        values["warnings"] = tuple(values.get("warnings", ()))
        return cls(**values)

    def to_commit_metadata(self) -> dict[str, Any]:
        """The output commit's ``userMetadata``: the lineage, the job and its counts, the gates' outcome (a
        micro-batch's: its query, batch id, checkpoint, source and source version range)."""
        if self.mode == "stream":
            return {
                "mode": "stream",
                "job": self.job,
                "stream_query_id": self.stream_query_id,
                "batch_id": self.batch_id,
                "checkpoint": self.checkpoint,
                "source": self.source,
                columns.SCORING_RUN_ID: self.run_id,
                columns.MODEL_NAME: self.model_name,
                columns.MODEL_VERSION: self.model_version,
                columns.MODEL_URI: self.model_uri,
                "requested_model_uri": self.requested_model_uri,
                columns.SOURCE_VERSION_FROM: self.source_version_from,
                columns.INPUT_VERSION: self.input_version,
                "rows_read": self.rows_read,
                "rows_quarantined": self.rows_quarantined,
            }
        out = {**self.lineage, **{k: getattr(self, k) for k in _IN_COMMIT}}
        out["partitions"] = [dict(p) for p in self.partitions]
        out["quality"] = {
            which: {"success": r.get("success"), "quarantined": r.get("quarantined")}
            for which, r in self.quality.items()
        }
        return out

    @classmethod
    def from_commit(cls, metadata: Mapping[str, Any] | str, *, version: int | None = None) -> RunRecord:
        """A record rebuilt from an output commit's ``userMetadata`` (the runs table, when no summary survived)."""
        meta = json.loads(metadata) if isinstance(metadata, str) else dict(metadata)
        return cls(
            job=meta.get("job", ""),
            run_id=meta.get(columns.SCORING_RUN_ID, ""),
            model_name=meta.get(columns.MODEL_NAME, ""),
            model_version=str(meta.get(columns.MODEL_VERSION, "")),
            model_uri=meta.get(columns.MODEL_URI, ""),
            requested_model_uri=meta.get("requested_model_uri", ""),
            input_table=meta.get("input_table", ""),
            input_version=meta.get(columns.INPUT_VERSION),
            output_table=meta.get("output_table", ""),
            input_uri=meta.get("input_uri", ""),
            output_uri=meta.get("output_uri", ""),
            scored_at=meta.get(columns.SCORED_AT, ""),
            backend=meta.get("backend", ""),
            input_where=meta.get("input_where"),
            output_version=version,
            rows_read=int(meta.get("rows_read", 0)),
            rows_written=int(meta.get("rows_written", 0)),
            rows_rejected=int(meta.get("rows_rejected", 0)),
            rows_quarantined=int(meta.get("rows_quarantined", 0)),
            committed=True,
            partitions=tuple(meta.get("partitions", ())),
            quality={k: dict(v) for k, v in (meta.get("quality") or {}).items()},
        )

    def to_runs_row(self, **extra: Any) -> dict[str, Any]:
        """A row of the ``<output>_runs`` table (the Airflow DAG's ``publish``); `extra` adds the scheduler's columns
        (dag id, data interval, publish time)."""
        return {
            **extra,
            "run_id": self.run_id,
            "model_name": self.model_name,
            "model_version": self.model_version,
            "model_uri": self.model_uri,
            "input_version": self.input_version,
            "output_version": self.output_version,
            "rows_read": self.rows_read,
            "rows_written": self.rows_written,
            "rows_rejected": self.rows_rejected,
            "rows_quarantined": self.rows_quarantined,
            "committed": self.committed,
            "quality": json.dumps(dict(self.quality), sort_keys=True, default=str),
        }


@dataclasses.dataclass(frozen=True)
class StreamRecord(Record):
    """What a stream query did (the sum of its micro-batches' records), for the summary line and ``--summary-json``."""

    job: str
    query_id: str | None
    checkpoint: str
    source: str
    sinks: tuple[str, ...]
    output_table: str
    trigger: str
    model_uri: str
    model_versions: tuple[str, ...]
    """Every version the query scored with, in order (one, unless ``follow_alias`` saw the alias move)."""
    batches: int
    batches_skipped: int
    """Micro-batches replayed after a restart whose output commit had already landed: not written again."""
    rows_in: int
    rows_written: int
    rows_quarantined: int
    lag_p50_s: float | None
    lag_p95_s: float | None
    lag_p99_s: float | None
    lag_max_s: float | None
    elapsed_s: float
    stopped: str
    """``drained`` (``--available-now``: everything there was processed), ``stopped`` (asked to stop) or ``failed``."""
    quarantine_table: str | None = None
    metrics_url: str | None = None
    error: str | None = None
    batch_timings_s: dict[str, float] = dataclasses.field(default_factory=dict)
    """Mean seconds per micro-batch in each phase: scoring's own (read, checks, plan, score+commit, ...) and
    Spark's around them (``spark``: offsets, the checkpoint's logs, planning; from the query's progress reports)."""

    @property
    def rows_read(self) -> int:  # type: ignore[override]
        return self.rows_in

    @property
    def rows_per_s(self) -> float:
        return self.rows_in / self.elapsed_s if self.elapsed_s else 0.0


# -- rendering ----------------------------------------------------------------------------------------------------


def _gate_line(report: Mapping[str, Any]) -> str:
    verdict = "passed" if report["success"] else f"set aside {report['quarantined']:,} row(s) failing"
    return f"{verdict}: {len(report.get('results', ()))} expectation(s)"


def summary_title(record: Record) -> str:
    """The title of a record's summary: ``scoring run <run id>`` or ``scoring stream <query id>``."""
    if isinstance(record, StreamRecord):
        return f"scoring stream {record.query_id}"
    return f"scoring run {record.run_id}"  # type: ignore[attr-defined]


def summary_rows(record: Record) -> list[tuple[str, str]]:
    """A record as (label, value) rows for a person: the CLI puts them in a rich table, :func:`summary_lines` in
    plain lines."""
    if isinstance(record, StreamRecord):
        return _stream_rows(record)
    assert isinstance(record, RunRecord)
    r = record
    if r.committed:
        status = "committed"
    elif r.completed_earlier_attempt:
        status = "already committed by an earlier attempt of this run id: nothing scored again, missing writes done"
    else:
        status = "already committed by this run id: nothing written again"
    kept = "" if r.rows_kept is None else f", {r.rows_kept:,} kept as they were"
    return [
        ("status", status),
        ("model", f"{r.model_name} version {r.model_version} ({r.requested_model_uri})"),
        (
            "input",
            f"{r.input_table} @ version {r.input_version}" + (f" where {r.input_where}" if r.input_where else ""),
        ),
        ("output", f"{r.output_table} @ version {r.output_version} (was {r.output_version_before})"),
        ("rows read", f"{r.rows_read:,}"),
        ("rows written", f"{r.rows_written:,}"),
        ("output rows", f"{r.rows_replaced:,} replaced{kept}"),
        ("rows rejected", f"{r.rows_rejected:,} (invalid features or rows the output cannot take)"),
        ("rows quarantined", f"{r.rows_quarantined:,} (failed expectations or invalid predictions)"),
        ("predictions", ", ".join(r.prediction_columns)),
        *([("set aside in", r.quarantine_table)] if r.quarantine_table else []),
        *[(f"{which} gate", _gate_line(report)) for which, report in r.quality.items()],
        ("elapsed", f"{r.elapsed_s:.1f} s (" + ", ".join(f"{k} {v:.1f}" for k, v in r.timings_s.items()) + ")"),
        ("throughput", f"{r.rows_per_s:,.0f} rows/s"),
        *[("warning", w) for w in r.warnings],
    ]


def _stream_rows(r: StreamRecord) -> list[tuple[str, str]]:
    lag = (
        "no rows"
        if r.lag_p50_s is None
        else f"p50 {r.lag_p50_s:.3f} s, p95 {r.lag_p95_s:.3f} s, p99 {r.lag_p99_s:.3f} s, max {r.lag_max_s:.3f} s"
    )
    status = {
        "drained": "drained: everything available was processed",
        "stopped": "stopped on request",
        "failed": "failed",
    }.get(r.stopped, r.stopped)
    skipped = (
        f" ({r.batches_skipped:,} already committed before a restart: not written again)" if r.batches_skipped else ""
    )
    return [
        ("status", status),
        ("source", r.source),
        ("sinks", ", ".join(r.sinks) + (f" ({r.output_table})" if "delta" in r.sinks else "")),
        ("checkpoint", r.checkpoint),
        ("model", f"{r.model_uri} (versions used: {', '.join(r.model_versions)})"),
        ("micro-batches", f"{r.batches:,}{skipped}"),
        ("rows read", f"{r.rows_in:,}"),
        ("rows written", f"{r.rows_written:,}"),
        ("rows set aside", f"{r.rows_quarantined:,}" + (f" (in {r.quarantine_table})" if r.quarantine_table else "")),
        ("lag", lag + " (event or source commit time to output commit)"),
        ("elapsed", f"{r.elapsed_s:.1f} s ({r.rows_per_s:,.0f} rows/s)"),
        *([("metrics", r.metrics_url)] if r.metrics_url else []),
    ]


def summary_lines(record: Record) -> list[str]:
    """A record as plain text lines (a log, a terminal without rich): its title, then one ``label  value`` line per
    row of :func:`summary_rows`."""
    rows = summary_rows(record)
    width = max(len(label) for label, _ in rows)
    return [summary_title(record), *[f"  {label.ljust(width)}  {value}" for label, value in rows]]
