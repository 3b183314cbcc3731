"""One micro-batch of a stream query, scored and committed once: :class:`MicroBatchScorer`, the ``foreachBatch``
function. It reads the micro-batch's rows and where they came from, sets aside what only a stream knows about (a
Kafka record that cannot be parsed, a row the output cannot take), scores the rest through the unit of work
(:func:`scoring.engine.unit.score_unit`) and commits them under the micro-batch's transaction identity,
``(scoring-stream:<query id>, <batch id>)``; its set-aside rows under their own."""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from scoring import columns
from scoring.adapters import catalog, delta
from scoring.config import JobConfig
from scoring.core.identity import same_table, table_identity
from scoring.core.writable import WriteRule
from scoring.engine import gates
from scoring.engine.clock import PhaseClock
from scoring.engine.faults import fault_point
from scoring.engine.follow import AliasFollower
from scoring.engine.model import PreparedModel, prepare_model
from scoring.engine.progress import Reporter
from scoring.engine.record import RunRecord
from scoring.engine.unit import UnitContext, UnitResult, score_unit
from scoring.errors import (
    CheckpointError,
    InputError,
    InvalidRowsError,
    OutputError,
    QualityError,
    ScoringError,
    from_spark_exception,
)
from scoring.modes import stream_log
from scoring.runners.spark import SparkRunner

_LOGGER = logging.getLogger(__name__)

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


def same_source(recorded: Any, ours: str) -> bool:
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


_ORIGIN = (columns.SOURCE_TOPIC, columns.SOURCE_PARTITION, columns.SOURCE_OFFSET, columns.EVENT_TIME)
"""Where each row came from, carried to the output when the source gives it (a Kafka record's place, its event
time)."""


def _origin(names: Sequence[str]) -> list[str]:
    return [c for c in _ORIGIN if c in names]


def _all(*conditions):
    """The conjunction of the conditions given (None stands for "true"); None when none is given."""
    found = [c for c in conditions if c is not None]
    if not found:
        return None
    out = found[0]
    for c in found[1:]:
        out = out & c
    return out


# -- one micro-batch ----------------------------------------------------------------------------------------------


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
        self.runner = SparkRunner(spark)
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
        self._follower: AliasFollower[PreparedModel, _Active] | None = None
        if self.stream.follow_alias:
            # one _Active (predictor, probed output schema) per version for the life of the query, however often the
            # alias flips; the version the query started with is already open
            first = {active.model.version: active}
            self._follower = AliasFollower(
                lambda: prepare_model(self.config),
                lambda model: first.pop(model.version, None) or _Active(model, self._open_spec(model)),
                interval_s=self.stream.alias_check_interval_s,
            )
            self._follower.start(active.model)
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
        clock = PhaseClock(self.phase_s, digits=None)
        started = time.monotonic()
        scored_at = dt.datetime.now(dt.UTC)
        query_id = self.query_id = self.query_id or stream_log.query_id(self.spark, self.stream.checkpoint)
        self._follow_alias(batch_id)
        model = self.active.model
        run_id = run_id_for(query_id, batch_id)
        stamp = gates.Stamp(run_id, scored_at, self._passthrough)
        table = self.config.output.table
        runner = self.runner

        rows, version_from, version_to = self._rows(df, batch_id)
        rows = runner.keep(rows)
        unit: UnitResult | None = None
        try:
            rule = self._write_rule(rows.schema)
            rows_in, unparseable, unwritable, invalid = self._profile(rows, rule)
            clock.lap("read")
            if rows_in == 0:
                return
            # what only a stream knows about: records that cannot be parsed, rows the output cannot take
            source, set_aside = rows, []
            if self.stream.source == "kafka":
                cut = self._unparseable(source, stamp, unparseable)
                source = cut.kept
                set_aside.append(cut.set_aside)
            cut = self._unwritable(source, rule, stamp, unwritable)
            source = cut.kept
            set_aside.append(cut.set_aside)
            if invalid and self.config.input.on_invalid_rows != "skip":
                self._refuse_invalid(source, invalid)
            clock.lap("checks")
            unit = score_unit(
                source,
                UnitContext(
                    config=self.config,
                    model=model,
                    predictor_spec=self.active.predictor_spec,
                    runner=runner,
                    stamp=stamp,
                    lineage=model.lineage(run_id=run_id, scored_at=scored_at, input_version=version_to),
                    passthrough=(*self._passthrough, *_origin(source.columns)),
                    rows=rows_in - unparseable - unwritable,
                    rows_invalid=invalid,
                    gate_source=source_of(self.config),
                    output_gate_source=source_of(self.config),
                    output_schema=self.active.output_schema,
                    check_output=not self.active.output_checked,
                    finish=lambda scored: self._finish(scored, version_from),
                    keep_scores=len(self.stream.sinks) > 1,
                    set_aside=tuple(set_aside),
                ),
            )
            if len(unit.output_schema):
                self.active.output_schema = unit.output_schema
            if unit.scored is not None:
                self.active.output_checked = True
            out = unit.scored
            quarantined_n = unparseable + unwritable + unit.rows_invalid + unit.rows_quarantined
            record = RunRecord(
                mode="stream",
                job=self.config.name,
                run_id=run_id,
                model_name=model.name,
                model_version=model.version,
                model_uri=model.uri,
                requested_model_uri=self.config.model.uri,
                input_table=self.config.input.table,
                input_version=version_to,
                output_table=table,
                scored_at=scored_at.isoformat(),
                backend=self.config.runtime.backend,
                rows_read=rows_in,
                rows_quarantined=quarantined_n,
                stream_query_id=query_id,
                batch_id=batch_id,
                checkpoint=self.stream.checkpoint,
                source=source_of(self.config),
                source_version_from=version_from,
            )
            clock.lap("plan")
            fault_point("stream-before-output-commit", batch=batch_id)
            written, committed, version = 0, False, None
            if "delta" in self.stream.sinks and out is not None:
                result = runner.commit_append(
                    out,
                    table,
                    key=self.config.input.key,
                    partition_by=self.config.output.partition_by,
                    txn=txn_for(query_id, batch_id),
                    metadata=record.to_commit_metadata(),
                )
                written, committed, version = result.rows_written, result.committed, result.version
            committed_at = time.time()
            clock.lap("score+commit")
            fault_point("stream-after-output-commit", batch=batch_id)
            if "kafka" in self.stream.sinks and out is not None:
                from scoring.adapters import kafka

                sink = self.stream.kafka_sink
                assert sink is not None
                kafka.write_records(out, self.stream.sink_servers, sink.topic, self._key)
                if "delta" not in self.stream.sinks:
                    written, committed = rows_in - quarantined_n, True
                committed_at = time.time()
            if unit.set_aside is not None:
                runner.commit_quarantine(
                    unit.set_aside, self.config.quarantine_table, quarantine_txn_for(query_id, batch_id)
                )
            if self.unregistered:
                self.unregistered = self.tables.register_new(self.spark, *self.unregistered)
            clock.lap("kafka+quarantine")
            fault_point("stream-after-quarantine-commit", batch=batch_id)

            lags = self._lags(rows, committed_at)
            clock.lap("lag")
            self._count(batch_id, model.version, rows_in, written, quarantined_n, committed, version, lags, started)
        finally:
            if unit is not None:
                unit.release(runner)
            runner.release(rows)

    def _count(self, batch_id, version_used, rows_in, written, quarantined_n, committed, version, lags, started):
        """Add a finished micro-batch to the query's counts, metrics and lags; report its line."""
        duration = time.monotonic() - started
        if self.metrics is not None:  # first: whoever watches the counts below then finds the metrics current
            self.metrics.batch(
                outcome="committed" if committed else "already-committed",
                rows_in=rows_in,
                rows_out=written if committed else 0,
                rows_quarantined=quarantined_n,
                duration_s=duration,
                lags_s=lags,
                model_version=version_used,
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
            + f", model v{version_used}"
            + ("" if committed else f" (already committed as version {version}: not written again)")
        )

    # -- the pieces -----------------------------------------------------------------------------------------------

    def _rows(self, df, batch_id: int):
        """The micro-batch's rows with the columns the job needs and where each came from; the Delta source
        version range the micro-batch read (None, None for Kafka)."""
        from scoring.adapters import spark as spark_glue

        features = self.active.model.features
        if self.stream.source == "kafka":
            from scoring.adapters import kafka

            assert self.stream.kafka is not None
            wanted = {name: self.stream.kafka.fields.get(name, "string") for name in self._passthrough}
            return kafka.parse_records(df, wanted, features), None, None
        version_from, version_to = stream_log.version_range(
            self.spark, self.stream.checkpoint, batch_id, self.config.input.table
        )
        needed = list(dict.fromkeys([*self._passthrough, *features]))
        if self.stream.event_time is not None:
            rows = spark_glue.with_event_time(df, needed, out=columns.EVENT_TIME, event_time=self.stream.event_time)
            return rows, version_from, version_to
        times = stream_log.commit_times(self.spark, self.config.input.table, version_from, version_to)
        rows = spark_glue.with_event_time(df, needed, out=columns.EVENT_TIME, file_times=times)
        return rows, version_from, version_to

    def _profile(self, rows, rule: WriteRule) -> tuple[int, int, int, int]:
        """One pass over the (cached) micro-batch: its rows, the Kafka records that cannot be parsed, the rows the
        output cannot take among the others (`rule`), and the rows with invalid features among the rest."""
        from scoring.adapters import spark as spark_glue

        valid = gates.valid_features(rows.schema, self.active.model.features)
        fits = gates.unwritable_reason(rule).isNull() if rule.can_fail else None  # None: every row
        parsed = None
        if self.stream.source == "kafka":
            from scoring.adapters import kafka

            parsed = kafka.bad_record_reason().isNull()
        n, counts = spark_glue.count_where(
            rows,
            {
                "unparseable": None if parsed is None else ~parsed,
                "unwritable": None if fits is None else _all(parsed, ~fits),
                "invalid": _all(parsed, fits, ~valid),
            },
        )
        return n, counts["unparseable"], counts["unwritable"], counts["invalid"]

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

    def _refuse_invalid(self, rows, n: int) -> None:
        """``input.on_invalid_rows: fail``: the micro-batch stops, naming the first row with an invalid feature."""
        valid = gates.valid_features(rows.schema, self.active.model.features)
        first = rows.where(~valid).limit(1).collect()[0]
        key = ", ".join(f"{k}={first[k]!r}" for k in self.config.input.key)
        raise InvalidRowsError(
            f"input: {n} row(s) of the micro-batch have null, NaN, infinite or out-of-range (beyond float32) "
            f"features, first at {key}",
            hint="set input.on_invalid_rows: skip to set such rows aside in the quarantine table and score the "
            "rest, or clean the source",
        )

    def _finish(self, scored, version_from: int | None):
        """The scored micro-batch in the output's column order: pass-through, predictions, lineage, then where the
        rows came from (the Delta source's version range, a Kafka record's place, the event time)."""
        from scoring.adapters import spark as spark_glue

        if self.stream.source == "delta":
            scored = spark_glue.with_long(scored, columns.SOURCE_VERSION_FROM, version_from)
        placed = {*self._passthrough, *_ORIGIN, *columns.LINEAGE, columns.SOURCE_VERSION_FROM}
        predictions = [c for c in scored.columns if c not in placed]
        ordered = [
            *self._passthrough,
            *predictions,
            *columns.LINEAGE,
            *[c for c in (columns.SOURCE_VERSION_FROM, *_ORIGIN) if c in scored.columns],
        ]
        return self.runner.project(scored, ordered)

    def _follow_alias(self, batch_id: int) -> None:
        """With ``stream.follow_alias``: re-resolve the alias at most every ``alias_check_interval_s``
        (:class:`scoring.engine.follow.AliasFollower`) and score this micro-batch with the version it points to."""
        if self._follower is None:
            return
        move = self._follower.check()
        if move is None:
            return
        self.active = move.opened
        self.versions.append(move.new_version)
        self.reporter.step(
            f"model {self.config.model.uri} now points to version {move.new_version} (was {move.old_version}): "
            f"scoring with version {move.new_version} from micro-batch {batch_id} on"
        )
        _LOGGER.warning(
            "model alias moved: %s version %s -> %s at micro-batch %d",
            self.config.model.uri,
            move.old_version,
            move.new_version,
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


def _known_failure(e: BaseException, config: JobConfig, spark) -> ScoringError | None:
    """`e` as a ScoringError when its cause is one that is not the user's data but known (a corrupt checkpoint
    file, a re-created source, files removed by VACUUM, a deleted Kafka topic); None otherwise."""
    from scoring.modes import stream_failures

    try:
        return stream_failures.translate(e, config, spark)
    except Exception:  # noqa: BLE001 - explaining a failure must never hide it
        _LOGGER.debug("could not explain %r", e, exc_info=True)
        return None
