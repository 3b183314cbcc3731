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

import dataclasses
import datetime as dt
import json
import logging
import multiprocessing as mp
import os
import platform
import statistics
import time
import uuid
from importlib.metadata import version
from pathlib import Path
from typing import Any

import numpy as np

from scoring.errors import ConfigError, ScoringError
from scoring.tools import bench, demo

_LOGGER = logging.getLogger(__name__)

N_FEATURES = bench.N_FEATURES
KEY = "customer_id"
EVENT_TIME = "event_time"
WARMUP_KEY_BASE = 1 << 40
"""Warm-up rows have keys from here on; the timed window's keys start at 0."""
WARMUP_ROWS = 1_000
TOPIC_PARTITIONS = 2
"""Partitions of the input and output topics: one Spark task per core."""
READER_POLL_S = 0.02
DEFAULT_COMMIT_INTERVAL_S = 0.1
BATCH_ROWS = 10_000
AIMS = {"kafka-delta": ("lag_p95_s", 2.0), "kafka-kafka": ("lag_p99_s", 0.1)}
"""What we aim for on a 2-core machine (reported against, never asserted): path -> (figure, seconds)."""


@dataclasses.dataclass(frozen=True)
class StreamPath:
    """One way through the streaming mode: where events come from, where scores go, and the trigger."""

    name: str
    source: str
    """``delta`` or ``kafka``"""
    sink: str
    """``delta`` or ``kafka``"""
    trigger: str = "micro-batch"
    interval_s: float = 0.0


PATHS: dict[str, StreamPath] = {
    "delta-delta": StreamPath("delta-delta", "delta", "delta"),
    "kafka-delta": StreamPath("kafka-delta", "kafka", "delta"),
    "kafka-kafka": StreamPath("kafka-kafka", "kafka", "kafka"),
}


def paths_for(names: list[str] | None, trigger: str | None = None, interval_s: float = 0.0) -> list[StreamPath]:
    """The chosen paths (all by default). `trigger` applies to the Kafka -> Kafka path (the only one Spark's Real-time
    Mode could run); the Delta paths keep the micro-batch trigger. `interval_s` applies to every micro-batch path."""
    chosen = names or list(PATHS)
    unknown = [n for n in chosen if n not in PATHS]
    if unknown:
        raise ConfigError(f"--path {unknown}: choose from {list(PATHS)}")
    out = []
    for name in dict.fromkeys(chosen):
        path = dataclasses.replace(PATHS[name], interval_s=interval_s)
        if trigger is not None and path.name == "kafka-kafka":
            path = dataclasses.replace(path, trigger=trigger)
        out.append(path)
    return out


# -- the producer (a process of its own) ----------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class _ProducerSpec:
    kind: str
    """``delta`` (append commits to `target`, a table path) or ``kafka`` (records to `target`, a topic)"""
    target: str
    bootstrap: str | None
    rate: float
    duration_s: float
    first_key: int
    log_path: str
    commit_interval_s: float
    parent_pid: int


def _feature_pool(rows: int = 4_096, seed: int = 5) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((rows, N_FEATURES)).astype(np.float32)


def _producer_main(spec: _ProducerSpec, ready, go) -> None:
    """Send ``rate * duration_s`` events at `rate`, stamping each with its send time; write keys and send times to
    ``spec.log_path`` (npz). Starts timing when `go` is set, after its set-up (imports, connections)."""
    pool = _feature_pool()
    total = int(round(spec.rate * spec.duration_s))
    keys = np.arange(spec.first_key, spec.first_key + total, dtype=np.int64)
    sent = np.zeros(total, dtype=np.float64)
    send = _kafka_sender(spec, pool, keys, sent) if spec.kind == "kafka" else _delta_sender(spec, pool, keys, sent)
    ready.set()
    if not go.wait(600):
        return
    started = time.time()
    behind_max = send(total, started)
    np.savez(spec.log_path, keys=keys, sent=sent, started=started, ended=time.time(), behind_max_s=behind_max)


def _kafka_sender(spec: _ProducerSpec, pool: np.ndarray, keys: np.ndarray, sent: np.ndarray):
    from confluent_kafka import Producer

    producer = Producer(
        {
            "bootstrap.servers": spec.bootstrap,
            "linger.ms": 1,
            "acks": "all",
            "queue.buffering.max.messages": 1_000_000,
        }
    )
    fields = ",".join(f'"{n}":%r' for n in demo.feature_names(N_FEATURES))
    rows = [fields % tuple(float(v) for v in row) for row in pool]
    template = '{"' + KEY + '":%d,"sent_at_us":%d,%s}'
    errors: list[Any] = []

    def delivered(error, _message) -> None:
        if error is not None:
            errors.append(error)

    def send(total: int, started: float) -> float:
        done, behind_max = 0, 0.0
        while done < total:
            now = time.time()
            due = min(total, int((now - started) * spec.rate) + 1)
            behind_max = max(behind_max, (due - done) / spec.rate)
            for i in range(done, due):
                at = time.time()
                key = int(keys[i])
                value = template % (key, int(at * 1e6), rows[i % len(rows)])
                while True:
                    try:
                        producer.produce(
                            spec.target, value=value, key=str(key), timestamp=int(at * 1000), on_delivery=delivered
                        )
                        break
                    except BufferError:
                        producer.poll(0.005)
                sent[i] = at
            done = due
            producer.poll(0)
            if os.getppid() != spec.parent_pid:
                return behind_max
            wait = started + done / spec.rate - time.time()
            if wait > 0:
                time.sleep(min(wait, 0.005))
        left = producer.flush(60)
        if errors or left:
            raise RuntimeError(f"Kafka producer: {len(errors)} delivery errors ({errors[:3]}), {left} not flushed")
        return behind_max

    return send


def _source_schema():
    import pyarrow as pa

    return pa.schema(
        [
            (KEY, pa.int64()),
            *[(n, pa.float32()) for n in demo.feature_names(N_FEATURES)],
            (EVENT_TIME, pa.timestamp("us", tz="UTC")),
        ]
    )


def _source_rows(pool: np.ndarray, keys: np.ndarray, first: int, at: float):
    import pyarrow as pa

    schema = _source_schema()
    index = np.arange(first, first + len(keys)) % len(pool)
    arrays = [pa.array(keys, pa.int64())]
    arrays += [pa.array(pool[index, j]) for j in range(N_FEATURES)]
    arrays.append(pa.array(np.full(len(keys), int(at * 1e6), dtype=np.int64), pa.timestamp("us", tz="UTC")))
    return pa.Table.from_arrays(arrays, schema=schema)


def _delta_sender(spec: _ProducerSpec, pool: np.ndarray, keys: np.ndarray, sent: np.ndarray):
    def send(total: int, started: float) -> float:
        done, behind_max = 0, 0.0
        next_commit = started + spec.commit_interval_s
        while done < total:
            wait = next_commit - time.time()
            if wait > 0:
                time.sleep(wait)
            at = time.time()
            due = min(total, int((at - started) * spec.rate))
            if due > done:
                demo.write_delta(
                    spec.target, _source_rows(pool, keys[done:due], done, at), partition_by=(), mode="append"
                )
                sent[done:due] = at
                done = due
            behind_max = max(behind_max, time.time() - next_commit)
            next_commit = max(next_commit + spec.commit_interval_s, time.time())
            if os.getppid() != spec.parent_pid:
                break
        return behind_max

    return send


# -- the reader (a process of its own) ------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class _ReaderSpec:
    kind: str
    """``delta`` (poll the Delta log of `target`, a table path) or ``kafka`` (consume `target`, a topic)"""
    target: str
    bootstrap: str | None
    partitions: int
    log_path: str
    deadline: float
    """Epoch seconds after which the reader gives up, whatever happens (it never outlives a crashed bench)."""
    parent_pid: int


def _reader_main(spec: _ReaderSpec, ready, stop, warm_seen, timed_seen) -> None:
    """Record every row arriving at the sink: key, arrival time (and, for Delta, the poll time and the version);
    write them to ``spec.log_path`` (npz) once `stop` is set and nothing new came for a moment."""
    parts: dict[str, list[np.ndarray]] = {"keys": [], "arrived": [], "seen": [], "version": []}

    def record(keys: np.ndarray, arrived: float, seen: float, version: int) -> None:
        n = len(keys)
        parts["keys"].append(keys)
        parts["arrived"].append(np.full(n, arrived))
        parts["seen"].append(np.full(n, seen))
        parts["version"].append(np.full(n, version, dtype=np.int64))
        warm = int(np.count_nonzero(keys >= WARMUP_KEY_BASE))
        with warm_seen.get_lock():
            warm_seen.value += warm
        with timed_seen.get_lock():
            timed_seen.value += n - warm

    poll = _kafka_poller(spec) if spec.kind == "kafka" else _delta_poller(spec)
    ready.set()
    idle_since = None
    try:
        while time.time() < spec.deadline and os.getppid() == spec.parent_pid:
            got = poll(record)
            if got:
                idle_since = None
                continue
            if stop.is_set():
                idle_since = idle_since or time.monotonic()
                if time.monotonic() - idle_since >= 1.0:
                    break
            time.sleep(READER_POLL_S if spec.kind == "delta" else 0)
    finally:
        out = {k: np.concatenate(v) if v else np.empty(0) for k, v in parts.items()}
        np.savez(spec.log_path, **out)


def _kafka_poller(spec: _ReaderSpec):
    from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

    consumer = Consumer(
        {
            "bootstrap.servers": spec.bootstrap,
            "group.id": f"bench-stream-reader-{uuid.uuid4().hex}",
            "enable.auto.commit": False,
            "fetch.wait.max.ms": 10,
        }
    )
    consumer.assign([TopicPartition(spec.target, p, OFFSET_BEGINNING) for p in range(spec.partitions)])

    def poll(record) -> bool:
        messages = consumer.consume(num_messages=10_000, timeout=0.05)
        at = time.time()
        keys = [int(m.key()) for m in messages if m.error() is None and m.key() is not None]
        if keys:
            record(np.array(keys, dtype=np.int64), at, at, -1)
        return bool(messages)

    return poll


def _delta_poller(spec: _ReaderSpec):
    import pyarrow.parquet as pq

    from scoring.adapters import deltalog

    table = Path(spec.target)
    state = {"version": 0}

    def poll(record) -> bool:
        v = state["version"]
        log = table / "_delta_log" / f"{v:020d}.json"
        try:
            text = log.read_text()
        except FileNotFoundError:
            return False
        seen = time.time()
        committed, files = deltalog.commit_summary(text)
        arrived = committed / 1000 if committed is not None else seen
        for name in files:
            keys = pq.read_table(table / name, columns=[KEY]).column(0).to_numpy()
            record(keys.astype(np.int64), arrived, seen, v)
        state["version"] = v + 1
        return True

    return poll


# -- one run ----------------------------------------------------------------------------------------------------------


class _QuietReporter:
    """The stream's progress lines go to the debug log (the bench shows its own progress)."""

    def step(self, message: str) -> None:
        _LOGGER.debug("%s", message)

    def tasks(self, label: str, done: int, total: int) -> None:
        pass

    def close(self) -> None:
        pass


@dataclasses.dataclass
class _Context:
    spark: Any
    bootstrap: str | None
    model_uri: str
    tracking_uri: str
    workdir: Path
    rate: float
    duration_s: float
    commit_interval_s: float
    drain_s: float
    warmup_timeout_s: float


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


# -- figures ----------------------------------------------------------------------------------------------------------


def _quantiles(values: np.ndarray, prefix: str) -> dict[str, float | None]:
    names = ("p50", "p95", "p99", "max")
    if not len(values):
        return {f"{prefix}_{n}_s": None for n in names}
    qs = np.percentile(values, [50, 95, 99, 100])
    return {f"{prefix}_{n}_s": round(float(q), 4) for n, q in zip(names, qs, strict=True)}


def _ms(values: list[float | None]) -> dict[str, float | None]:
    got = [v for v in values if v is not None]
    if not got:
        return {"p50": None, "p95": None, "max": None}
    p50, p95 = np.percentile(got, [50, 95])
    return {"p50": round(float(p50), 1), "p95": round(float(p95), 1), "max": float(max(got))}


def _figures(path, sent_log, arrivals, table_keys, record, batches, ctx: _Context) -> dict[str, Any]:
    keys, sent = sent_log["keys"], sent_log["sent"]
    got_keys, arrived, seen = arrivals["keys"], arrivals["arrived"], arrivals["seen"]
    timed = got_keys < WARMUP_KEY_BASE
    got_keys, arrived, seen = got_keys[timed], arrived[timed], seen[timed]
    produced = len(keys)
    # first arrival of each key
    order = np.lexsort((arrived, got_keys))
    unique_keys, first = np.unique(got_keys[order], return_index=True)
    first_arrived, first_seen = arrived[order][first], seen[order][first]
    known = np.isin(unique_keys, keys)
    index = np.searchsorted(keys, unique_keys[known])  # keys are sorted (0, 1, 2, ...)
    lags = first_arrived[known] - sent[index]
    seen_lags = first_seen[known] - sent[index]
    delivered = int(known.sum())
    elapsed = float(first_arrived[known].max() - sent.min()) if delivered else 0.0
    producer_span = float(sent.max() - sent.min()) if produced > 1 else 0.0

    out: dict[str, Any] = {
        "path": path.name,
        "source": path.source,
        "sink": path.sink,
        "trigger": path.trigger,
        "interval_s": path.interval_s,
        "rate": ctx.rate,
        "duration_s": ctx.duration_s,
        "produced": produced,
        "producer_rate": round(produced / producer_span) if producer_span else None,
        "producer_behind_max_s": round(float(sent_log["behind_max_s"]), 3),
        "delivered": delivered,
        "duplicates": int(len(got_keys) - len(unique_keys)),
        "missing": produced - delivered,
        "unexpected": int((~known).sum()),
        "throughput_rows_per_s": round(delivered / elapsed) if elapsed > 0 else None,
        "arrival": "output commit timestamp (Delta log)" if path.sink == "delta" else "consumer receive time",
        **_quantiles(lags, "lag"),
        "seen_lag_p95_s": _quantiles(seen_lags, "seen")["seen_p95_s"] if path.sink == "delta" else None,
    }
    if len(lags) >= 8:  # does the stream keep up? lag at the start and at the end of the window
        by_send = np.argsort(sent[index])
        quarter = len(by_send) // 4
        out["lag_p50_first_quarter_s"] = round(float(np.median(lags[by_send[:quarter]])), 4)
        out["lag_p50_last_quarter_s"] = round(float(np.median(lags[by_send[-quarter:]])), 4)
    if table_keys is not None:
        table_timed = table_keys[table_keys < WARMUP_KEY_BASE]
        table_unique = np.unique(table_timed)
        out["table_rows"] = int(len(table_timed))
        out["table_duplicates"] = int(len(table_timed) - len(table_unique))
        out["table_missing"] = int(produced - np.isin(keys, table_unique).sum())
    out.update(
        {
            "stream_lag_p50_s": record.lag_p50_s,
            "stream_lag_p95_s": record.lag_p95_s,
            "stream_lag_p99_s": record.lag_p99_s,
            "stream_lag_max_s": record.lag_max_s,
            "stream_rows_in": record.rows_in,
            "stream_batches": record.batches,
            "stream_phase_s": dict(getattr(record, "batch_timings_s", {}) or {}),
        }
    )
    trigger = _ms([b["trigger_ms"] for b in batches])
    add = _ms([b["add_batch_ms"] for b in batches])
    overhead = _ms(
        [
            b["trigger_ms"] - b["add_batch_ms"]
            for b in batches
            if b["trigger_ms"] is not None and b["add_batch_ms"] is not None
        ]
    )
    rows = [b["rows"] for b in batches]
    out.update(
        {
            "batches": len(batches),
            "batch_rows_p50": round(statistics.median(rows)) if rows else None,
            "batch_ms_p50": trigger["p50"],
            "batch_ms_p95": trigger["p95"],
            "batch_ms_max": trigger["max"],
            "add_batch_ms_p50": add["p50"],
            "add_batch_ms_p95": add["p95"],
            "overhead_ms_p50": overhead["p50"],
            "overhead_ms_p95": overhead["p95"],
            "overhead_parts_ms_p50": {
                part: _ms([b[f"{part}_ms"] for b in batches])["p50"]
                for part in ("latest_offset", "get_batch", "query_planning", "wal_commit", "commit_offsets")
            },
            "micro_batches": batches,
        }
    )
    return out


_SUMMARISED = (
    "produced",
    "producer_rate",
    "delivered",
    "duplicates",
    "missing",
    "throughput_rows_per_s",
    "lag_p50_s",
    "lag_p95_s",
    "lag_p99_s",
    "lag_max_s",
    "seen_lag_p95_s",
    "stream_lag_p50_s",
    "stream_lag_p95_s",
    "stream_lag_p99_s",
    "stream_lag_max_s",
    "batches",
    "batch_rows_p50",
    "batch_ms_p50",
    "batch_ms_p95",
    "add_batch_ms_p50",
    "overhead_ms_p50",
    "lag_p50_first_quarter_s",
    "lag_p50_last_quarter_s",
)


def summarise(runs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Median, min and max of each figure across repetitions (and the median of each of the stream's phases)."""
    out: dict[str, dict[str, Any]] = {"median": {}, "min": {}, "max": {}}
    for name in _SUMMARISED:
        values = [r[name] for r in runs if r.get(name) is not None]
        out["median"][name] = statistics.median(values) if values else None
        out["min"][name] = min(values) if values else None
        out["max"][name] = max(values) if values else None
    out["failed"] = [r["error"] for r in runs if "error" in r]
    phases = dict.fromkeys(p for r in runs for p in r.get("stream_phase_s", {}))
    out["median"]["stream_phase_s"] = {
        p: round(statistics.median([r["stream_phase_s"][p] for r in runs if p in r.get("stream_phase_s", {})]), 3)
        for p in phases
    }
    return out


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
    ref = bench._register_models(workdir, ["tiny"])["tiny"]
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


def _cell(summary: dict, name: str, fmt: str, scale: float = 1.0, repeat: int = 1) -> str:
    value = summary["median"].get(name)
    if value is None:
        return "-"
    text = format(value * scale, fmt)
    if repeat > 1 and summary["min"].get(name) is not None:
        low, high = format(summary["min"][name] * scale, fmt), format(summary["max"][name] * scale, fmt)
        if low != high:
            text += f" ({low}-{high})"
    return text


def print_report(console, report: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    if not console.is_terminal:  # a file or a pipe: do not squeeze the tables into 80 columns
        console = Console(file=console.file, width=200)
    repeat = report["repeat"]
    spread = ", medians (min-max)" if repeat > 1 else ""
    lag = Table(
        title=f"end-to-end: {report['rate']:,.0f} events/s x {report['duration_s']:g} s, {report['features']} "
        f"features, {repeat} run(s) per path{spread}, {report['cores']} cores"
    )
    for col in (
        "path",
        "trigger",
        "produced",
        "ev/s sent",
        "delivered",
        "dup",
        "missing",
        "rows/s",
        "lag p50 ms",
        "p95 ms",
        "p99 ms",
        "max ms",
        "stream's own p50/p95/p99 ms",
    ):
        lag.add_column(col, justify="left" if col in ("path", "trigger") else "right")
    batch = Table(
        title="where a micro-batch's time goes (Spark's progress reports: triggerExecution = addBatch + overhead)"
    )
    for col in (
        "path",
        "batches",
        "rows/batch",
        "batch ms p50",
        "p95",
        "addBatch (score+write) p50",
        "overhead p50",
        "lag p50 1st->4th quarter ms",
        "load avg 1m",
    ):
        batch.add_column(col, justify="left" if col == "path" else "right")
    for name, p in report["paths"].items():
        ok = [r for r in p["runs"] if "error" not in r]
        if not ok:
            lag.add_row(name, p["runs"][0]["trigger"], "failed", *[""] * 10)
            continue
        first = ok[0]

        def c(key: str, fmt: str = ",.0f", scale: float = 1.0, p=p) -> str:
            return _cell(p, key, fmt, scale, repeat)

        own = "/".join(_cell(p, f"stream_lag_{q}_s", ",.0f", 1000, 1) for q in ("p50", "p95", "p99"))
        lag.add_row(
            name,
            first["trigger"] + (f" {first['interval_s']:g} s" if first["trigger"] == "micro-batch" else ""),
            c("produced"),
            _cell(p, "producer_rate", ",.0f"),
            c("delivered"),
            c("duplicates"),
            c("missing"),
            _cell(p, "throughput_rows_per_s", ",.0f"),
            c("lag_p50_s", scale=1000),
            c("lag_p95_s", scale=1000),
            c("lag_p99_s", scale=1000),
            c("lag_max_s", scale=1000),
            own,
        )
        quarters = (
            f"{_cell(p, 'lag_p50_first_quarter_s', ',.0f', 1000, 1)} -> "
            f"{_cell(p, 'lag_p50_last_quarter_s', ',.0f', 1000, 1)}"
        )
        batch.add_row(
            name,
            c("batches"),
            c("batch_rows_p50"),
            c("batch_ms_p50"),
            c("batch_ms_p95"),
            c("add_batch_ms_p50"),
            c("overhead_ms_p50"),
            quarters,
            f"{min(min(r['load_avg_1m']) for r in ok):.1f}-{max(max(r['load_avg_1m']) for r in ok):.1f}",
        )
    console.print(lag)
    console.print(batch)
    for name, p in report["paths"].items():
        for error in dict.fromkeys(p["failed"]):
            console.print(f"{name} failed: {error}", highlight=False, markup=False)
        phases = p["median"].get("stream_phase_s") or {}
        if phases:
            console.print(
                f"{name}: the stream's own split of a micro-batch (mean s): "
                + ", ".join(f"{k} {v:.2f}" for k, v in phases.items()),
                highlight=False,
            )
    console.print(
        "lag = arrival - send time per key; arrival: Delta sink = the output commit's timestamp in the Delta log, "
        "Kafka sink = receive time at an independent consumer. The stream's own lag runs from the event time to "
        "just after its commit (timed window only).",
        highlight=False,
    )
    for name, (figure, limit) in AIMS.items():
        if name in report["paths"]:
            value = report["paths"][name]["median"].get(figure)
            verdict = "-" if value is None else ("met" if value < limit else "not met")
            shown = "-" if value is None else f"{value * 1000:,.0f} ms"
            console.print(
                f"aim {name}: {figure.replace('_s', '').replace('lag_', 'lag ')} under {limit * 1000:,.0f} ms: "
                f"{shown} ({verdict})",
                highlight=False,
            )
