"""`scoring bench-stream`: end-to-end lag and throughput of the streaming mode, measured from outside the engine.

A producer (a separate process) sends events at a fixed rate, each stamped with its send time; an independent reader
(another process) records when each row arrives at the sink; the figures come from joining the two by key, never from
the engine's own accounting (which is shown next to them for comparison).

Paths (``--path``, all by default):

- ``delta-delta``: the producer appends a small Delta commit (delta-rs) every `commit_interval_s` to an append-only
  source table, each row's ``event_time`` = the time its commit was sent; the stream reads it with
  ``stream.event_time`` and writes a Delta table.
- ``kafka-delta``: the producer sends one JSON record per event to a Kafka topic (the record's timestamp = its send
  time); the stream writes a Delta table.
- ``kafka-kafka``: Kafka to Kafka (``sinks: [kafka]``), micro-batch trigger with ``interval_s: 0`` unless
  ``--trigger`` says otherwise.

Arrival: for a Delta sink, the commit timestamp (``commitInfo.timestamp``, or ``inCommitTimestamp``) of the output
version whose files hold the row, read from the Delta log as soon as the version appears (the reader polls it every
20 ms; the poll time is kept too, as ``seen_*``); for a Kafka sink, the time the reader's consumer received the record.
Every produced key is checked: delivered, duplicated or missing. For a Delta sink the final table is also read with
delta-rs (``table_*``).

Each run (one path, one repetition) uses new tables, topics and checkpoint. Before the timed window, warm-up rows go
through the query (Spark's planning, Python worker start-up, the model load, the first Delta commit), which is then
stopped and restarted on the same checkpoint: the stream's own lag figures cover the timed window only.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import multiprocessing as mp
import os
import platform
import time
import uuid
from importlib.metadata import version
from pathlib import Path
from typing import Any

import numpy as np

from scoring.errors import ConfigError, ScoringError
from scoring.tools import bench_data, demo
from scoring.tools.bench_stream_clients import (
    _feature_pool,
    _producer_main,
    _ProducerSpec,
    _reader_main,
    _ReaderSpec,
    _source_rows,
    _source_schema,
)
from scoring.tools.bench_stream_paths import (
    AIMS,
    BATCH_ROWS,
    DEFAULT_COMMIT_INTERVAL_S,
    EVENT_TIME,
    KEY,
    N_FEATURES,
    PATHS,
    READER_POLL_S,
    TOPIC_PARTITIONS,
    WARMUP_KEY_BASE,
    WARMUP_ROWS,
    StreamPath,
    _Context,
    paths_for,
)
from scoring.tools.bench_stream_report import _figures, print_report, summarise

__all__ = [  # this module's own, and the paths' and report's public names it re-exports
    "AIMS",
    "BATCH_ROWS",
    "DEFAULT_COMMIT_INTERVAL_S",
    "EVENT_TIME",
    "KEY",
    "N_FEATURES",
    "PATHS",
    "READER_POLL_S",
    "TOPIC_PARTITIONS",
    "WARMUP_KEY_BASE",
    "WARMUP_ROWS",
    "StreamPath",
    "paths_for",
    "print_report",
    "run_bench_stream",
    "run_once",
    "summarise",
]


_LOGGER = logging.getLogger(__name__)


# -- one run ----------------------------------------------------------------------------------------------------------


class _QuietReporter:
    """The stream's progress lines go to the debug log (the bench shows its own progress)."""

    def step(self, message: str) -> None:
        _LOGGER.debug("%s", message)

    def tasks(self, label: str, done: int, total: int) -> None:
        pass

    def close(self) -> None:
        pass


def _job_tree(ctx: _Context, path: StreamPath, run_dir: Path, topics: dict[str, str]) -> dict:
    stream: dict[str, Any] = {
        "source": path.source,
        "checkpoint": str(run_dir / "checkpoint"),
        "trigger": path.trigger,
        "interval_s": path.interval_s,
        "sinks": [path.sink],
    }
    inputs: dict[str, Any] = {"key": KEY}
    if path.source == "delta":
        inputs["table"] = str(run_dir / "source")
        stream["event_time"] = EVENT_TIME
    else:
        stream["kafka"] = {
            "bootstrap_servers": ctx.bootstrap,
            "topic": topics["in"],
            "fields": {KEY: "long"},
            "starting_offsets": "earliest",
        }
    if path.sink == "kafka":
        stream["kafka_sink"] = {"bootstrap_servers": ctx.bootstrap, "topic": topics["out"]}
    return {
        "name": f"bench-stream-{path.name}",
        "input": inputs,
        "model": {"uri": ctx.model_uri, "tracking_uri": ctx.tracking_uri},
        "runtime": {"batch_rows": BATCH_ROWS},
        "output": {"table": str(run_dir / "out")},
        "stream": stream,
    }


def _warm_up(ctx: _Context, path: StreamPath, run_dir: Path, topics: dict[str, str]) -> None:
    """Warm-up rows into the source, all at once."""
    keys = np.arange(WARMUP_KEY_BASE, WARMUP_KEY_BASE + WARMUP_ROWS, dtype=np.int64)
    pool = _feature_pool()
    at = time.time()
    if path.source == "delta":
        demo.write_delta(run_dir / "source", _source_rows(pool, keys, 0, at), partition_by=(), mode="append")
        return
    from scoring.launchers import kafka_broker as kb

    names = demo.feature_names(N_FEATURES)
    records = (
        (str(k), json.dumps({KEY: int(k), **dict(zip(names, map(float, pool[i % len(pool)]), strict=True))}))
        for i, k in enumerate(keys)
    )
    assert ctx.bootstrap is not None
    kb.produce(ctx.bootstrap, topics["in"], records)


def _wait(condition, timeout_s: float, handle=None, what: str = "") -> bool:
    """Wait until `condition()` holds (True) or `timeout_s` passes (False); a query that ended raises its error."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return True
        if handle is not None and not handle.query.isActive:
            handle.close()  # raises the micro-batch's error, if any
            raise ScoringError(f"the stream query stopped while {what}")
        time.sleep(0.1)
    return condition()


def _progress_of(query) -> list[dict[str, Any]]:
    """The query's micro-batches that read rows, from Spark's own progress reports."""
    out = []
    for p in query.recentProgress:
        if not p.numInputRows:
            continue
        d = p.durationMs or {}
        out.append(
            {
                "batch_id": p.batchId,
                "rows": int(p.numInputRows),
                "trigger_ms": d.get("triggerExecution"),
                "add_batch_ms": d.get("addBatch"),
                "latest_offset_ms": d.get("latestOffset"),
                "get_batch_ms": d.get("getBatch"),
                "query_planning_ms": d.get("queryPlanning"),
                "wal_commit_ms": d.get("walCommit"),
                "commit_offsets_ms": d.get("commitOffsets"),
                "timestamp": p.timestamp,
            }
        )
    return out


def run_once(ctx: _Context, path: StreamPath, repetition: int, on_phase=None) -> dict[str, Any]:
    """One timed run of `path`: set up, warm up, restart, produce for ``duration_s``, drain, stop; the figures."""
    from scoring import build_job_config
    from scoring.launchers import kafka_broker as kb
    from scoring.modes import stream

    on_phase = on_phase or (lambda text: None)
    run_dir = ctx.workdir / f"{path.name}-{repetition}-{uuid.uuid4().hex[:8]}"
    run_dir.mkdir(parents=True)
    topics: dict[str, str] = {}
    if "kafka" in (path.source, path.sink):
        if ctx.bootstrap is None:
            raise ConfigError(f"path {path.name} needs a Kafka broker")
        for role in ("in", "out"):
            if (role == "in" and path.source == "kafka") or (role == "out" and path.sink == "kafka"):
                topics[role] = f"bench-stream-{path.name}-{role}-{run_dir.name}"
                kb.create_topic(ctx.bootstrap, topics[role], TOPIC_PARTITIONS)
    if path.source == "delta":
        import pyarrow as pa

        demo.write_delta(run_dir / "source", pa.Table.from_pylist([], schema=_source_schema()), partition_by=())
    config = build_job_config(_job_tree(ctx, path, run_dir, topics), source=f"bench-stream {path.name}")

    spawn = mp.get_context("spawn")
    warm_seen, timed_seen = spawn.Value("q", 0), spawn.Value("q", 0)
    reader_ready, reader_stop = spawn.Event(), spawn.Event()
    sink_target = topics["out"] if path.sink == "kafka" else str(run_dir / "out")
    horizon = ctx.warmup_timeout_s + ctx.duration_s + ctx.drain_s + 300
    reader_spec = _ReaderSpec(
        path.sink,
        sink_target,
        ctx.bootstrap,
        TOPIC_PARTITIONS,
        str(run_dir / "arrivals.npz"),
        time.time() + horizon,
        os.getpid(),
    )
    reader = spawn.Process(
        target=_reader_main,
        args=(reader_spec, reader_ready, reader_stop, warm_seen, timed_seen),
        name="bench-stream-reader",
        daemon=True,
    )
    producer_ready, producer_go = spawn.Event(), spawn.Event()
    producer_spec = _ProducerSpec(
        path.source,
        topics["in"] if path.source == "kafka" else str(run_dir / "source"),
        ctx.bootstrap,
        ctx.rate,
        ctx.duration_s,
        0,
        str(run_dir / "sent.npz"),
        ctx.commit_interval_s,
        os.getpid(),
    )
    producer = spawn.Process(
        target=_producer_main, args=(producer_spec, producer_ready, producer_go), name="bench-stream-producer"
    )
    producer.daemon = True
    reporter = _QuietReporter()
    handle = None
    load_before = os.getloadavg()[0]
    phases: dict[str, float] = {}
    try:
        reader.start()
        producer.start()  # both start up (imports, connections) while the query starts

        on_phase("warm-up")
        clock = time.monotonic()
        handle = stream.start(config, spark=ctx.spark, reporter=reporter)
        _warm_up(ctx, path, run_dir, topics)
        if not reader_ready.wait(60):
            raise ScoringError("the bench's reader process did not start within 60 s")
        if not _wait(lambda: warm_seen.value >= WARMUP_ROWS, ctx.warmup_timeout_s, handle, "warming up"):
            raise ScoringError(
                f"{path.name}: the {WARMUP_ROWS:,} warm-up rows did not reach the sink within "
                f"{ctx.warmup_timeout_s:g} s (seen {warm_seen.value:,})"
            )
        handle.close()  # after Spark recorded the warm-up's micro-batches in the checkpoint: no replay
        handle = None
        phases["warm_up_s"] = time.monotonic() - clock

        on_phase("restart")
        clock = time.monotonic()
        handle = stream.start(config, spark=ctx.spark, reporter=reporter)  # same checkpoint: resumes
        if not producer_ready.wait(60):
            raise ScoringError("the bench's producer process did not start within 60 s")
        phases["restart_s"] = time.monotonic() - clock
        on_phase("producing")
        producer_go.set()
        clock = time.monotonic()
        total = int(round(ctx.rate * ctx.duration_s))
        while producer.is_alive():
            producer.join(0.5)
            if not handle.query.isActive:
                handle.close()
                raise ScoringError(f"{path.name}: the stream query stopped while events were produced")
            on_phase(
                f"producing: {time.monotonic() - clock:.0f}/{ctx.duration_s:g} s, "
                f"{timed_seen.value:,}/{total:,} delivered"
            )
        if producer.exitcode != 0:
            raise ScoringError(f"{path.name}: the producer process failed (exit code {producer.exitcode})")
        phases["produce_s"] = time.monotonic() - clock
        sent_log = np.load(run_dir / "sent.npz")
        produced = len(sent_log["keys"])
        on_phase("draining")
        clock = time.monotonic()
        _wait(lambda: timed_seen.value >= produced, ctx.drain_s, handle, "draining")
        phases["drain_s"] = time.monotonic() - clock
        query = handle.query
        record = handle.close()  # after the micro-batch in progress, once Spark has reported it
        batches = _progress_of(query)
        load_after = os.getloadavg()[0]
        handle = None
    finally:
        if handle is not None:
            try:
                handle.close()
            except Exception:  # noqa: BLE001 - the first error is the one to show
                _LOGGER.warning("closing the stream query after a failure failed too", exc_info=True)
        if not producer_go.is_set() and producer.is_alive():  # a failure before the timed window: nothing to send
            producer.kill()
        reader_stop.set()
        for proc in (producer, reader):
            if proc.pid is None:  # never started
                continue
            proc.join(30)
            if proc.is_alive():
                proc.kill()
                proc.join(5)
    arrivals = np.load(run_dir / "arrivals.npz")
    table_keys = _table_keys(run_dir / "out") if path.sink == "delta" else None
    figures = _figures(path, sent_log, arrivals, table_keys, record, batches, ctx)
    figures["load_avg_1m"] = [round(load_before, 2), round(load_after, 2)]
    figures["phases_s"] = {k: round(v, 1) for k, v in phases.items()}
    return figures


def _table_keys(table: Path) -> np.ndarray:
    """The output table's keys, read with delta-rs (an independent reader)."""
    from scoring.adapters import deltalog

    keys = deltalog.read(str(table), [KEY], key="output.table")
    return np.empty(0, dtype=np.int64) if keys is None else keys.column(0).to_numpy()


# -- the benchmark ------------------------------------------------------------------------------------------------


def _session():
    from scoring.adapters.spark import get_session, kafka_package

    spark = get_session(
        None,
        {
            "spark.jars.packages": kafka_package(),
            "spark.sql.shuffle.partitions": "1",
            "spark.sql.execution.arrow.maxRecordsPerBatch": str(BATCH_ROWS),
        },
        app_name="scoring-bench-stream",
    )
    spark.sparkContext.setLogLevel("ERROR")
    return spark


def run_bench_stream(
    *,
    rate: float = 10_000,
    duration_s: float = 60.0,
    repeat: int = 1,
    paths: list[StreamPath] | None = None,
    output: Path | None = Path("bench-stream-results.json"),
    workdir: Path = Path(".bench/stream"),
    commit_interval_s: float = DEFAULT_COMMIT_INTERVAL_S,
    drain_s: float | None = None,
    warmup_timeout_s: float = 180.0,
    spark=None,
    bootstrap: str | None = None,
    console=None,
) -> dict[str, Any]:
    """Run every path `repeat` times (interleaved), print the tables on `console` (if given), write `output` (if
    given) and return the report. `spark` and `bootstrap` reuse a running session and Kafka broker; by default a
    session is started, and a broker in ``<workdir>/kafka`` (stopped at the end)."""
    from rich.progress import Progress

    from scoring.launchers import kafka_broker as kb

    if rate <= 0 or duration_s <= 0 or repeat < 1:
        raise ConfigError("--rate and --duration-s must be positive and --repeat at least 1")
    paths = paths if paths is not None else paths_for(None)
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")
    workdir = workdir.resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    ref = bench_data._register_models(workdir, ["tiny"])["tiny"]
    spark = spark or _session()
    spark.conf.set("spark.sql.streaming.numRecentProgressUpdates", "100000")
    broker = None
    if bootstrap is None and any("kafka" in (p.source, p.sink) for p in paths):
        broker = kb.Broker(workdir / "kafka").start(timeout_s=120)
        bootstrap = broker.bootstrap
    ctx = _Context(
        spark=spark,
        bootstrap=bootstrap,
        model_uri=ref.uri,
        tracking_uri=demo.tracking_uri_for(workdir),
        workdir=workdir / "runs",
        rate=float(rate),
        duration_s=float(duration_s),
        commit_interval_s=commit_interval_s,
        drain_s=drain_s if drain_s is not None else max(30.0, duration_s),
        warmup_timeout_s=warmup_timeout_s,
    )
    runs: dict[str, list[dict[str, Any]]] = {p.name: [] for p in paths}
    try:
        with Progress(console=console, transient=True, disable=console is None) as progress:
            task = progress.add_task("bench-stream", total=len(paths) * repeat)
            for i in range(repeat):  # interleaved, so drift in the machine's speed hits every path alike
                for path in paths:

                    def phase(text: str, path=path, i=i) -> None:
                        progress.update(task, description=f"{path.name} ({i + 1}/{repeat}): {text}")

                    try:
                        runs[path.name].append(run_once(ctx, path, i, phase))
                    except ScoringError as e:  # one path failing (e.g. a trigger not offered) leaves the others
                        _LOGGER.warning("bench-stream %s (run %d) failed: %s", path.name, i + 1, e)
                        runs[path.name].append({"path": path.name, "trigger": path.trigger, "error": str(e)})
                    progress.advance(task)
    finally:
        if broker is not None:
            broker.stop()
    report = {
        "rate": rate,
        "duration_s": duration_s,
        "repeat": repeat,
        "features": N_FEATURES,
        "warmup_rows": WARMUP_ROWS,
        "commit_interval_s": commit_interval_s,
        "topic_partitions": TOPIC_PARTITIONS,
        "model": ref.uri,
        "cores": os.cpu_count(),
        "machine": platform.machine(),
        "spark_master": spark.sparkContext.master,
        "versions": {p: version(p) for p in ("pyspark", "delta-spark", "deltalake", "confluent-kafka", "onnxruntime")},
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "arrival": {
            "delta": "commit timestamp of the output version holding the row (Delta log commitInfo), read by polling "
            f"the log every {READER_POLL_S * 1000:.0f} ms; seen_* is the poll time",
            "kafka": "receive time of the record at an independent confluent-kafka consumer",
        },
        "paths": {name: {"runs": r, **summarise(r)} for name, r in runs.items()},
    }
    if output is not None:
        output.write_text(json.dumps(report, indent=2, default=str))
    if console is not None:
        print_report(console, report)
    return report
