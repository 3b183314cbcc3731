"""The streaming job: a Structured Streaming query that scores each micro-batch with the shared engine and commits it
exactly once.

This mode owns its source (an append-only Delta table read as a stream, or a Kafka topic), its sinks (the output
Delta table, and optionally a Kafka topic) and its transaction identity: ``(scoring-stream:<query id>, <batch id>)``,
where the query id is the one Spark keeps in the checkpoint. Everything between comes from :mod:`scoring.engine`:
the model resolved once (or followed, with ``stream.follow_alias``), the predictor, the feature checks, the gates, the
probe and the lineage.

What a query promises, and how:
- Each micro-batch lands in the output table in one commit, once: a query killed at any point and restarted from its
  checkpoint replays the batch the checkpoint had not recorded, and Delta skips the write when the table already
  records that transaction (the batch's commit landed just before the crash).
- Every check that can fail for the user's reason runs before the micro-batch's output commit: a failing gate with
  ``policy: fail`` stops the query with nothing of that micro-batch committed.
- Rows that cannot be scored or written (a malformed Kafka record, a row the output cannot take: a partition value
  that cannot be a path, a key that does not fit the output column's type (:mod:`scoring.core.writable`), invalid
  features, rows failing a gate with ``policy: quarantine``) go to the quarantine table, after the output commit and
  under their own transaction identity: once.
- A new checkpoint pointed at an output that already holds another query's micro-batches from the same source is
  refused: it would score the whole source again into it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import json
import logging
import posixpath
import threading
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from scoring import columns
from scoring.adapters import catalog, delta, deltalog
from scoring.config import JobConfig
from scoring.core.identity import same_table, table_identity
from scoring.core.score import ScoringSpec
from scoring.core.writable import WriteRule
from scoring.engine import checks, gates
from scoring.engine.faults import fault_point
from scoring.engine.model import PreparedModel, prepare_model
from scoring.engine.probe import PROBE_ROWS, probe
from scoring.engine.progress import LogReporter, Reporter
from scoring.engine.runtime import open_predictor
from scoring.errors import (
    CheckpointError,
    ConfigError,
    InputError,
    InvalidRowsError,
    OutputError,
    QualityError,
    ScoringError,
    from_spark_exception,
)

_LOGGER = logging.getLogger(__name__)

_FILE = "_scoring_source_file"
_LAG_KEEP = 2_000_000
"""Most per-row lags kept for the summary's percentiles (the newest; the Prometheus histogram counts every row)."""


def txn_for(query_id: str, batch_id: int) -> delta.Txn:
    """The output commit's transaction identity for one micro-batch."""
    return delta.Txn(f"scoring-stream:{query_id}", batch_id)


def quarantine_txn_for(query_id: str, batch_id: int) -> delta.Txn:
    return delta.Txn(f"scoring-stream-quarantine:{query_id}", batch_id)


def run_id_for(query_id: str, batch_id: int) -> str:
    """The ``scoring_run_id`` of a micro-batch's rows (and its quarantined rows)."""
    return f"{query_id}:{batch_id}"


def source_of(config: JobConfig) -> str:
    """What the query reads, as recorded in each commit (a new checkpoint on the same source is caught by it)."""
    stream = config.stream
    assert stream is not None
    if stream.source == "kafka":
        assert stream.kafka is not None
        return f"kafka:{stream.kafka.topic}"
    return f"delta:{table_identity(config.input.table)}"


def _same_source(recorded: Any, ours: str) -> bool:
    """Whether a commit's recorded ``source`` is `ours`: Delta sources compare by table identity (commits written
    before identities were recorded hold the path as the config spelled it)."""
    if not isinstance(recorded, str) or ":" not in recorded:
        return False
    kind, _, where = recorded.partition(":")
    our_kind, _, our_where = ours.partition(":")
    if kind != our_kind:
        return False
    if kind != "delta":
        return where == our_where
    try:
        return same_table(where, our_where)
    except ValueError:
        return False


# -- the summary --------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class StreamRecord:
    """What a query did, for the summary line and ``--summary-json``."""

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
    def rows_per_s(self) -> float:
        return self.rows_in / self.elapsed_s if self.elapsed_s else 0.0

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["rows_per_s"] = round(self.rows_per_s, 1)
        return out


class _Lags:
    """Per-row lags of the query (seconds), for percentiles."""

    def __init__(self) -> None:
        self._parts: list[np.ndarray] = []
        self._n = 0

    def add(self, lags: np.ndarray) -> None:
        if not len(lags):
            return
        self._parts.append(lags)
        self._n += len(lags)
        while self._n - len(self._parts[0]) >= _LAG_KEEP:
            self._n -= len(self._parts.pop(0))

    def percentiles(self, *qs: float) -> list[float | None]:
        if not self._parts:
            return [None for _ in qs]
        values = np.concatenate(self._parts)
        return [round(float(np.percentile(values, q)), 4) for q in qs]

    def last(self) -> np.ndarray:
        return self._parts[-1] if self._parts else np.empty(0)


# -- one micro-batch ----------------------------------------------------------------------------------------------


@dataclasses.dataclass
class _Active:
    """The model the query scores with now, and what was derived from it."""

    model: PreparedModel
    predictor_spec: Any
    output_schema: Any = None
    output_checked: bool = False


class _Stopping(Exception):
    """Raised into a micro-batch that starts after a stop was asked for: nothing of it is written."""


class MicroBatchScorer:
    """The ``foreachBatch`` function: scores one micro-batch and commits it once. One per query."""

    def __init__(
        self,
        config: JobConfig,
        spark,
        active: _Active,
        open_spec: Callable[[PreparedModel], Any],
        reporter: Reporter,
        metrics=None,
    ) -> None:
        assert config.stream is not None
        self.config = config
        self.stream = config.stream
        self.spark = spark
        self.active = active
        self._open_spec = open_spec
        self.reporter = reporter
        self.metrics = metrics
        self.lags = _Lags()
        self.query_id: str | None = None
        self.batches = self.batches_skipped = 0
        self.rows_in = self.rows_written = self.rows_quarantined = 0
        self.versions: list[str] = [active.model.version]
        self.failure: ScoringError | None = None
        self.phase_s: dict[str, float] = {}
        self.last_batch_id: int | None = None
        """The last micro-batch this scorer finished (committed, skipped as committed, or empty)."""
        self.stopping = threading.Event()
        self.busy = threading.Lock()
        self._last_alias_check = time.monotonic()
        self._key = list(dict.fromkeys(config.input.key))
        self._passthrough = tuple(dict.fromkeys([*config.input.key, *config.output.partition_by]))
        self._write_rules: dict[str, WriteRule] = {}
        self.tables: catalog.Resolved | None = None
        self.unregistered: tuple[str, ...] = ()
        """Keys of tables named in the catalog but not in it yet (a new output): registered after their first
        commit."""

    # foreachBatch calls this on the driver, from Spark's stream thread (through Py4J).
    def __call__(self, df, batch_id: int) -> None:
        with self.busy:
            if self.stopping.is_set():
                raise _Stopping(f"stopping before micro-batch {batch_id}")
            try:
                self._one(df, int(batch_id))
                self.last_batch_id = int(batch_id)
            except ScoringError as e:
                self.failure = _in_batch(e, int(batch_id), self.query_id)
                raise self.failure from None
            except Exception as e:
                found = from_spark_exception(e) or _known_failure(e, self.config, self.spark)
                if found is None:
                    raise
                self.failure = _in_batch(found, int(batch_id), self.query_id)
                raise self.failure from None

    def _one(self, df, batch_id: int) -> None:
        from scoring.adapters import spark as spark_glue

        started = time.monotonic()
        lap = self._lap_from(started)
        scored_at = dt.datetime.now(dt.UTC)
        query_id = self.query_id = self.query_id or _query_id(self.spark, self.stream.checkpoint)
        self._follow_alias(batch_id)
        model = self.active.model
        run_id = run_id_for(query_id, batch_id)
        stamp = gates.Stamp(run_id, scored_at, self._passthrough)
        txn = txn_for(query_id, batch_id)
        table = self.config.output.table

        rows, version_from, version_to = self._rows(df, batch_id)
        rows = rows.persist()
        cached = [rows]
        try:
            rule = self._write_rule(rows.schema)
            rows_in, unparseable, unwritable, invalid = self._profile(rows, rule)
            lap("read")
            if rows_in == 0:
                return
            set_aside: list[Any] = []
            source, quarantined_n = rows, 0
            if self.stream.source == "kafka":
                cut = self._unparseable(source, stamp, unparseable)
                source, quarantined_n = cut.kept, quarantined_n + cut.count
                set_aside.append(cut.set_aside)
            cut = self._unwritable(source, rule, stamp, unwritable)
            source, quarantined_n = cut.kept, quarantined_n + cut.count
            set_aside.append(cut.set_aside)
            cut = self._invalid_features(source, stamp, invalid)
            source, quarantined_n = cut.kept, quarantined_n + cut.count
            set_aside.append(cut.set_aside)
            gate = self.config.quality.input
            if gate.expectations:
                cut = gates.apply_gate(source, gate, "input", stamp, source=source_of(self.config))
                source, quarantined_n = cut.kept, quarantined_n + cut.count
                set_aside.append(cut.set_aside)

            lap("checks")
            out = None
            if quarantined_n < rows_in:
                lineage = model.lineage(run_id=run_id, scored_at=scored_at, input_version=version_to)
                out = self._score(source, lineage, version_from, spark_glue)
                if not self.active.output_checked:
                    checks.check_output_schema(self.spark, table, out.schema, self.config.output.partition_by)
                    self.active.output_checked = True
                needs_look = (
                    self.config.quality.output.expectations
                    or self.config.output.on_invalid_predictions == "quarantine"
                    or len(self.stream.sinks) > 1
                )
                if needs_look:
                    out = out.persist()
                    cached.append(out)
                    if self.config.output.on_invalid_predictions == "quarantine":
                        fields = [out.schema[n] for n in self.active.output_schema.names]
                        cut = gates.split(
                            out, gates.finite_predictions(fields), "NaN or infinite prediction", "output", stamp
                        )
                        out, quarantined_n = cut.kept, quarantined_n + cut.count
                        set_aside.append(cut.set_aside)
                    if self.config.quality.output.expectations:
                        cut = gates.apply_gate(
                            out, self.config.quality.output, "output", stamp, source=source_of(self.config)
                        )
                        out, quarantined_n = cut.kept, quarantined_n + cut.count
                        set_aside.append(cut.set_aside)

            metadata = {
                "mode": "stream",
                "job": self.config.name,
                "stream_query_id": query_id,
                "batch_id": batch_id,
                "checkpoint": self.stream.checkpoint,
                "source": source_of(self.config),
                columns.SCORING_RUN_ID: run_id,
                columns.MODEL_NAME: model.name,
                columns.MODEL_VERSION: model.version,
                columns.MODEL_URI: model.uri,
                "requested_model_uri": self.config.model.uri,
                columns.SOURCE_VERSION_FROM: version_from,
                columns.INPUT_VERSION: version_to,
                "rows_read": rows_in,
                "rows_quarantined": quarantined_n,
            }
            lap("plan")
            fault_point("stream-before-output-commit", batch=batch_id)
            written, committed, version = 0, False, None
            if "delta" in self.stream.sinks:
                frame = out if out is not None else self._empty_output(source)
                if frame is not None:
                    result = delta.append_batch(
                        frame,
                        table,
                        partition_by=self.config.output.partition_by,
                        txn=txn,
                        metadata=metadata,
                        key=self.config.input.key,
                    )
                    written, committed, version = result.rows_written, result.committed, result.version
            committed_at = time.time()
            lap("score+commit")
            fault_point("stream-after-output-commit", batch=batch_id)
            if "kafka" in self.stream.sinks and out is not None:
                from scoring.adapters import kafka

                sink = self.stream.kafka_sink
                assert sink is not None
                kafka.write_records(out, self.stream.sink_servers, sink.topic, self._key)
                if "delta" not in self.stream.sinks:
                    written, committed = rows_in - quarantined_n, True
                committed_at = time.time()
            quarantined = gates.union(set_aside)
            if quarantined is not None:
                delta.append_once(quarantined, self.config.quarantine_table, txn=quarantine_txn_for(query_id, batch_id))
            if self.unregistered:
                self.unregistered = self.tables.register_new(self.spark, *self.unregistered)
            lap("kafka+quarantine")
            fault_point("stream-after-quarantine-commit", batch=batch_id)

            lags = self._lags(rows, committed_at)
            lap("lag")
            duration = time.monotonic() - started
            if self.metrics is not None:  # first: whoever watches the counts below then finds the metrics current
                self.metrics.batch(
                    outcome="committed" if committed else "already-committed",
                    rows_in=rows_in,
                    rows_out=written if committed else 0,
                    rows_quarantined=quarantined_n,
                    duration_s=duration,
                    lags_s=lags,
                    model_version=model.version,
                )
            self.lags.add(lags)
            self.batches_skipped += 0 if committed else 1
            self.rows_in += rows_in
            self.rows_written += written if committed else 0
            self.rows_quarantined += quarantined_n
            self.batches += 1
            p50, p95 = np.percentile(lags, [50, 95]) if len(lags) else (float("nan"), float("nan"))
            self.reporter.step(
                f"batch {batch_id}: {rows_in:,} rows in {duration:.2f} s ({rows_in / max(duration, 1e-9):,.0f} rows/s)"
                + (f", {quarantined_n:,} set aside" if quarantined_n else "")
                + (f", lag p50 {p50:.2f} s p95 {p95:.2f} s" if len(lags) else "")
                + f", model v{model.version}"
                + ("" if committed else f" (already committed as version {version}: not written again)")
            )
        finally:
            for frame in cached:
                frame.unpersist()

    def _lap_from(self, started: float) -> Callable[[str], None]:
        """A function that adds the seconds since its last call to ``phase_s[phase]`` (where a micro-batch's time
        goes; the summary shows the mean per micro-batch)."""
        mark = [started]

        def lap(phase: str) -> None:
            now = time.monotonic()
            self.phase_s[phase] = self.phase_s.get(phase, 0.0) + now - mark[0]
            mark[0] = now

        return lap

    # -- the pieces -----------------------------------------------------------------------------------------------

    def _rows(self, df, batch_id: int):
        """The micro-batch's rows with the columns the job needs and where each came from; the Delta source
        version range the micro-batch read (None, None for Kafka)."""
        from pyspark.sql import functions as F

        features = self.active.model.features
        if self.stream.source == "kafka":
            from scoring.adapters import kafka

            assert self.stream.kafka is not None
            wanted = {name: self.stream.kafka.fields.get(name, "string") for name in self._passthrough}
            return kafka.parse_records(df, wanted, features), None, None
        version_from, version_to = _version_range(self.spark, self.stream.checkpoint, batch_id, self.config.input.table)
        needed = list(dict.fromkeys([*self._passthrough, *features]))
        if self.stream.event_time is not None:
            rows = df.select(
                *[F.col(f"`{c}`") for c in needed],
                F.col(f"`{self.stream.event_time}`").cast("timestamp").alias(columns.EVENT_TIME),
            )
            return rows, version_from, version_to
        rows = df.select(*[F.col(f"`{c}`") for c in needed], F.input_file_name().alias(_FILE))
        times = _commit_times(self.spark, self.config.input.table, version_from, version_to)
        basename = F.element_at(F.split(F.col(_FILE), "/"), -1)
        if times:
            lookup = F.create_map(*[x for name, ms in times.items() for x in (F.lit(name), F.lit(ms))])
            millis = F.coalesce(lookup[basename], F.lit(min(times.values())))
        else:
            millis = F.lit(None).cast("long")
        rows = rows.withColumn(columns.EVENT_TIME, F.timestamp_millis(millis)).drop(_FILE)
        return rows, version_from, version_to

    def _profile(self, rows, rule: WriteRule) -> tuple[int, int, int, int]:
        """One pass over the (cached) micro-batch: its rows, the Kafka records that cannot be parsed, the rows the
        output cannot take among the others (`rule`), and the rows with invalid features among the rest."""
        from pyspark.sql import functions as F

        valid = gates.valid_features(rows.schema, self.active.model.features)
        fits = gates.unwritable_reason(rule).isNull() if rule.can_fail else F.lit(True)
        if self.stream.source == "kafka":
            from scoring.adapters import kafka

            parsed = kafka.bad_record_reason().isNull()
        else:
            parsed = F.lit(True)
        row = rows.agg(
            F.count(F.lit(1)).alias("n"),
            F.sum(F.when(~parsed, 1).otherwise(0)).alias("unparseable"),
            F.sum(F.when(parsed & ~fits, 1).otherwise(0)).alias("unwritable"),
            F.sum(F.when(parsed & fits & ~valid, 1).otherwise(0)).alias("invalid"),
        ).head()
        return (
            int(row["n"]),
            int(row["unparseable"] or 0),
            int(row["unwritable"] or 0),
            int(row["invalid"] or 0),
        )

    def _write_rule(self, schema) -> WriteRule:
        """Which rows the output can take (:mod:`scoring.core.writable`), for rows of `schema`: found once per
        source schema (the output's types do not change under the query)."""
        known = self._write_rules.get(schema.simpleString())
        if known is None:
            known = gates.write_rule(
                self.spark, self.config.output.table, schema, self.config.output.partition_by, self._passthrough
            )
            self._write_rules[schema.simpleString()] = known
        return known

    def _unwritable(self, rows, rule: WriteRule, stamp: gates.Stamp, n: int) -> gates.Split:
        """Rows the output cannot take (a partition value that cannot be a path, a key or partition value that does
        not fit the output column's type): set aside with why, never written, never failing the micro-batch. The
        rest go on with their key and partition columns cast to the output's types."""
        if n == 0:
            return gates.Split(gates.conform(rows, rule), None, 0)
        return dataclasses.replace(gates.split_unwritable(rows, rule, stamp, count=False), count=n)

    def _unparseable(self, rows, stamp: gates.Stamp, n: int) -> gates.Split:
        """Kafka records that cannot be scored (not JSON, a wrong type, a missing field): set aside with why."""
        from scoring.adapters import kafka
        from scoring.engine import quality

        reason = kafka.bad_record_reason()
        kept = kafka.drop_parse_columns(rows.where(reason.isNull()) if n else rows)
        if n == 0:
            return gates.Split(kept, None, 0)
        bad = rows.where(reason.isNotNull())
        frame = quality.quarantine_frame(
            bad, reason, "source", stamp.passthrough, stamp.run_id, stamp.at, row=kafka.drop_parse_columns(bad).columns
        )
        return gates.Split(kept, frame, n)

    def _invalid_features(self, rows, stamp: gates.Stamp, n: int) -> gates.Split:
        if n == 0:
            return gates.Split(rows, None, 0)
        valid = gates.valid_features(rows.schema, self.active.model.features)
        if self.config.input.on_invalid_rows == "skip":
            cut = gates.split(
                rows, valid, "invalid feature (null, NaN, infinite or beyond float32)", "input", stamp, count=False
            )
            return dataclasses.replace(cut, count=n)
        first = rows.where(~valid).limit(1).collect()[0]
        key = ", ".join(f"{k}={first[k]!r}" for k in self.config.input.key)
        raise InvalidRowsError(
            f"input: {n} row(s) of the micro-batch have null, NaN, infinite or out-of-range (beyond float32) "
            f"features, first at {key}",
            hint="set input.on_invalid_rows: skip to set such rows aside in the quarantine table and score the "
            "rest, or clean the source",
        )

    def _score(self, source, lineage, version_from: int | None, spark_glue):
        """Pass-through, source and prediction columns, then the lineage (and the source version range)."""
        from pyspark.sql import functions as F

        model = self.active.model
        origin = [
            c
            for c in (
                columns.SOURCE_TOPIC,
                columns.SOURCE_PARTITION,
                columns.SOURCE_OFFSET,
                columns.EVENT_TIME,
                "raw_value",
            )
            if c in source.columns
        ]
        origin = [c for c in origin if c != "raw_value"]
        spec = ScoringSpec(
            features=model.features,
            passthrough=(*self._passthrough, *origin),
            key=tuple(self.config.input.key),
            model=model.uri,
            allow_nonfinite=self.config.output.on_invalid_predictions == "quarantine",
        )
        if self.active.output_schema is None:
            sample = source.limit(PROBE_ROWS).toArrow()
            self.active.output_schema = probe(sample, spec, self.active.predictor_spec)
        spec = dataclasses.replace(spec, output_schema=self.active.output_schema)
        scored = spark_glue.score_dataframe(source, spec, self.active.predictor_spec, lineage)
        if self.stream.source == "delta":
            scored = scored.withColumn(columns.SOURCE_VERSION_FROM, F.lit(version_from).cast("long"))
        ordered = [
            *self._passthrough,
            *self.active.output_schema.names,
            *columns.LINEAGE,
            *[
                c
                for c in (
                    columns.SOURCE_VERSION_FROM,
                    columns.SOURCE_TOPIC,
                    columns.SOURCE_PARTITION,
                    columns.SOURCE_OFFSET,
                    columns.EVENT_TIME,
                )
                if c in scored.columns
            ],
        ]
        return scored.select(*[F.col(f"`{c}`") for c in ordered])

    def _empty_output(self, source):
        """Every row of the micro-batch was set aside: nothing to append (the quarantine table still gets them)."""
        return None

    def _follow_alias(self, batch_id: int) -> None:
        if not self.stream.follow_alias:
            return
        now = time.monotonic()
        if now - self._last_alias_check < self.stream.alias_check_interval_s:
            return
        self._last_alias_check = now
        current = prepare_model(self.config)
        if current.version == self.active.model.version:
            return
        old = self.active.model.version
        # An alias moving back and forth reuses what each version opened (its predictor, probed output schema):
        # one predictor per version for the life of the query, however often the alias flips.
        opened: dict[str, _Active] = self.__dict__.setdefault("_opened", {})
        opened[old] = self.active
        self.active = opened.get(current.version) or _Active(current, self._open_spec(current))
        self.versions.append(current.version)
        self.reporter.step(
            f"model {self.config.model.uri} now points to version {current.version} (was {old}): scoring with "
            f"version {current.version} from micro-batch {batch_id} on"
        )
        _LOGGER.warning(
            "model alias moved: %s version %s -> %s at micro-batch %d",
            self.config.model.uri,
            old,
            current.version,
            batch_id,
        )

    def _lags(self, rows, committed_at: float) -> np.ndarray:
        table = rows.select(columns.EVENT_TIME).toArrow()
        if table.num_rows == 0:
            return np.empty(0)
        times = table.column(0).cast("int64").to_numpy(zero_copy_only=False)  # microseconds (nulls -> masked below)
        valid = table.column(0).is_valid().to_numpy(zero_copy_only=False)
        return committed_at - times[valid] / 1e6


def _in_batch(error: ScoringError, batch_id: int, query_id: str | None) -> ScoringError:
    """`error` as the message of a stopped query: which micro-batch, that nothing of it was committed, and what a
    restart will do."""
    if isinstance(error, CheckpointError):
        again = "a restart on this checkpoint fails the same way until the file is restored"
    elif isinstance(error, QualityError | InputError | OutputError):
        again = "a restart meets the same micro-batch again until the input or the policy changes"
    else:
        again = "a restart resumes from the checkpoint with this micro-batch"
    cls = type(error)
    return cls(
        f"micro-batch {batch_id} of stream query {query_id}: {error.message} (nothing of this micro-batch was "
        f"committed; {again})",
        hint=error.hint,
    )


# -- the checkpoint and the Delta source's log --------------------------------------------------------------------


def _query_id(spark, checkpoint: str) -> str:
    """The query's id, which Spark writes to the checkpoint when the query first starts and keeps for its life."""
    from scoring.adapters.spark import read_text

    text = read_text(spark, f"{checkpoint.rstrip('/')}/metadata")
    if text is None:
        raise OutputError(
            f"stream.checkpoint: {checkpoint} has no metadata file although the query started",
            hint="point stream.checkpoint at a folder only this query uses",
        )
    try:
        return str(json.loads(text)["id"])
    except (ValueError, KeyError, TypeError) as e:
        from scoring.modes.stream_failures import checkpoint_error

        raise checkpoint_error(f"{checkpoint.rstrip('/')}/metadata", f"no query id in it: {e!r}") from None


def _offset(spark, checkpoint: str, batch_id: int) -> dict[str, Any] | None:
    from scoring.adapters.spark import read_text

    if batch_id < 0:
        return None
    text = read_text(spark, f"{checkpoint.rstrip('/')}/offsets/{batch_id}")
    if text is None:
        return None
    lines = [line for line in text.splitlines() if line.strip()]
    # "v1", the batch's metadata, then one offset per source (this query has one).
    try:
        return json.loads(lines[2]) if len(lines) >= 3 and lines[2].startswith("{") else None
    except ValueError as e:
        from scoring.modes.stream_failures import checkpoint_error

        raise checkpoint_error(f"{checkpoint.rstrip('/')}/offsets/{batch_id}", f"not JSON: {e}") from None


def _version_range(spark, checkpoint: str, batch_id: int, table: str | None = None) -> tuple[int | None, int | None]:
    """The Delta source versions micro-batch `batch_id` read, from the checkpoint's offset log: ``(from, to)``.
    Rows of the table's starting snapshot count from version 0.

    With `table` (the source), also that the offset belongs to the table now at that place: a source deleted and
    created again while the query runs keeps being read by Spark's Delta source under the old table's offsets
    (its versions restart, so rows of the new table are skipped, silently); that micro-batch is refused instead."""
    end = _offset(spark, checkpoint, batch_id)
    if end is None:
        return None, None
    if table is not None and end.get("reservoirId"):
        now = _table_id(spark, table)
        if now is not None and now != end["reservoirId"]:
            from scoring.modes.stream_failures import recreated_source_error

            raise recreated_source_error(
                table, checkpoint, f"the checkpoint read table id {end['reservoirId']}, the table there now is {now}"
            )
    prev = _offset(spark, checkpoint, batch_id - 1)
    version, index, starting = int(end["reservoirVersion"]), int(end["index"]), bool(end["isStartingVersion"])
    to = version if starting or index != -1 else version - 1
    if prev is None or starting or prev.get("isStartingVersion"):
        return 0, max(to, 0)
    return min(int(prev["reservoirVersion"]), to), to


def _table_id(spark, table: str) -> str | None:
    """Delta's id of the table now at `table` (``metaData.id`` of its log's first commit: one small file), or None
    when that commit is gone (log clean-up) or unreadable."""
    from scoring.adapters.spark import read_text

    try:
        text = read_text(spark, f"{table.rstrip('/')}/_delta_log/{0:020d}.json")
    except Exception:  # noqa: BLE001 - the check is best effort; Delta's own checks still apply
        return None
    for line in (text or "").splitlines():
        if '"metaData"' in line:
            with contextlib.suppress(ValueError, KeyError, TypeError):
                return str(json.loads(line)["metaData"]["id"])
    return None


def _commit_times(spark, table: str, version_from: int | None, version_to: int | None, *, most: int = 200) -> dict:
    """File name -> commit time (epoch ms) of the commits `version_from`..`version_to` of the Delta table (the newest
    `most` of them): each row's source commit time, where the job names no event-time column."""
    from scoring.adapters.spark import read_text

    if version_from is None or version_to is None:
        return {}
    times: dict[str, int] = {}
    for version in range(max(version_from, version_to - most + 1), version_to + 1):
        text = read_text(spark, f"{table.rstrip('/')}/_delta_log/{version:020d}.json")
        if text is None:
            continue
        at, added = deltalog.commit_summary(text)
        for name in map(posixpath.basename, added):
            if at is not None:
                times[name] = int(at)
    return times


# -- the query ----------------------------------------------------------------------------------------------------


def _session(config: JobConfig):
    from scoring.adapters import spark as spark_glue

    assert config.stream is not None
    conf = {"spark.sql.execution.arrow.maxRecordsPerBatch": str(config.runtime.batch_rows), **config.spark.conf}
    uses_kafka = config.stream.source == "kafka" or "kafka" in config.stream.sinks
    if uses_kafka:
        packages = [spark_glue.kafka_package(), *filter(None, conf.get("spark.jars.packages", "").split(","))]
        conf["spark.jars.packages"] = ",".join(dict.fromkeys(packages))
    spark = spark_glue.get_session(config.spark.master, conf, app_name=f"scoring-stream:{config.name}")
    spark.conf.set("spark.sql.execution.arrow.maxRecordsPerBatch", str(config.runtime.batch_rows))
    return spark


def _check_start(config: JobConfig, spark) -> None:
    """Everything that can be wrong before the query starts: paths, the source, and a new checkpoint aimed at an
    output another query of the same source already writes."""
    from scoring.adapters.spark import read_text

    stream = config.stream
    assert stream is not None
    if stream.source == "delta":
        checks.check_paths(config, spark)
        if delta.latest_version(spark, config.input.table) is None:
            raise InputError(
                f"input.table: {config.input.table} is not a Delta table (or does not exist)",
                hint="create the source table first, or fix input.table",
            )
    else:
        assert stream.kafka is not None
        from scoring.adapters import kafka

        kafka.check_topic(stream.kafka.bootstrap_servers, stream.kafka.topic, key="stream.kafka")
        for key, table in (
            ("output.table", config.output.table),
            ("quality.quarantine_table", config.quarantine_table),
        ):
            delta.check_target(spark, table, key=key)
    if stream.kafka_sink is not None:
        from scoring.adapters import kafka

        kafka.check_topic(stream.sink_servers or "", stream.kafka_sink.topic, key="stream.kafka_sink")
    if "delta" not in stream.sinks:
        return
    ours = None
    text = read_text(spark, f"{stream.checkpoint.rstrip('/')}/metadata")
    if text is not None:
        ours = json.loads(text).get("id")
    other = _other_query(spark, config, ours)
    if other is not None:
        raise ConfigError(
            f"stream.checkpoint: {config.output.table} already holds micro-batches of stream query "
            f"{other.get('stream_query_id')} reading {source_of(config)} (checkpoint {other.get('checkpoint')}, "
            f"last batch {other.get('batch_id')}), and the checkpoint {stream.checkpoint} "
            + ("is new" if ours is None else f"belongs to another query ({ours})")
            + ": starting here would score the source again into the same table",
            hint=f"point stream.checkpoint at {other.get('checkpoint')} to resume that query, or write to a new "
            "output.table",
        )


def _other_query(spark, config: JobConfig, ours: str | None) -> dict[str, Any] | None:
    """The newest commit metadata of another stream query from the same source into the output, if any."""
    from delta.tables import DeltaTable

    if delta.latest_version(spark, config.output.table) is None:
        return None
    source = source_of(config)
    for row in DeltaTable.forPath(spark, config.output.table).history(500).select("userMetadata").collect():
        try:
            meta = json.loads(row.userMetadata or "{}")
        except ValueError:
            continue
        if (
            isinstance(meta, dict)
            and meta.get("mode") == "stream"
            and _same_source(meta.get("source"), source)
            and meta.get("stream_query_id") != ours
        ):
            return meta
    return None


class StreamHandle:
    """A running query: its Spark handle, the scorer's running counts, and a clean stop."""

    def __init__(
        self,
        config: JobConfig,
        query,
        scorer: MicroBatchScorer,
        stack: contextlib.ExitStack,
        started: float,
        metrics=None,
    ) -> None:
        self.config = config
        self.query = query
        self.scorer = scorer
        self._stack = stack
        self._started = started
        self.metrics = metrics
        self._stopped_by_request = False

    @property
    def id(self) -> str:
        return str(self.query.id)

    def stop(self) -> None:
        """Stop after the micro-batch in progress (if any) has committed; nothing of a later one starts."""
        self._stopped_by_request = True
        self.scorer.stopping.set()
        with self.scorer.busy:  # wait for the micro-batch in progress
            last = self.scorer.last_batch_id
        # ... and for Spark to record it in the checkpoint (it does so right after foreachBatch returns), so that a
        # restart starts with the next micro-batch instead of replaying this one.
        deadline = time.monotonic() + 30
        while last is not None and self.query.isActive and time.monotonic() < deadline:
            progress = self.query.lastProgress
            if progress is not None and int(progress.get("batchId", -1)) >= last:
                break
            time.sleep(0.05)
        self.query.stop()

    def await_termination(self, timeout_s: float | None = None) -> bool:
        """Wait until the query ends (True) or `timeout_s` passes (False). A failed micro-batch raises its
        :class:`~scoring.errors.ScoringError` here."""
        try:
            if timeout_s is None:
                self.query.awaitTermination()
                return True
            return bool(self.query.awaitTermination(timeout_s))
        except Exception as e:
            raise self._error(e) from None

    def _error(self, e: Exception) -> Exception:
        if self.scorer.failure is not None:
            return self.scorer.failure
        if self._stopped_by_request and "_Stopping" in str(e):
            return _Stopped()
        return from_spark_exception(e) or _translate(e, self.config, self.scorer.spark)

    def close(self) -> StreamRecord:
        """Stop the query if it runs, release the predictor and the metrics endpoint; the summary."""
        error = None
        if self.query.isActive:
            self.stop()
        try:
            self.query.awaitTermination()
        except Exception as e:
            found = self._error(e)
            if not isinstance(found, _Stopped):
                error = found
        self._stack.close()
        record = self.record(error=error)
        if error is not None:
            raise error
        return record

    def record(self, *, error: Exception | None = None) -> StreamRecord:
        s, stream = self.scorer, self.config.stream
        assert stream is not None
        p50, p95, p99, pmax = s.lags.percentiles(50, 95, 99, 100)
        stopped = "failed" if error else ("stopped" if self._stopped_by_request else "drained")
        return StreamRecord(
            job=self.config.name,
            query_id=s.query_id or str(self.query.id),
            checkpoint=stream.checkpoint,
            source=source_of(self.config),
            sinks=tuple(stream.sinks),
            output_table=self.config.output.table,
            trigger=stream.trigger,
            model_uri=s.active.model.uri,
            model_versions=tuple(s.versions),
            batches=s.batches,
            batches_skipped=s.batches_skipped,
            rows_in=s.rows_in,
            rows_written=s.rows_written,
            rows_quarantined=s.rows_quarantined,
            lag_p50_s=p50,
            lag_p95_s=p95,
            lag_p99_s=p99,
            lag_max_s=pmax,
            elapsed_s=round(time.monotonic() - self._started, 3),
            stopped=stopped,
            quarantine_table=self.config.quarantine_table if s.rows_quarantined else None,
            metrics_url=f"http://{stream.metrics_host}:{self.metrics.port}/metrics" if self.metrics else None,
            error=str(error) if error else None,
            batch_timings_s=self._timings(),
        )

    def _timings(self) -> dict[str, float]:
        s = self.scorer
        out = {phase: round(total / s.batches, 3) for phase, total in s.phase_s.items()} if s.batches else {}
        spark_s = []
        for progress in self.query.recentProgress or []:
            d = progress.get("durationMs", {}) if isinstance(progress, dict) else {}
            if progress.get("numInputRows") and "triggerExecution" in d:
                spark_s.append((d["triggerExecution"] - d.get("addBatch", 0)) / 1000)
        if spark_s:
            out["spark"] = round(float(np.mean(spark_s)), 3)
        return out


class _Stopped(Exception):
    pass


class _OwnErrorsOnly(logging.Filter):
    """Py4J logs every exception a ``foreachBatch`` call raises, with its traceback; a micro-batch's ScoringError (or
    a stop) is reported once, by the query's handle, as a plain message."""

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        return not isinstance(error, ScoringError | _Stopping)


_PY4J_FILTER = _OwnErrorsOnly()


def _translate(e: Exception, config: JobConfig | None = None, spark=None) -> Exception:
    """A failed query's (or start's) exception as the ScoringError that names its cause and the way to recover, when
    the cause is known (:mod:`scoring.modes.stream_failures`); else `e` itself."""
    text = delta.message_of(e) if hasattr(e, "java_exception") or hasattr(e, "getMessage") else str(e)
    if "DELTA_SOURCE_TABLE_IGNORE_CHANGES" in text or "DELTA_SOURCE_IGNORE_DELETE" in text:
        return InputError(
            f"input.table: the source table was updated or had rows deleted, which a stream over an append-only "
            f"table cannot follow ({text.splitlines()[0][:300]})",
            hint="stream from an append-only table; restart with a new checkpoint and output after rewriting it",
        )
    return (_known_failure(e, config, spark) if config is not None else None) or e


def _known_failure(e: BaseException, config: JobConfig, spark) -> ScoringError | None:
    """`e` as a ScoringError when its cause is one that is not the user's data but known (a corrupt checkpoint
    file, a re-created source, files removed by VACUUM, a deleted Kafka topic); None otherwise."""
    from scoring.modes import stream_failures

    try:
        return stream_failures.translate(e, config, spark)
    except Exception:  # noqa: BLE001 - explaining a failure must never hide it
        _LOGGER.debug("could not explain %r", e, exc_info=True)
        return None


def start(
    config: JobConfig,
    *,
    spark=None,
    reporter: Reporter | None = None,
    available_now: bool = False,
) -> StreamHandle:
    """Start the streaming query of `config` (which has a ``stream:`` section) and return its handle."""
    if config.stream is None:
        raise ConfigError(
            "this job config has no stream: section, so it cannot run as a stream",
            hint="add a stream: section (source, checkpoint, ...; see the README's Streaming section), or run it "
            "with scoring run",
        )
    stream = config.stream
    if stream.trigger == "real-time":
        raise ConfigError(
            "stream.trigger: real-time is not offered: in Spark 4.2's Real-time Mode our scoring UDF (a Python Arrow "
            "UDF, outside the mode's operator allowlist) holds every score until the real-time batch ends, so its "
            "latency is the batch duration (5 s or more), worse than the micro-batch trigger (README, Streaming, "
            "Real-time Mode)",
            hint="use trigger: micro-batch with interval_s: 0 (the lowest-latency micro-batch trigger)",
        )
    if stream.follow_alias and config.runtime.backend == "triton" and config.runtime.triton.launch == "auto":
        raise ConfigError(
            "stream.follow_alias with runtime.triton.launch: auto: the sidecar this query starts serves only the "
            "version resolved at start",
            hint="use runtime.backend: embedded, or an external Triton server (launch: external) that serves "
            "every version the alias may point to",
        )
    reporter = reporter or LogReporter()
    started = time.monotonic()
    logging.getLogger("py4j.clientserver").addFilter(_PY4J_FILTER)
    spark = spark or _session(config)
    tables = catalog.resolve(config, spark)  # catalog names -> locations, once; paths stay as they are
    config = tables.config
    try:
        _check_start(config, spark)
    except ScoringError:
        raise
    except Exception as e:  # e.g. a checkpoint file that cannot be read: say which
        found = _translate(e, config, spark)
        if found is e:
            raise
        raise found from None
    reporter.step(f"resolving {config.model.uri}")
    model = prepare_model(config)
    reporter.step(
        f"model {model.name} version {model.version} ({', '.join(model.ref.flavors)})"
        + (" (following the alias)" if stream.follow_alias else " (pinned for the life of the query)")
    )

    stack = contextlib.ExitStack()
    try:
        from scoring.adapters.spark import ship_model_files

        # on a cluster, the model's files reach the executors once per version, through Spark (as in a batch run)
        predictor_spec = ship_model_files(spark, stack.enter_context(open_predictor(config, model, reporter)))

        def open_spec(prepared: PreparedModel):
            return ship_model_files(spark, stack.enter_context(open_predictor(config, prepared, reporter)))

        metrics = None
        if stream.metrics_port is not None:
            from scoring.adapters.metrics import StreamMetrics

            metrics = StreamMetrics(config.name)
            port = metrics.serve(stream.metrics_host, stream.metrics_port)
            stack.callback(metrics.close)
            reporter.step(f"metrics on http://{stream.metrics_host}:{port}/metrics")
        scorer = MicroBatchScorer(config, spark, _Active(model, predictor_spec), open_spec, reporter, metrics)
        scorer.tables = tables
        scorer.unregistered = tuple(k for k, t in tables.tables.items() if not t.registered)
        source = _source(config, spark, model)
        writer = (
            source.writeStream.queryName(_query_name(config))
            .option("checkpointLocation", stream.checkpoint)
            .foreachBatch(scorer)
        )
        if available_now or stream.trigger == "available-now":
            writer = writer.trigger(availableNow=True)
        else:
            writer = writer.trigger(processingTime=f"{int(stream.interval_s * 1000)} milliseconds")
        try:
            query = writer.start()
        except Exception as e:
            raise (from_spark_exception(e) or _translate(e, config, spark)) from None
        reporter.step(
            f"streaming {source_of(config)} -> {', '.join(_sink_names(config))} (query {query.id}, checkpoint "
            f"{stream.checkpoint})"
        )
        return StreamHandle(config, query, scorer, stack, started, metrics)
    except BaseException:
        stack.close()
        raise


def _query_name(config: JobConfig) -> str:
    import re

    return re.sub(r"[^A-Za-z0-9_]", "_", f"scoring_{config.name}")


def _sink_names(config: JobConfig) -> list[str]:
    stream = config.stream
    assert stream is not None
    names = []
    for sink in stream.sinks:
        if sink == "delta":
            names.append(config.output.table)
        else:
            assert stream.kafka_sink is not None
            names.append(f"kafka:{stream.kafka_sink.topic}")
    return names


def _source(config: JobConfig, spark, model: PreparedModel):
    stream = config.stream
    assert stream is not None
    if stream.source == "kafka":
        from scoring.adapters import kafka

        assert stream.kafka is not None
        return kafka.read_stream(
            spark,
            stream.kafka.bootstrap_servers,
            stream.kafka.topic,
            starting_offsets=stream.kafka.starting_offsets,
            max_offsets=stream.max_offsets_per_trigger,
            options=stream.kafka.options,
        )
    reader = spark.readStream.format("delta")
    if stream.max_files_per_trigger is not None:
        reader = reader.option("maxFilesPerTrigger", str(stream.max_files_per_trigger))
    source = reader.load(config.input.table)
    checks.check_columns(config, source.schema, model.features)
    if stream.event_time is not None and stream.event_time not in source.columns:
        raise InputError(
            f"stream.event_time: column {stream.event_time!r} is not in {config.input.table} "
            f"(it has {sorted(source.columns)})",
            hint="name a timestamp column of the source, or leave stream.event_time out to measure lag from the "
            "source commit time",
        )
    return source


def run(
    config: JobConfig,
    *,
    spark=None,
    reporter: Reporter | None = None,
    available_now: bool = False,
    stop: threading.Event | None = None,
    poll_s: float = 0.5,
) -> StreamRecord:
    """Run the stream until it drains (`available_now`), `stop` is set (a signal handler sets it), or a micro-batch
    fails (raised as its :class:`~scoring.errors.ScoringError`). Returns the summary."""
    reporter = reporter or LogReporter()
    stop = stop or threading.Event()
    handle = start(config, spark=spark, reporter=reporter, available_now=available_now)
    try:
        while not stop.is_set():
            try:
                if handle.await_termination(poll_s):
                    break
            except _Stopped:
                break
        if stop.is_set():
            reporter.step("stopping after the micro-batch in progress")
    except BaseException:
        with contextlib.suppress(Exception):
            handle.close()
        raise
    finally:
        reporter.close()
    return handle.close()
