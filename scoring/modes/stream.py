"""The streaming job: a Structured Streaming query that scores each micro-batch with the shared engine and commits it
exactly once.

This mode owns its source (an append-only Delta table read as a stream, or a Kafka topic), its sinks (the output
Delta table, and optionally a Kafka topic) and its transaction identity: ``(scoring-stream:<query id>, <batch id>)``,
where the query id is the one Spark keeps in the checkpoint. Everything between comes from :mod:`scoring.engine`: the
unit of work (:func:`scoring.engine.unit.score_unit`: the feature checks, the gates, the probe, the lineage), the model
resolved once (or followed, with ``stream.follow_alias``) and the predictor; a runner
(:class:`scoring.runners.spark.SparkRunner`) holds the rows and commits them.

The query is started, watched and summed up here; each micro-batch is scored and committed by
:class:`scoring.modes.stream_batch.MicroBatchScorer`; the checkpoint and the source's log are read by
:mod:`scoring.modes.stream_log`; why a query stopped is put in words by :mod:`scoring.modes.stream_failures`.

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
import json
import logging
import threading
import time
from typing import Any

import numpy as np

from scoring.adapters import catalog, delta
from scoring.config import JobConfig
from scoring.engine import checks
from scoring.engine.model import PreparedModel, prepare_model
from scoring.engine.progress import LogReporter, Reporter
from scoring.engine.record import StreamRecord
from scoring.engine.runtime import open_predictor
from scoring.errors import ConfigError, InputError, ScoringError, from_spark_exception
from scoring.modes import stream_batch as micro
from scoring.modes.stream_batch import (  # noqa: F401 - the micro-batch's identities, importable from here as before
    MicroBatchScorer,
    quarantine_txn_for,
    run_id_for,
    same_source,
    source_of,
    txn_for,
)
from scoring.runners.spark import session_for, translate_error

_LOGGER = logging.getLogger(__name__)


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
    if delta.latest_version(spark, config.output.table) is None:
        return None
    source = source_of(config)
    for text in delta.recent_user_metadata(spark, config.output.table, 500):
        try:
            meta = json.loads(text or "{}")
        except ValueError:
            continue
        if (
            isinstance(meta, dict)
            and meta.get("mode") == "stream"
            and same_source(meta.get("source"), source)
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
        return not isinstance(error, ScoringError | micro._Stopping)


_PY4J_FILTER = _OwnErrorsOnly()


def _translate(e: Exception, config: JobConfig | None = None, spark=None) -> Exception:
    """A failed query's (or start's) exception as the ScoringError that names its cause and the way to recover, when
    the cause is known (:func:`scoring.runners.spark.translate_error`, then :mod:`scoring.modes.stream_failures`);
    else `e` itself."""
    return translate_error(e, lambda error: micro._known_failure(error, config, spark) if config is not None else None)


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
    spark = spark or session_for(config, stream=True)
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
        scorer = MicroBatchScorer(config, spark, micro._Active(model, predictor_spec), open_spec, reporter, metrics)
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
